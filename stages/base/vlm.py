"""What every stage that asks a VLM shares: the backend's lifecycle on a Ray worker, one spend
budget for all workers, validation retries, and usage in the manifest and `_run.json`.

A subclass renders its requests and reads the replies; `ask` sends a batch's requests at once
(so `vlm.max_in_flight` of them overlap), asks again with the validation error any request whose
answer did not fit its schema, and returns the final reply and the summed usage per request.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pyarrow.compute as pc
from pydantic import Field, PrivateAttr

from curation.backends.budget import Budget, create_ledger
from curation.backends.models import model_ref
from curation.backends.vlm import VLMBackend, VLMConfig, VLMError, VLMReply, VLMRequest, VLMUsage, make_vlm
from curation.core import storage
from curation.core.stage import ModelRef, Stage
from curation.prompts.templates import PromptTemplate

Reply = VLMReply | VLMError


class BudgetedStage(Stage):
    """A stage that pays for API calls: one spend total (`budget.max_usd`) for all its workers."""

    max_usd: float | None = Field(None, ge=0, description="stop sending requests once the estimated spend reaches this (top-level "
                                                          "`budget.max_usd`)")

    _ledger_name: str | None = PrivateAttr(default=None)
    _ledger: Any = PrivateAttr(default=None)

    def budget(self) -> Budget | None:
        """The worker's view of the shared ledger (None: no cap)."""
        return Budget(self.max_usd, self._ledger_name) if self.max_usd is not None else None

    def on_driver_start(self) -> None:
        """One spend total for all workers: a named Ray actor, owned by the driver."""
        import ray

        if self.max_usd is not None and ray.is_initialized():
            self._ledger_name = f"curate-vlm-ledger-{uuid.uuid4().hex[:12]}"
            self._ledger = create_ledger(self._ledger_name)

    def on_driver_end(self) -> None:
        if self._ledger is not None:
            import ray

            ray.kill(self._ledger)
            self._ledger = None

    def __getstate__(self) -> dict[str, Any]:
        # The ledger handle and loaded models/clients stay where they were made; workers get the
        # ledger's name and set up their own backends.
        state = super().__getstate__()
        private = dict(state.get("__pydantic_private__") or {})
        private.update({name: None for name in private if name != "_ledger_name"}, _ready=False)
        state["__pydantic_private__"] = private
        return state


class VLMStage(BudgetedStage):
    """Base class of the stages that call a VLM (annotate, edit_score, ground_edit, score_reference)."""

    vlm: VLMConfig = Field(description="the VLM backend (top-level `vlm=openai|gemini|local` and `vlm.*` keys)")
    validation_retries: int = Field(1, ge=0, description="times a request whose answer fails the schema is asked again with the error")

    _backend: VLMBackend | None = PrivateAttr(default=None)

    # ---- what a subclass says ---------------------------------------------------------------
    def templates(self) -> list[PromptTemplate]:
        """The prompt templates this stage renders (their versions go into `_run.json`)."""
        return []

    def setup(self) -> None:
        self._backend = make_vlm(self.vlm, self.budget())
        self._backend.open()  # load the local model / create clients once per worker, here

    def models(self) -> dict[str, ModelRef]:
        """The VLM, and the prompt templates it is asked with (a template's version is part of what answers)."""
        where = f"@{self.vlm.base_url}" if self.vlm.base_url else ""
        refs = {"vlm": model_ref(self.vlm.model, f"{self.vlm.backend}:{self.vlm.model}{where}")}
        refs.update({f"prompt:{t.name}": ModelRef(id=t.version) for t in self.templates()})
        return refs

    # ---- asking ----------------------------------------------------------------------------
    def ask(self, requests: list[VLMRequest], again: Callable[[int, str], VLMRequest]) -> tuple[list[Reply], list[VLMUsage]]:
        """All requests at once; a reply that did not validate is asked again (up to
        `validation_retries` times) with `again(i, error)`, the request carrying the feedback.
        Returns the final reply per request and everything each one cost."""
        self.ensure_setup()
        replies: list[Reply] = self._backend.generate_many(requests) if requests else []
        usage = [usage_of(r) for r in replies]
        for _ in range(self.validation_retries):
            retry = [i for i, r in enumerate(replies) if isinstance(r, VLMReply) and r.parsed is None]
            if not retry:
                break
            for i, reply in zip(retry, self._backend.generate_many([again(i, replies[i].error) for i in retry])):
                usage[i] = usage[i] + usage_of(reply)
                replies[i] = reply
        return replies, usage

    # ---- _run.json -------------------------------------------------------------------------
    def run_extra(self, stage_dir: str) -> dict[str, Any]:
        """Tokens and cost over the whole manifest (all attempts), and how many hit the budget."""
        table = storage.read_table(stage_dir, columns=["vlm_usage", "reason"])
        total = VLMUsage()
        if "vlm_usage" in table.column_names:
            for item in table.column("vlm_usage").to_pylist():
                if item:
                    total = total + VLMUsage(**item)
        exhausted = 0
        if table.num_rows:
            exhausted = pc.sum(pc.starts_with(pc.fill_null(table.column("reason"), ""), "budget_exhausted")).as_py() or 0
        return {"vlm": {
            "model": self.models()["vlm"].display,
            "prompts": {t.name: t.version for t in self.templates()},
            "usage": total.model_dump(),
            "budget_max_usd": self.max_usd,
            "budget_exhausted": exhausted,
        }}

    @classmethod
    def result_notes(cls, extra: dict[str, Any]) -> list[str]:
        """Spend and cache hits, and a loud line when the budget stopped requests."""
        vlm = extra.get("vlm")
        if not vlm:
            return []
        usage = vlm["usage"]
        notes = [f"VLM {vlm['model']}: {usage['requests']} requests, {usage['cache_hits']} cache hits, "
                 f"{usage['prompt_tokens']}+{usage['completion_tokens']} tokens, ${usage['usd']:.4f}"
                 + (f" (budget ${vlm['budget_max_usd']:g})" if vlm.get("budget_max_usd") is not None else "")]
        if vlm.get("budget_exhausted"):
            notes.append(f"[bold red]BUDGET EXHAUSTED:[/] {vlm['budget_exhausted']} sample(s) were not sent "
                         "(status=error, reason budget_exhausted). Raise budget.max_usd and rerun with retry_errors=true.")
        return notes


def usage_of(reply: Reply) -> VLMUsage:
    return reply.usage if isinstance(reply, VLMReply) else (reply.usage or VLMUsage())


def first_failure(replies: list[Reply]) -> str | None:
    """The reason of the first transport/budget failure among replies (retryable: the sample is an error)."""
    return next((r.reason for r in replies if isinstance(r, VLMError)), None)
