"""What every stage that asks a VLM shares: the backend's lifecycle on a Ray worker, one spend
budget for all workers, validation retries, and usage in the manifest and `_run.json`.

A subclass renders its requests and reads the replies; `ask` sends a batch's requests at once
(so `vlm.max_in_flight` of them overlap), asks again with the validation error any request whose
answer did not fit its schema, and returns the final reply and the summed usage per request.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import pyarrow.compute as pc
from pydantic import Field, PrivateAttr

from curation.backends.budget import Budget, create_ledger
from curation.backends.image_edit import ImageEditConfig, make_image_editor
from curation.backends.limits import create_rate_ledger
from curation.backends.models import model_ref
from curation.backends.pricing import token_price
from curation.backends.vllm_pool import ServerPool, acquire_servers, release_servers
from curation.backends.vllm_server import VLLMServerConfig
from curation.backends.vlm import VLMBackend, VLMConfig, VLMError, VLMReply, VLMRequest, VLMUsage, make_vlm
from curation.core import layout, storage
from curation.core.config_change import RUN_ONLY
from curation.core.estimate import ExpectedUse, SpendEstimate, measured_use
from curation.core.stage import ModelRef, Stage, StageError
from curation.prompts.templates import PromptTemplate

log = logging.getLogger(__name__)
REMOTE_BACKENDS = ("openai", "gemini")  # backends that call an endpoint someone else runs
Reply = VLMReply | VLMError


class BudgetedStage(Stage):
    """A stage that pays for API calls: one spend total for the whole run (`budget.max_usd`, kept
    in `<run_dir>/_spend.json` across stages and attempts) and one request and token rate
    (`rate_limits`) for all its workers, each held by a named Ray actor."""

    max_usd: float | None = Field(None, ge=0, json_schema_extra=RUN_ONLY,
                                  description="stop sending requests once the run's spend reaches this (top-level "
                                              "`budget.max_usd`)")

    expected: ExpectedUse = Field(default_factory=ExpectedUse, json_schema_extra=RUN_ONLY,
                                  description="what one input row costs until a part is measured (--dry-run's estimate)")

    # The column whose per-row usage (`VLMUsage`) measures what a row cost.
    usage_column: ClassVar[str] = "vlm_usage"

    _ledger_name: str | None = PrivateAttr(default=None)
    _ledger: Any = PrivateAttr(default=None)
    _rate_ledger_name: str | None = PrivateAttr(default=None)
    _rate_ledger: Any = PrivateAttr(default=None)

    def rate_limits(self) -> tuple[float | None, float | None]:
        """(requests, tokens) per minute the API allows this stage's whole run; None: no limit."""
        return None, None

    def budget(self) -> Budget | None:
        """The worker's view of the run's ledger: counts spend, and caps it when `max_usd` is set.
        None without Ray and without a cap."""
        if self._ledger_name is None and self.max_usd is None:
            return None
        return Budget(self.max_usd, self._ledger_name, stage=self.name)

    def usd_per_request(self, prompt_tokens: float, completion_tokens: float) -> float | None:
        """What one request with these tokens costs; None: no known price."""
        raise NotImplementedError

    def spend_estimate(self, stage_dir: str) -> SpendEstimate:
        parts = layout.manifest_parts(stage_dir)
        usages: list[dict | None] = []
        if parts:
            table = storage.read_table(stage_dir, columns=[self.usage_column])
            if self.usage_column in table.column_names:
                usages = table.column(self.usage_column).to_pylist()
        source, rows, use = measured_use(usages, self.expected)
        return SpendEstimate(source=source, measured_rows=rows, requests_per_row=use.requests_per_row,
                             prompt_tokens=use.prompt_tokens, completion_tokens=use.completion_tokens,
                             usd_per_request=self.usd_per_request(use.prompt_tokens, use.completion_tokens))

    def on_driver_start(self) -> None:
        """One spend total per run and one rate for all workers: named Ray actors, owned by the
        driver. Without Ray there is one process, whose own limiter holds the rate."""
        import ray

        if not ray.is_initialized():
            return
        run_dir = self._media.run_dir if self._media is not None else None
        if run_dir is not None:  # every paid stage of the run shares it, and its file
            self._ledger_name = f"curate-spend-{hashlib.sha1(run_dir.encode()).hexdigest()[:16]}"
            self._ledger = create_ledger(self._ledger_name, storage.join(run_dir, layout.SPEND_JSON))
        elif self.max_usd is not None:  # a stage run outside a run directory: its own total
            self._ledger_name = f"curate-vlm-ledger-{uuid.uuid4().hex[:12]}"
            self._ledger = create_ledger(self._ledger_name)
        requests, tokens = self.rate_limits()
        if requests or tokens:
            self._rate_ledger_name = f"curate-vlm-rates-{uuid.uuid4().hex[:12]}"
            self._rate_ledger = create_rate_ledger(self._rate_ledger_name, requests, tokens)

    def on_driver_end(self) -> None:
        import ray

        if self._ledger is not None:
            # The run's ledger outlives the stage (the next paid stage adds to it): write its file now.
            try:
                ray.get(self._ledger.flush.remote())
            except ray.exceptions.RayActorError as e:
                log.warning("the spend ledger died before its last write: %s", e)
            self._ledger = None
        if self._rate_ledger is not None:
            ray.kill(self._rate_ledger)
            self._rate_ledger = None

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

    def usd_per_request(self, prompt_tokens: float, completion_tokens: float) -> float | None:
        cfg = self.vlm
        price = token_price(cfg.model, cfg.pricing, cfg.usd_per_mtok_input, cfg.usd_per_mtok_output)
        return None if price is None else price.usd(prompt_tokens, completion_tokens)

    def api_check(self) -> str | None:
        if self.vlm.backend not in REMOTE_BACKENDS:
            return None  # a local model, or vLLM servers the run itself starts
        with make_vlm(self.vlm) as backend:
            try:
                return backend.probe()
            except VLMError as e:
                raise StageError(e.reason) from None

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


