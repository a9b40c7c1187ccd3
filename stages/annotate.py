"""Annotate: a VLM writes VINCIE's visual-transition annotation for each adjacent frame pair of a
session (frame captions with char*/obj* entities, per-aspect changes, a one-line instruction).

All pairs of a batch go to the VLM at once, so the backend's `max_in_flight` requests overlap.
An answer that does not validate against the schema is asked again once with the validation
error in the prompt; a pair that still fails is recorded on its turn, keeping the camera label
`sample_frames` put there (the clip's homography class). Transport failures (API
errors after retries, an exhausted budget) make the whole session `status=error`, so
`retry_errors=true` redoes it later; turns that did succeed come back from the response cache.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field

from curation.backends.vlm import VLMError, VLMReply, VLMRequest, VLMUsage
from curation.core.stage import ModelRef, Row
from curation.labels.camera import normalize_camera
from curation.prompts.templates import PromptTemplate, load_template
from curation.prompts.transition import Turn
from curation.stages.base.vlm import VLMStage


class AnnotateColumns(BaseModel):
    turns: list[Turn] | None = Field(None, description="one entry per adjacent frame pair: instruction, camera label, annotation "
                                                       "JSON or the error")
    vlm_usage: VLMUsage | None = Field(None, description="VLM requests, cache hits, tokens and estimated USD spent on this session")


class Annotate(VLMStage):
    """VLM visual-transition annotation of each adjacent frame pair (VINCIE chain-of-thought JSON)."""

    name: ClassVar[str] = "annotate"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = AnnotateColumns
    reads_media: ClassVar[tuple[str, ...]] = ("frames",)

    template: str = Field("transition_annotation",
                          description="prompt template name (prompts/); its hash is in the cache key and _run.json")
    caption_column: str | None = Field("caption", description="source column whose text fills the template's caption slot when present")
    min_valid_turns: int = Field(1, ge=1, description="sessions with fewer valid turns are dropped (reason no_valid_turn)")

    def prompt(self) -> PromptTemplate:
        return load_template(self.template)

    def templates(self) -> list[PromptTemplate]:
        return [self.prompt()]

    def models(self) -> dict[str, ModelRef]:
        return {"vlm": super().models()["vlm"], "prompt": ModelRef(id=self.prompt().version)}

    # ---- work ------------------------------------------------------------------------------
    def process_batch(self, rows: list[Row]) -> list[Row]:
        template = self.prompt()
        pairs = [(r, k) for r, row in enumerate(rows) for k in range(max(0, len(row.get("frames") or []) - 1))]
        captions = [self._caption(row) for row in rows]

        def request(r: int, k: int, feedback: str | None) -> VLMRequest:
            frames = rows[r]["frames"]
            text = template.render(caption=captions[r], feedback=feedback)
            return VLMRequest(prompt=text, images=[frames[k], frames[k + 1]], schema=template.schema, cache_salt=template.hash)

        replies, pair_usage = self.ask([request(r, k, None) for r, k in pairs], lambda i, error: request(*pairs[i], error))
        usage = [VLMUsage() for _ in rows]
        for (r, _), spent in zip(pairs, pair_usage):
            usage[r] = usage[r] + spent

        turns: list[list[Turn]] = [[] for _ in rows]
        failures: list[list[str]] = [[] for _ in rows]
        before = [{t["index"]: t for t in row.get("turns") or []} for row in rows]
        for (r, k), reply in zip(pairs, replies):
            turns[r].append(_turn(k, reply, before[r].get(k)))
            if isinstance(reply, VLMError):
                failures[r].append(reply.reason)
        out = [self._session_row(row, turns[r], failures[r], usage[r]) for r, row in enumerate(rows)]
        return out

    def _caption(self, row: dict[str, Any]) -> str | None:
        value = row.get(self.caption_column) if self.caption_column else None
        return str(value).strip() or None if value is not None else None

    def _session_row(self, row: dict[str, Any], turns: list[Turn], failures: list[str], usage: VLMUsage) -> dict[str, Any]:
        columns = {"turns": [t.model_dump() for t in turns], "vlm_usage": usage.model_dump()}
        if not turns:
            return self.error_row(row, "no_pairs: a session needs at least two frames", "dropped", **columns)
        if failures:
            # Transient or budget failures: retryable, so the session is an error, not a drop.
            return self.error_row(row, f"{failures[0]} ({len(failures)} of {len(turns)} turns)", **columns)
        valid = sum(t.annotation is not None for t in turns)
        if valid < self.min_valid_turns:
            first = next(t.error for t in turns if t.error)
            reason = f"no_valid_turn: {valid} of {len(turns)} turns validated; first error {first}"
            return self.error_row(row, reason, "dropped", **columns)
        return self.enrich(row, **columns)


def _turn(index: int, reply: VLMReply | VLMError, before: dict[str, Any] | None) -> Turn:
    """The VLM's turn; one it could not annotate keeps the camera label it had (the homography's)."""
    camera = {"camera": before.get("camera"), "camera_raw": before.get("camera_raw")} if before else {}
    if isinstance(reply, VLMError):
        return Turn(index=index, error=reply.reason, **camera)
    if reply.parsed is None:
        return Turn(index=index, error=reply.error, **camera)
    annotation = reply.parsed
    return Turn(
        index=index,
        instruction=annotation.summary_change.strip(),
        camera=normalize_camera(annotation.camera_change),
        camera_raw=annotation.camera_change,
        annotation=annotation.model_dump_json(),
    )
