"""caption: a VLM writes one caption per clip from a few of its frames (prompts/caption.v1.j2).

VINCIE's transition-annotation prompt (seed 003, App. C.2) is given "the caption of the raw video
clip" as context; this stage writes it into the `caption` column that `annotate` renders into its
prompt's caption slot. A session (one per clip) is captioned from its stored frames, a clip from
frames decoded evenly over its span.

The caption is context, not a gate: an answer that fails the schema twice leaves `caption` null
with the reason in `caption_error`, and the sample goes on to be annotated without one. Transport
failures (API errors after retries, an exhausted budget) make the sample `status=error`, so
`retry_errors=true` redoes it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field

from curation.backends.vlm import VLMError, VLMReply, VLMRequest, VLMUsage
from curation.core.stage import Row, StageError, failure_reason
from curation.media.decode import read_frames
from curation.media.jpeg import encode_jpeg
from curation.media.timing import clip_span
from curation.prompts.templates import PromptTemplate, load_template
from curation.quality import sample_indices
from curation.stages.base.vlm import VLMStage


class CaptionColumns(BaseModel):
    caption: str | None = Field(None, description="the VLM's caption of the whole clip (annotate's caption slot); null when it "
                                                  "gave none that validated")
    caption_error: str | None = Field(None, description="why `caption` is null (the answer failed the schema twice)")
    vlm_usage: VLMUsage | None = Field(None, description="VLM requests, cache hits, tokens and estimated USD spent on the caption")


class Caption(VLMStage):
    """A VLM caption of each clip (or session) from a few of its frames, for annotate's prompt."""

    name: ClassVar[str] = "caption"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = CaptionColumns
    reads_media: ClassVar[tuple[str, ...]] = ("frames",)

    template: str = Field("caption", description="prompt template name (prompts/); its hash is in the cache key and _run.json")
    num_frames: int = Field(4, ge=1, le=16, description="frames shown to the VLM, spread evenly over the clip or session")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of frames decoded from a clip (sessions send their own)")

    def prompt(self) -> PromptTemplate:
        return load_template(self.template)

    def templates(self) -> list[PromptTemplate]:
        return [self.prompt()]

    def process_batch(self, rows: list[Row]) -> list[Row]:
        template = self.prompt()
        out: dict[int, Row] = {}
        images: dict[int, list[bytes]] = {}
        for r, row in enumerate(rows):
            try:
                images[r] = self.frames_of(row)
            except Exception as e:  # noqa: BLE001 - one unreadable clip must not stop the batch
                out[r] = self.error_row(row, failure_reason(e))
        todo = list(images)

        def request(r: int, feedback: str | None) -> VLMRequest:
            text = template.render(num_frames=len(images[r]), feedback=feedback)
            return VLMRequest(prompt=text, images=images[r], schema=template.schema, cache_salt=template.hash)

        replies, usage = self.ask([request(r, None) for r in todo], lambda i, error: request(todo[i], error))
        for r, reply, spent in zip(todo, replies, usage):
            out[r] = self._captioned_row(rows[r], reply, spent)
        return [out[r] for r in range(len(rows))]

    def frames_of(self, row: Row) -> list[bytes]:
        """`num_frames` JPEGs spread over the sample: a session's stored frames, or a clip's decoded ones."""
        stored = row.get("frames")
        if stored:
            picks = sample_indices(0, len(stored), self.num_frames)
            return [stored[i] for i in picks]
        if row.get("kind") != "clip":
            raise StageError(f"no_media: a {row.get('kind')} without stored frames cannot be captioned")
        start, end, frame_pts = clip_span(row)
        if end <= start:
            raise StageError(f"no_media: empty span [{start}, {end})")
        indices = sample_indices(start, end, self.num_frames)
        return [encode_jpeg(image, self.jpeg_quality) for image in read_frames(row["source_uri"], indices, frame_pts, first_index=start)]

    def _captioned_row(self, row: Row, reply: VLMReply | VLMError, usage: VLMUsage) -> Row:
        columns: dict[str, Any] = {"vlm_usage": usage.model_dump()}
        if isinstance(reply, VLMError):
            return self.error_row(row, reply.reason, **columns)
        if reply.parsed is None:
            return self.enrich(row, caption=None, caption_error=reply.error, **columns)
        return self.enrich(row, caption=reply.parsed.caption, caption_error=None, **columns)
