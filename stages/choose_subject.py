"""choose_subject: a VLM names the object to erase from each clip (InstructX App. A.2, step 1).

InstructX makes its video add/remove pairs by erasing one subject from a clip. The first step
shows the clip to an MLLM, which picks the subject; a detector and a segmenter (`mask_video`) then
mask it from the grounding phrase this stage stores, and `erase` removes it. The VLM sees `frames`
frames spread evenly over the clip (prompts/subject_choice.v1.j2) and lists removable subjects,
best first, each with a name and a detector phrase (prompts/erasure.py: SubjectChoice). The first
becomes `subject` / `subject_phrase`; all are kept in `subject_candidates`.

Dropped: `clip_too_short` (fewer than `min_frames` frames: too little to erase and pair),
`no_removable_subject` (the VLM named none), `subject_unparseable` (the answer failed the schema
after the re-ask). Transport failures (API errors after retries, an exhausted budget) make the
clip `status=error`, so `retry_errors=true` redoes it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator

from curation.backends.vlm import VLMError, VLMReply, VLMRequest, VLMUsage
from curation.core.stage import Row, StageError, failure_reason
from curation.media.decode import read_frames
from curation.media.jpeg import encode_jpeg
from curation.media.timing import clip_span
from curation.prompts.erasure import MAX_SUBJECTS, SubjectCandidate, SubjectChoice
from curation.prompts.templates import PromptTemplate, answering_template, load_template
from curation.quality import sample_indices
from curation.stages.base.vlm import VLMStage


class ChooseSubjectColumns(BaseModel):
    subject: str | None = Field(None, description="the object to erase: the VLM's first candidate's name (e.g. 'dog')")
    subject_phrase: str | None = Field(None, description="the detector phrase that singles the subject out in a frame")
    subject_candidates: list[SubjectCandidate] | None = Field(None, description="every removable subject the VLM named, best first")
    vlm_usage: VLMUsage | None = Field(None, description="VLM requests, cache hits, tokens and estimated USD spent choosing")


class ChooseSubject(VLMStage):
    """A VLM picks a removable subject of each clip, with a phrase a detector can ground."""

    name: ClassVar[str] = "choose_subject"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = ChooseSubjectColumns

    template: str = Field("subject_choice", description="prompt template name (prompts/); its hash is in the cache key and _run.json")
    frames: int = Field(4, ge=1, le=16, description="frames shown to the VLM, spread evenly over the clip")
    min_frames: int = Field(16, ge=1, description="clips with fewer frames are dropped (clip_too_short)")
    max_subjects: int = Field(3, ge=1, le=MAX_SUBJECTS, description="at most this many candidates are asked for")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of the decoded frames sent")

    @field_validator("template")
    @classmethod
    def _subject_template(cls, name: str) -> str:
        return answering_template(name, (SubjectChoice,), "a subject choice")

    def templates(self) -> list[PromptTemplate]:
        return [load_template(self.template)]

    def process_batch(self, rows: list[Row]) -> list[Row]:
        template = self.templates()[0]
        out: dict[int, Row] = {}
        images: dict[int, list[bytes]] = {}
        for r, row in enumerate(rows):
            try:
                images[r] = self._frames(row)
            except StageError as e:
                out[r] = self.error_row(row, e.reason, "dropped" if e.reason.startswith("clip_too_short") else "error")
            except Exception as e:  # noqa: BLE001 - one unreadable clip must not stop the batch
                out[r] = self.error_row(row, failure_reason(e))
        todo = list(images)

        def request(r: int, feedback: str | None) -> VLMRequest:
            text = template.render(num_frames=len(images[r]), max_subjects=self.max_subjects, feedback=feedback)
            return VLMRequest(prompt=text, images=images[r], schema=template.schema, cache_salt=template.hash)

        replies, usage = self.ask([request(r, None) for r in todo], lambda i, error: request(todo[i], error))
        for r, reply, spent in zip(todo, replies, usage):
            out[r] = self._chosen_row(rows[r], reply, spent)
        return [out[r] for r in range(len(rows))]

    def _frames(self, row: Row) -> list[bytes]:
        """`frames` JPEGs spread over the clip's span [start_frame, end_frame)."""
        if row.get("kind") != "clip" or row.get("start_frame") is None or row.get("end_frame") is None:
            raise StageError(f"not_a_clip: a {row.get('kind')} has no clip span (run scene_split first)")
        start, end, frame_pts = clip_span(row)
        if end - start < self.min_frames:
            raise StageError(f"clip_too_short: {max(0, end - start)} frames (choose_subject.min_frames={self.min_frames})")
        indices = sample_indices(start, end, self.frames)
        return [encode_jpeg(image, self.jpeg_quality) for image in read_frames(row["source_uri"], indices, frame_pts, first_index=start)]

    def _chosen_row(self, row: Row, reply: VLMReply | VLMError, usage: VLMUsage) -> Row:
        columns: dict[str, Any] = {"vlm_usage": usage.model_dump()}
        if isinstance(reply, VLMError):
            return self.error_row(row, reply.reason, **columns)
        if reply.parsed is None:
            return self.error_row(row, f"subject_unparseable: {reply.error}", "dropped", **columns)
        candidates = reply.parsed.subjects[: self.max_subjects]
        if not candidates:
            return self.error_row(row, "no_removable_subject: the VLM named no object that could be erased", "dropped",
                                  subject_candidates=[], **columns)
        best = candidates[0]
        return self.enrich(row, subject=best.name, subject_phrase=best.phrase,
                           subject_candidates=[c.model_dump() for c in candidates], **columns)
