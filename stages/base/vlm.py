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
from curation.backends.limits import create_rate_ledger
from curation.backends.models import model_ref
from curation.backends.vllm_pool import ServerPool, acquire_servers, release_servers
from curation.backends.vllm_server import VLLMServerConfig
from curation.backends.vlm import VLMBackend, VLMConfig, VLMError, VLMReply, VLMRequest, VLMUsage, make_vlm
from curation.core import storage
from curation.core.stage import ModelRef, Stage
from curation.prompts.templates import PromptTemplate

Reply = VLMReply | VLMError


class BudgetedStage(Stage):
    """A stage that pays for API calls: one spend total (`budget.max_usd`) and one request and
    token rate (`rate_limits`) for all its workers, each held by a named Ray actor."""

    max_usd: float | None = Field(None, ge=0, description="stop sending requests once the estimated spend reaches this (top-level "
                                                          "`budget.max_usd`)")

    _ledger_name: str | None = PrivateAttr(default=None)
    _ledger: Any = PrivateAttr(default=None)
    _rate_ledger_name: str | None = PrivateAttr(default=None)
    _rate_ledger: Any = PrivateAttr(default=None)

    def rate_limits(self) -> tuple[float | None, float | None]:
        """(requests, tokens) per minute the API allows this stage's whole run; None: no limit."""
        return None, None

    def budget(self) -> Budget | None:
        """The worker's view of the shared ledger (None: no cap)."""
        return Budget(self.max_usd, self._ledger_name) if self.max_usd is not None else None

    def on_driver_start(self) -> None:
        """One spend total and one rate for all workers: named Ray actors, owned by the driver.
        Without Ray there is one process, whose own limiter holds the rate."""
        import ray

        if not ray.is_initialized():
            return
        if self.max_usd is not None:
            self._ledger_name = f"curate-vlm-ledger-{uuid.uuid4().hex[:12]}"
            self._ledger = create_ledger(self._ledger_name)
        requests, tokens = self.rate_limits()
        if requests or tokens:
            self._rate_ledger_name = f"curate-vlm-rates-{uuid.uuid4().hex[:12]}"
            self._rate_ledger = create_rate_ledger(self._rate_ledger_name, requests, tokens)

    def on_driver_end(self) -> None:
        for attr in ("_ledger", "_rate_ledger"):
            if getattr(self, attr) is not None:
                import ray

                ray.kill(getattr(self, attr))
                setattr(self, attr, None)

    def __getstate__(self) -> dict[str, Any]:
        # The ledger handle and loaded models/clients stay where they were made; workers get the
        # ledgers' names and the run's media store, and set up their own backends.
        state = super().__getstate__()
        private = dict(state.get("__pydantic_private__") or {})
        private.update({name: None for name in private if name not in ("_ledger_name", "_rate_ledger_name", "_media")}, _ready=False)
        state["__pydantic_private__"] = private
        return state


class VLMStage(BudgetedStage):
    """Base class of the stages that call a VLM (annotate, edit_score, ground_edit, score_reference)."""

    vlm: VLMConfig = Field(description="the VLM backend (top-level `vlm=openai|gemini|local|vllm` and `vlm.*` keys)")
    validation_retries: int = Field(1, ge=0, description="times a request whose answer fails the schema is asked again with the error")

    _backend: VLMBackend | None = PrivateAttr(default=None)
    _servers: ServerPool | None = PrivateAttr(default=None)

    # ---- what a subclass says ---------------------------------------------------------------
    def templates(self) -> list[PromptTemplate]:
        """The prompt templates this stage renders (their versions go into `_run.json`)."""
        return []

    def on_driver_start(self) -> None:
        """The ledger, and with `vlm=vllm` the servers: workers get their URLs in `vlm.server.urls`."""
        super().on_driver_start()
        if self.vlm.backend != "vllm":
            return
        server = self.vlm.server or VLLMServerConfig()
        try:
            self._servers = acquire_servers(server, self.vlm.model)
        except BaseException:
            super().on_driver_end()  # the runner ends only stages that started
            raise
        self.vlm = self.vlm.model_copy(update={"server": server.model_copy(update={"urls": self._servers.urls})})

    def on_driver_end(self) -> None:
        if self._servers is not None:
            release_servers(self._servers)
            self._servers = None
        super().on_driver_end()

    def rate_limits(self) -> tuple[float | None, float | None]:
        return self.vlm.requests_per_minute, self.vlm.tokens_per_minute

    def setup(self) -> None:
        self._backend = make_vlm(self.vlm, self.budget())
        self._backend.rate_ledger = self._rate_ledger_name  # None: this worker's own limiter
        self._backend.open()  # load the local model / create clients once per worker, here

    def uses_gpu(self) -> bool:
        return self.vlm.backend == "local"  # API and vLLM-server backends only wait on HTTP

    def model_devices(self) -> dict[str, str]:
        device = getattr(getattr(self, "_backend", None), "device", None)
        return {"vlm": device} if device else {}

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
        facts: dict[str, Any] = {
            "model": self.models()["vlm"].display,
            "prompts": {t.name: t.version for t in self.templates()},
            "usage": total.model_dump(),
            "budget_max_usd": self.max_usd,
            "budget_exhausted": exhausted,
        }
        if total.unpriced_requests:
            facts["warnings"] = [unpriced_warning(self.vlm.model, total)]
        return {"vlm": facts}

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
        notes += [f"[yellow]warning:[/yellow] {w}" for w in vlm.get("warnings", [])]
        if vlm.get("budget_exhausted"):
            notes.append(f"[bold red]BUDGET EXHAUSTED:[/] {vlm['budget_exhausted']} sample(s) were not sent "
                         "(status=error, reason budget_exhausted). Raise budget.max_usd and rerun with retry_errors=true.")
        return notes


def unpriced_warning(model: str, usage: VLMUsage) -> str:
    """What `_run.json` and the summary say when some calls had no known price (`pricing.token_price`)."""
    return (f"cost unknown for {usage.unpriced_requests} request(s): {model} has no price in config/prices.yaml "
            f"(tokens are counted; usd ${usage.usd:.4f} covers only priced calls); set vlm.usd_per_mtok_input/output")


def usage_of(reply: Reply) -> VLMUsage:
    return reply.usage if isinstance(reply, VLMReply) else (reply.usage or VLMUsage())


def first_failure(replies: list[Reply]) -> str | None:
    """The reason of the first transport/budget failure among replies (retryable: the sample is an error)."""
    return next((r.reason for r in replies if isinstance(r, VLMError)), None)
