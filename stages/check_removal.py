"""check_removal: a VLM keeps only clean erasures (InstructX App. A.2, the MLLM filter).

After `erase` has taken the subject out of a clip, InstructX filters the erased videos with an
MLLM so that pairs with inpainting artifacts do not reach training. This stage shows the VLM
`pairs` matched frame pairs (the same indices of the original and of the erased clip, original
first in each pair; prompts/removal_check.v1.j2) and asks two questions on a 1-5 scale (ours,
prompts/erasure.py): is the subject gone (`subject_removed`), and are the erased frames free of
inpainting artifacts (`artifact_free`). `removal_score` = the lower of the two (ours): either
fault alone spoils a pair. Clips scoring below `min_score` are dropped
(`removal_check_below_threshold`); an answer failing the schema after the re-ask is dropped as
`removal_check_unparseable`, never given a made-up score. Transport failures make the clip
`status=error` (redone by `retry_errors=true`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator

from curation.backends.vlm import VLMError, VLMReply, VLMRequest, VLMUsage
from curation.core.schema import scores_of
from curation.core.stage import Row, StageError, Threshold, failure_reason
from curation.media.jpeg import encode_jpeg
from curation.media.video_bytes import matched_frames
from curation.prompts.erasure import ARTIFACT_FREE, REMOVAL_SCALE, REMOVAL_SCORE, SUBJECT_REMOVED, RemovalCheck
from curation.prompts.judges import passes
from curation.prompts.templates import PromptTemplate, answering_template, load_template
from curation.stages.base.vlm import VLMStage


class CheckRemovalColumns(BaseModel):
    removal_score: float | None = Field(None, description="min(subject_removed, artifact_free) on the 1-5 scale (ours)")
    removal_reasoning: str | None = Field(None, description="the VLM's reasoning for the scores")
    removal_frames: list[int] | None = Field(None, description="the clip frame indices the VLM compared (same in both videos)")
    scores: dict[str, float] | None = Field(None, description="name -> score; check_removal adds removal_score, subject_removed, "
                                                              "artifact_free (1-5)")
    vlm_usage: VLMUsage | None = Field(None, description="VLM requests, cache hits, tokens and estimated USD spent checking")


class CheckRemoval(VLMStage):
    """A VLM compares original and erased frames; keep clips whose subject is gone without artifacts."""

    name: ClassVar[str] = "check_removal"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = CheckRemovalColumns
    reads_media: ClassVar[tuple[str, ...]] = ("clip_video", "erased_video")

    template: str = Field("removal_check", description="prompt template name (prompts/); its hash is in the cache key and _run.json")
    pairs: int = Field(4, ge=1, le=8, description="matched (original, erased) frame pairs shown, spread evenly over the clip")
    min_score: float = Field(ge=REMOVAL_SCALE[0], le=REMOVAL_SCALE[1],
                             description="keep clips whose removal_score is at least this (1-5 scale)")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of the frames sent")
    max_pixels: int = Field(1 << 26, gt=0, description="image-bomb guard for the clips, checked from their headers")

    @field_validator("template")
    @classmethod
    def _removal_template(cls, name: str) -> str:
        return answering_template(name, (RemovalCheck,), "a removal check")

    def templates(self) -> list[PromptTemplate]:
        return [load_template(self.template)]

    def thresholds(self) -> list[Threshold]:
        return [Threshold(score=REMOVAL_SCORE, value=self.min_score, setting="min_score")]

    def process_batch(self, rows: list[Row]) -> list[Row]:
        template = self.templates()[0]
        out: dict[int, Row] = {}
        shown: dict[int, tuple[list[int], list[bytes]]] = {}
        for r, row in enumerate(rows):
            try:
                shown[r] = self._pairs(row)
            except Exception as e:  # noqa: BLE001 - one unreadable clip must not stop the batch
                out[r] = self.error_row(row, failure_reason(e))
        todo = list(shown)

        def request(r: int, feedback: str | None) -> VLMRequest:
            indices, images = shown[r]
            text = template.render(subject=rows[r]["subject"], num_pairs=len(indices), feedback=feedback)
            return VLMRequest(prompt=text, images=images, schema=template.schema, cache_salt=template.hash)

        replies, usage = self.ask([request(r, None) for r in todo], lambda i, error: request(todo[i], error))
        for r, reply, spent in zip(todo, replies, usage):
            out[r] = self._checked_row(rows[r], shown[r][0], reply, spent)
        return [out[r] for r in range(len(rows))]

    def _pairs(self, row: Row) -> tuple[list[int], list[bytes]]:
        """The compared indices, and the images in the prompt's order: original, erased, original, ..."""
        if not row.get("clip_video") or not row.get("erased_video"):
            raise StageError("no_erasure: run mask_video and erase first (no clip_video/erased_video)")
        if not row.get("subject"):
            raise StageError("no_subject: run choose_subject first (no subject)")
        matched = matched_frames(row["clip_video"], row["erased_video"], self.pairs, self.max_pixels)
        images = [encode_jpeg(frame, self.jpeg_quality) for pair in zip(matched.source, matched.target) for frame in pair]
        return matched.indices, images

    def _checked_row(self, row: Row, indices: list[int], reply: VLMReply | VLMError, usage: VLMUsage) -> Row:
        columns: dict[str, Any] = {"vlm_usage": usage.model_dump(), "removal_frames": indices}
        if isinstance(reply, VLMError):
            return self.error_row(row, reply.reason, **columns)
        if reply.parsed is None:
            return self.error_row(row, f"removal_check_unparseable: {reply.error}", "dropped", **columns)
        answer: RemovalCheck = reply.parsed
        score = answer.overall
        columns.update(removal_score=score, removal_reasoning=answer.reasoning,
                       scores={**scores_of(row), REMOVAL_SCORE: score, SUBJECT_REMOVED: float(answer.subject_removed),
                               ARTIFACT_FREE: float(answer.artifact_free)})
        if not passes(score, self.min_score, inclusive=True):
            return self.error_row(row, f"removal_check_below_threshold: {score:g} (keep >= {self.min_score:g})", "dropped", **columns)
        return self.enrich(row, **columns)
