"""Annotate: a VLM writes VINCIE's visual-transition annotation for each adjacent frame pair of a
session (frame captions with char*/obj* entities, per-aspect changes, a one-line instruction).

All pairs of a batch go to the VLM at once, so the backend's `max_in_flight` requests overlap.
An answer that does not validate against the schema is asked again once with the validation
error in the prompt; a pair that still fails is recorded on its turn. Transport failures (API
errors after retries, an exhausted budget) make the whole session `status=error`, so
`retry_errors=true` redoes it later; turns that did succeed come back from the response cache.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field, PrivateAttr

from curation import manifest as mf
from curation.annotation import Turn
from curation.backends.budget import Budget, create_ledger
from curation.backends.models import describe_model
from curation.backends.vlm import VLMBackend, VLMConfig, VLMError, VLMReply, VLMRequest, VLMUsage, make_vlm
from curation.camera import normalize_camera
from curation.manifest import rows_to_table
from curation.prompting import PromptTemplate, load_template
from curation.stage import Stage


class AnnotateColumns(BaseModel):
    turns: list[Turn] | None = Field(None, description="one entry per adjacent frame pair: instruction, camera label, annotation JSON or the error")
    vlm_usage: VLMUsage | None = Field(None, description="VLM requests, cache hits, tokens and estimated USD spent on this session")


class Annotate(Stage):
    """VLM visual-transition annotation of each adjacent frame pair (VINCIE chain-of-thought JSON)."""

    name: ClassVar[str] = "annotate"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = AnnotateColumns

    vlm: VLMConfig = Field(description="the VLM backend (top-level `vlm=openai|gemini|local` and `vlm.*` keys)")
    max_usd: float | None = Field(None, ge=0, description="stop sending requests once the estimated spend reaches this (top-level `budget.max_usd`)")
    template: str = Field("transition_annotation", description="prompt template name (prompts/); its hash is in the cache key and _run.json")
    caption_column: str | None = Field("caption", description="source column whose text fills the template's caption slot when present")
    validation_retries: int = Field(1, ge=0, description="times a pair whose answer fails the schema is asked again with the error")
    min_valid_turns: int = Field(1, ge=1, description="sessions with fewer valid turns are dropped (reason no_valid_turn)")

    _backend: VLMBackend | None = PrivateAttr(default=None)
    _ledger_name: str | None = PrivateAttr(default=None)
    _ledger: Any = PrivateAttr(default=None)

    # ---- lifecycle -------------------------------------------------------------------------
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

    def setup(self) -> None:
        budget = Budget(self.max_usd, self._ledger_name) if self.max_usd is not None else None
        self._backend = make_vlm(self.vlm, budget)
        self._backend.open()  # load the local model / create clients once per worker, here

    def __getstate__(self) -> dict[str, Any]:
        # The ledger handle and a loaded backend stay where they were made; workers get the name.
        state = super().__getstate__()
        private = dict(state.get("__pydantic_private__") or {})
        private.update(_backend=None, _ledger=None)
        state["__pydantic_private__"] = private
        return state

    def prompt(self) -> PromptTemplate:
        return load_template(self.template)

    def model_ids(self) -> dict[str, str]:
        where = f"@{self.vlm.base_url}" if self.vlm.base_url else ""
        return {"vlm": f"{self.vlm.backend}:{describe_model(self.vlm.model)}{where}", "prompt": self.prompt().version}

    # ---- work ------------------------------------------------------------------------------
    def __call__(self, batch: pa.Table) -> pa.Table:
        self.ensure_setup()
        template = self.prompt()
        rows = batch.to_pylist()
        pairs = [(r, k) for r, row in enumerate(rows) for k in range(max(0, len(row.get("frames") or []) - 1))]
        captions = [self._caption(row) for row in rows]

        def request(r: int, k: int, feedback: str | None) -> VLMRequest:
            frames = rows[r]["frames"]
            text = template.render(caption=captions[r], feedback=feedback)
            return VLMRequest(prompt=text, images=[frames[k], frames[k + 1]], schema=template.schema, cache_salt=template.hash)

        replies: list[VLMReply | VLMError] = self._backend.generate_many([request(r, k, None) for r, k in pairs])
        usage = [VLMUsage() for _ in rows]
        for (r, _), reply in zip(pairs, replies):
            usage[r] = usage[r] + _usage_of(reply)
        for _ in range(self.validation_retries):
            again = [i for i, reply in enumerate(replies) if isinstance(reply, VLMReply) and reply.parsed is None]
            if not again:
                break
            retried = self._backend.generate_many([request(*pairs[i], replies[i].error) for i in again])
            for i, reply in zip(again, retried):
                usage[pairs[i][0]] = usage[pairs[i][0]] + _usage_of(reply)
                replies[i] = reply

        turns: list[list[Turn]] = [[] for _ in rows]
        failures: list[list[str]] = [[] for _ in rows]
        for (r, k), reply in zip(pairs, replies):
            turns[r].append(_turn(k, reply))
            if isinstance(reply, VLMError):
                failures[r].append(reply.reason)
        out = [self._session_row(row, turns[r], failures[r], usage[r]) for r, row in enumerate(rows)]
        return rows_to_table(out, self.output_schema(batch.schema))

    def _caption(self, row: dict[str, Any]) -> str | None:
        value = row.get(self.caption_column) if self.caption_column else None
        return str(value).strip() or None if value is not None else None

    def _session_row(self, row: dict[str, Any], turns: list[Turn], failures: list[str], usage: VLMUsage) -> dict[str, Any]:
        columns = {"turns": [t.model_dump() for t in turns], "vlm_usage": usage.model_dump()}
        if not turns:
            return {**self.error_row(row, "no_pairs: a session needs at least two frames", "dropped"), **columns}
        if failures:
            # Transient or budget failures: retryable, so the session is an error, not a drop.
            return {**self.error_row(row, f"{failures[0]} ({len(failures)} of {len(turns)} turns)"), **columns}
        valid = sum(t.annotation is not None for t in turns)
        if valid < self.min_valid_turns:
            first = next(t.error for t in turns if t.error)
            reason = f"no_valid_turn: {valid} of {len(turns)} turns validated; first error {first}"
            return {**self.error_row(row, reason, "dropped"), **columns}
        return self.enrich(row, **columns)

    # ---- _run.json -------------------------------------------------------------------------
    def run_extra(self, stage_dir: str) -> dict[str, Any]:
        """Tokens and cost over the whole manifest (all attempts), and how many hit the budget."""
        table = mf.read_table(stage_dir, columns=["vlm_usage", "reason"])
        total = VLMUsage()
        if "vlm_usage" in table.column_names:
            for item in table.column("vlm_usage").to_pylist():
                if item:
                    total = total + VLMUsage(**item)
        exhausted = 0
        if table.num_rows:
            exhausted = pc.sum(pc.starts_with(pc.fill_null(table.column("reason"), ""), "budget_exhausted")).as_py() or 0
        return {"vlm": {
            "model": self.model_ids()["vlm"],
            "prompt": self.prompt().version,
            "usage": total.model_dump(),
            "budget_max_usd": self.max_usd,
            "budget_exhausted": exhausted,
        }}


def _usage_of(reply: VLMReply | VLMError) -> VLMUsage:
    return reply.usage if isinstance(reply, VLMReply) else (reply.usage or VLMUsage())


def _turn(index: int, reply: VLMReply | VLMError) -> Turn:
    if isinstance(reply, VLMError):
        return Turn(index=index, error=reply.reason)
    if reply.parsed is None:
        return Turn(index=index, error=reply.error)
    annotation = reply.parsed
    return Turn(
        index=index,
        instruction=annotation.summary_change.strip(),
        camera=normalize_camera(annotation.camera_change),
        camera_raw=annotation.camera_change,
        annotation=annotation.model_dump_json(),
    )
