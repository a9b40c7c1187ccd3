"""What a request to a paid or local model cost, and how one failed: the two types every layer of
the request machinery shares (the budget raises the failure, the backends return both, stages
store the usage), kept here so that none of those layers has to import another to get them."""

from __future__ import annotations

from pydantic import BaseModel


class VLMUsage(BaseModel):
    """What a request (or a sum of them) cost. `requests` counts calls actually made, retries included.
    `usd` sums the calls whose price is known; `unpriced_requests` counts those whose model has no
    price (`pricing.token_price` None): their tokens are here, their cost is not, so `usd` is then a
    lower bound."""

    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0  # thinking tokens included: they are billed as output
    thinking_tokens: int = 0  # of completion_tokens, those the model spent thinking (Gemini thoughts, OpenAI reasoning)
    usd: float = 0.0
    unpriced_requests: int = 0
    retries: int = 0

    def __add__(self, other: VLMUsage) -> VLMUsage:
        return VLMUsage(**{name: getattr(self, name) + getattr(other, name) for name in type(self).model_fields})


class VLMError(Exception):
    """No usable response (after retries). `reason` starts with a stable prefix: vlm_http_<code>,
    vlm_timeout, vlm_connection, vlm_empty_response, vlm_blocked, vlm_auth, vlm_bad_image,
    budget_exhausted, budget_unpriced (and, from `generate`, invalid_json / schema_mismatch)."""

    def __init__(self, reason: str, usage: VLMUsage | None = None):
        super().__init__(reason)
        self.reason = reason
        self.usage = usage or VLMUsage()

    def __reduce__(self):  # keep `usage` across pickling (Ray)
        return (type(self), (self.reason, self.usage))
