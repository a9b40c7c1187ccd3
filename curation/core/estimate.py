"""What a paid stage expects to send, before it sends anything (`curate run --dry-run`).

Why a stage says it: only the stage knows how many requests a row costs (annotate asks once per
frame transition, edit_score twice per edit) and how its prompts are priced. It says it from what
it measured on parts it already wrote (`measured`) or, before any, from its YAML's `expected`
block (`configured`: our guesses, each with its reason, replaced by measured figures as soon as
a part exists). Cache hits are counted as requests: the estimate is an upper bound.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ExpectedUse(BaseModel):
    """A paid stage's guess of what one input row costs, used until a part of it has been measured."""

    model_config = ConfigDict(extra="forbid")

    requests_per_row: float = Field(1.0, ge=0, description="API requests per input row")
    prompt_tokens: int = Field(1000, ge=0, description="prompt tokens per request, images included")
    completion_tokens: int = Field(200, ge=0, description="output tokens per request, thinking included")


class SpendEstimate(BaseModel):
    """Requests, tokens and dollars a stage would spend on `rows` input rows."""

    source: Literal["measured", "configured"]
    measured_rows: int = 0  # rows the measured figures come from
    requests_per_row: float
    prompt_tokens: float  # per request
    completion_tokens: float  # per request
    usd_per_request: float | None  # None: the model has no known price

    def requests(self, rows: float) -> float:
        return rows * self.requests_per_row

    def tokens(self, rows: float) -> float:
        return self.requests(rows) * (self.prompt_tokens + self.completion_tokens)

    def usd(self, rows: float) -> float | None:
        return None if self.usd_per_request is None else self.requests(rows) * self.usd_per_request


def measured_use(usages: list[dict | None], configured: ExpectedUse) -> tuple[str, int, ExpectedUse]:
    """Per-row figures from the usage a stage recorded on its rows (`VLMUsage` dicts; None for
    rows it sent nothing for), or the configured ones when nothing was recorded yet."""
    recorded = [u for u in usages if u]
    sent = sum(u.get("requests", 0) for u in recorded)
    if not recorded or sent == 0:
        return "configured", 0, configured
    asked = sum(u.get("requests", 0) + u.get("cache_hits", 0) for u in recorded)
    return "measured", len(recorded), ExpectedUse(
        requests_per_row=asked / len(recorded),
        prompt_tokens=round(sum(u.get("prompt_tokens", 0) for u in recorded) / sent),
        completion_tokens=round(sum(u.get("completion_tokens", 0) for u in recorded) / sent))
