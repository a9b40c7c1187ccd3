"""caption: a VLM writes one caption per sample from a few of its frames (prompts/caption.v2.j2).

What is captioned is `of`:
- `clip`: VINCIE's transition-annotation prompt (seed 003, App. C.2) is given "the caption of the
  raw video clip" as context; `annotate` renders this stage's `caption` column into its prompt's
  caption slot. A session (one per clip) is captioned from its stored frames, a clip from frames
  decoded evenly over its span.
- `target` / `source`: an edit's (pair, triplet or quad) edited or original media. RVEDiT (seed
  001, §5 and App. D.1) re-annotates every target video with one VLM (Qwen3-VL-8B-Instruct) so
  the captions its reference branch is conditioned on read alike across datasets. A pair's image
  is sent as one picture with the still-image prompt, a triplet's video as frames spread over it.
- `auto`: `clip` for clips and sessions, `target` for edits.

The caption is context, not a gate: an answer that fails the schema twice leaves `caption` null
with the reason in `caption_error`, and the sample goes on to be annotated without one. Transport
failures (API errors after retries, an exhausted budget) make the sample `status=error`, so
`retry_errors=true` redoes it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from curation.backends.vlm import VLMError, VLMReply, VLMRequest, VLMUsage
from curation.core.stage import Row, StageError, failure_reason
from curation.media.decode import read_frames
from curation.media.edit_media import image_file_as_is, load_image, read_video_frames
from curation.media.jpeg import encode_jpeg
from curation.media.timing import clip_span
from curation.prompts.templates import PromptTemplate, load_template
from curation.quality import sample_indices
from curation.shards.writer import EDIT_KINDS, edit_media_kind
from curation.stages.base.vlm import VLMStage


class CaptionColumns(BaseModel):
    caption: str | None = Field(None, description="the VLM's caption of the clip, or of the edit's target or source (`of`); "
                                                  "null when it gave none that validated")
    caption_error: str | None = Field(None, description="why `caption` is null (the answer failed the schema twice)")
    vlm_usage: VLMUsage | None = Field(None, description="VLM requests, cache hits, tokens and estimated USD spent on the caption")


class Caption(VLMStage):
    """A VLM caption of each clip or session (annotate's context) or of each edit's target (RVEDiT)."""

    name: ClassVar[str] = "caption"
    version: ClassVar[str] = "2"  # 2: edits' targets or sources (`of`), the still-image prompt (caption.v2)
    Columns: ClassVar[type[BaseModel]] = CaptionColumns
    reads_media: ClassVar[tuple[str, ...]] = ("frames",)

    template: str = Field("caption", description="prompt template name (prompts/); its hash is in the cache key and _run.json")
    of: Literal["auto", "clip", "target", "source"] = Field(
        "auto", description="what is captioned: clip (a clip's span, a session's frames), target or source (an edit's image or "
                            "video), auto (clip for clips and sessions, target for edits: RVEDiT recaptions every target)")
    num_frames: int = Field(4, ge=1, le=16, description="frames shown to the VLM, spread evenly over the clip, session or video")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of decoded frames (sessions send their own; "
                                                            "images small enough go as they are)")
    max_pixels: int = Field(1 << 26, gt=0, description="image-bomb guard for an edit's image or video, checked from its header")

    def prompt(self) -> PromptTemplate:
        return load_template(self.template)

    def templates(self) -> list[PromptTemplate]:
        return [self.prompt()]

    def process_batch(self, rows: list[Row]) -> list[Row]:
        template = self.prompt()
        out: dict[int, Row] = {}
        images: dict[int, list[bytes]] = {}
        is_video: dict[int, bool] = {}
        for r, row in enumerate(rows):
            try:
                images[r], is_video[r] = self.media_of(row)
            except Exception as e:  # noqa: BLE001 - one unreadable clip must not stop the batch
                out[r] = self.error_row(row, failure_reason(e))
        todo = list(images)

        def request(r: int, feedback: str | None) -> VLMRequest:
            text = template.render(num_frames=len(images[r]), is_video=is_video[r], feedback=feedback)
            return VLMRequest(prompt=text, images=images[r], schema=template.schema, cache_salt=template.hash)

        replies, usage = self.ask([request(r, None) for r in todo], lambda i, error: request(todo[i], error))
        for r, reply, spent in zip(todo, replies, usage):
            out[r] = self._captioned_row(rows[r], reply, spent)
        return [out[r] for r in range(len(rows))]

    def media_of(self, row: Row) -> tuple[list[bytes], bool]:
        """What the VLM is shown, and whether it is a video: the clip's frames, or the edit's
        target or source (`of`). A sample that has no such media is an error naming `of`."""
        is_edit = row.get("kind") in EDIT_KINDS
        side = ("target" if is_edit else "clip") if self.of == "auto" else self.of
        if side == "clip" and is_edit:
            raise StageError(f"no_media: a {row['kind']} is an edit, with no clip to caption (caption.of=clip; edits take "
                             "target or source)")
        if side != "clip" and not is_edit:
            raise StageError(f"no_media: a {row.get('kind')} has no {side} to caption (caption.of={side} is for edits: "
                             f"{', '.join(EDIT_KINDS)})")
        return (self.frames_of(row), True) if side == "clip" else self.edit_media(row, side)

    def edit_media(self, row: Row, side: Literal["target", "source"]) -> tuple[list[bytes], bool]:
        """A pair's image (its own bytes when the VLM can take them unchanged), or `num_frames`
        JPEGs spread over a triplet's video, of the edit's `side`."""
        uri = row[f"{side}_uri"]
        try:
            if edit_media_kind(row) == "pair":
                image = image_file_as_is(uri, self.vlm.image_max_side, self.max_pixels)
                return [image if image is not None else encode_jpeg(load_image(uri, self.max_pixels), self.jpeg_quality)], False
            count = row.get("target_num_frames" if side == "target" else "num_frames")
            if not count:
                raise StageError("no_media: frame count unknown (run ingest)")
            indices = sample_indices(0, count, self.num_frames)
            return [encode_jpeg(frame, self.jpeg_quality) for frame in read_video_frames(uri, indices, self.max_pixels)], True
        except StageError as e:
            raise StageError(f"{e.reason} ({side})") from e

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