class EditorBackedStage(BudgetedStage):
    """A paid stage whose `backend` (a field of its config mix-in) is `api` (an image-edit API,
    configured in `api`), `diffusers` (a local pipeline, on a GPU share) or an offline method:
    reference synthesis and object removal."""

    def uses_gpu(self) -> bool:
        return self.backend == "diffusers"

    def usd_per_request(self, prompt_tokens: float, completion_tokens: float) -> float | None:
        return self.api.usd_per_image if self.backend == "api" and self.api is not None else 0.0

    def api_check(self) -> str | None:
        return image_edit_check(self.api if self.backend == "api" else None)


def image_edit_check(api: ImageEditConfig | None) -> str | None:
    """`api_check` of a stage that pays an image-edit API (reference, erase): its endpoint asked,
    nothing generated; None without one."""
    if api is None:
        return None
    with make_image_editor(api) as editor:
        try:
            return editor.probe()
        except VLMError as e:
            raise StageError(e.reason) from None


def unpriced_warning(model: str, usage: VLMUsage) -> str:
    """What `_run.json` and the summary say when some calls had no known price (`pricing.token_price`)."""
    return (f"cost unknown for {usage.unpriced_requests} request(s): {model} has no price in config/prices.yaml "
            f"(tokens are counted; usd ${usage.usd:.4f} covers only priced calls); set vlm.usd_per_mtok_input/output")


def usage_of(reply: Reply) -> VLMUsage:
    return reply.usage if isinstance(reply, VLMReply) else (reply.usage or VLMUsage())


def first_failure(replies: list[Reply]) -> str | None:
    """The reason of the first transport/budget failure among replies (retryable: the sample is an error)."""
    return next((r.reason for r in replies if isinstance(r, VLMError)), None)
