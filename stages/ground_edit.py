"""ground_edit: where the edit happened, as boxes and masks (Kiwi-Edit RefVIE).

A VLM boxes the edited object in the target's first frame (Kiwi-Edit prompt 1, "editing area
grounding"); for a background change it boxes the kept foreground in both first frames instead
(prompt 2, "foreground grounding"). The prompt versions are settings (`edit_area_template`,
`foreground_template`); every version's answer lists its boxes per image the same way
(`boxes()`, prompts/judges.py), so reading them does not depend on the version. Boxes come back
in the model's own convention (`box_format`, `box_order`, which the prompt states) and are
converted to frame pixels (a pixel box refers to the image *as sent*, which the stage shrinks
itself so it knows that size), clipped and validated. SAM2 refines the boxes into one mask per
image. Samples with no box, only invalid boxes or an empty mask are dropped
with a reason.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field, PrivateAttr, ValidationInfo, field_validator

from curation.backends.models import model_ref
from curation.backends.segment import BoxSegmenter, SegmenterConfig
from curation.backends.vlm import VLMError, VLMReply, VLMRequest, VLMUsage, shrink_image
from curation.core.schema import Jpeg, Png
from curation.core.stage import ModelRef, Resources, Row, failure_reason
from curation.media.edit_media import read_edit_frames
from curation.media.jpeg import encode_jpeg
from curation.prompts.judges import GROUNDING_ANSWERS
from curation.prompts.templates import PromptTemplate, answering_template, load_template
from curation.regions.boxes import BoxError, BoxFormat, BoxOrder, to_pixels, validate_box
from curation.regions.roe import encode_mask_png
from curation.stages.base.vlm import VLMStage

Image = Literal["source", "edited"]
# What the prompt tells the model about coordinates, per convention.
BOX_HINTS: dict[str, str] = {
    "pixel": "absolute pixel coordinates of the image as you see it (x to the right, y down, origin at the top-left corner)",
    "norm1000": "coordinates normalised to 0-1000 over the image's width and height (0 = left/top edge, 1000 = right/bottom edge)",
    "norm1": "coordinates normalised to 0-1 over the image's width and height (0 = left/top edge, 1 = right/bottom edge)",
    "auto": "absolute pixel coordinates of the image as you see it (x to the right, y down, origin at the top-left corner)",
}

# Each prompt setting -> the template family it must name (any version of it).
TEMPLATE_FAMILIES = {"edit_area_template": "ground_edit_area", "foreground_template": "ground_foreground"}


class EditBox(BaseModel):
    image: Image = Field(description="source: the source's first frame; edited: the target's first frame")
    label: str = Field(description="the model's name for the object")
    box: list[float] = Field(description="x0, y0, x1, y1 in pixels of that frame, clipped to it")
    answer: list[float] = Field(description="the box as the model gave it (its own convention)")


class GroundEditColumns(BaseModel):
    edit_mode: str | None = Field(None, description="object (local edits: the edited object) or background (background change: the "
                                                    "kept foreground)")
    edit_boxes: list[EditBox] | None = Field(None, description="validated boxes in frame pixels")
    mask_src: Png | None = Field(None, description="background mode: foreground mask of the source's first frame (PNG 0/255)")
    mask_tgt: Png | None = Field(None, description="mask of the target's first frame (PNG 0/255): the edited object, or the kept "
                                                 "foreground")
    src_frame: Jpeg | None = Field(None, description="the source's first frame (JPEG) the boxes and masks refer to")
    tgt_frame: Jpeg | None = Field(None, description="the target's first frame (JPEG) the boxes and masks refer to")
    vlm_usage: VLMUsage | None = Field(None, description="grounding requests, cache hits, tokens and USD for this sample")


@dataclass
class _Sample:
    row: dict[str, Any]
    mode: str
    frames: dict[str, np.ndarray]  # image -> RGB
    jpegs: dict[str, bytes]  # image -> JPEG as stored
    sent: dict[str, bytes]  # image -> bytes sent to the VLM (shrunk)
    sent_sizes: dict[str, tuple[int, int]]  # image -> (width, height) as sent
    boxes: list[EditBox] = field(default_factory=list)
    masks: dict[str, np.ndarray] = field(default_factory=dict)


class GroundEdit(VLMStage):
    """VLM boxes of the edited object (or the kept foreground), refined by SAM2 into masks."""

    name: ClassVar[str] = "ground_edit"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = GroundEditColumns

    box_format: BoxFormat = Field(description="the model's box convention: norm1000 (Qwen3-VL, Gemini), pixel (Qwen2.5-VL, of the "
                                              "image as sent), norm1, or auto (guess per box)")
    box_order: BoxOrder = Field(description="xyxy, or yxyx (Gemini's native [ymin, xmin, ymax, xmax])")
    edit_area_template: str = Field("ground_edit_area", description="object edits' prompt (Kiwi-Edit prompt 1): ground_edit_area "
                                                                    "(its default version), ground_edit_area.v2 or .v1")
    foreground_template: str = Field("ground_foreground", description="background changes' prompt (Kiwi-Edit prompt 2): "
                                                                      "ground_foreground (default version), .v2 or .v1")
    background_categories: list[str] = Field(description="categories grounded as background changes (foreground in both frames); "
                                                         "all others as object edits")
    min_box_side_px: float = Field(ge=0, description="boxes thinner than this (pixels, after clipping) are degenerate")
    min_box_area_frac: float = Field(ge=0, le=1, description="boxes covering less than this fraction of the frame are degenerate")
    min_mask_frac: float = Field(ge=0, le=1, description="a mask covering less than this fraction of its frame counts as empty")
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig,
                                       description="SAM2 or SAM3 (family): model, batch size, mask threshold, device")
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG quality of the stored first frames")
    max_pixels: int = Field(1 << 26, gt=0, description="image-bomb guard for source/target images")
    resources: Resources = Field(default_factory=lambda: Resources(concurrency=(1, 1)), description="Ray resources per worker")

    _segmenter: BoxSegmenter | None = PrivateAttr(default=None)

    def setup(self) -> None:
        super().setup()
        self._segmenter = BoxSegmenter(self.segmenter)

    @field_validator("edit_area_template", "foreground_template")
    @classmethod
    def _grounding_template(cls, name: str, info: ValidationInfo) -> str:
        """A typo or the other prompt's name fails when the config is built, not on the first batch."""
        family = TEMPLATE_FAMILIES[info.field_name]
        if name.split(".v")[0] != family:
            raise ValueError(f"{info.field_name} must be {family} or one of its versions ({family}.v<N>), got {name!r}")
        return answering_template(name, GROUNDING_ANSWERS, "one ground_edit reads")

    def templates(self) -> list[PromptTemplate]:
        return [load_template(self.edit_area_template), load_template(self.foreground_template)]

    def uses_gpu(self) -> bool:
        return True  # SAM2, whichever VLM names the objects

    def model_devices(self) -> dict[str, str]:
        found = super().model_devices()
        return {**found, "segmenter": self._segmenter.device} if self._segmenter is not None else found

    def models(self) -> dict[str, ModelRef]:
        return {**super().models(), "segmenter": model_ref(self.segmenter.model)}

    # ---- work ------------------------------------------------------------------------------
    def process_batch(self, rows: list[Row]) -> list[Row]:
        out: dict[int, dict[str, Any]] = {}
        samples: dict[int, _Sample] = {}
        for r, row in enumerate(rows):
            try:
                samples[r] = self._prepare(row)
            except Exception as e:  # noqa: BLE001 - a bad sample must not stop the run
                out[r] = self.error_row(row, failure_reason(e))
        order = list(samples)
        replies, usage = self.ask([self._request(samples[r], None) for r in order],
                                  lambda i, error: self._request(samples[order[i]], error))
        to_segment: list[tuple[int, str]] = []
        for r, reply, spent in zip(order, replies, usage):
            sample = samples[r]
            reason, status = self._read_boxes(sample, reply)
            columns = {"edit_mode": sample.mode, "vlm_usage": spent.model_dump(),
                       "src_frame": sample.jpegs["source"], "tgt_frame": sample.jpegs["edited"],
                       "edit_boxes": [b.model_dump() for b in sample.boxes]}
            if reason:
                out[r] = self.error_row(sample.row, reason, status, **columns)
            else:
                out[r] = columns  # finished after segmentation
                to_segment.extend((r, image) for image in ("source", "edited") if self._boxes_in(sample, image))
        if to_segment:
            try:
                self._segment(samples, to_segment)
            except Exception as e:  # noqa: BLE001 - SAM2 failed on the batch: these samples are errors, retryable
                for r in {r for r, _ in to_segment}:
                    out[r] = self.error_row(samples[r].row, failure_reason(e), **out[r])
        for r in {r for r, _ in to_segment}:
            if "status" not in out[r]:
                out[r] = self._masked_row(samples[r], out[r])
        return [out[r] for r in range(len(rows))]

    def _prepare(self, row: dict[str, Any]) -> _Sample:
        mode = "background" if (row.get("category") or "other") in self.background_categories else "object"
        is_video = row.get("edit_kind", row["kind"]) == "triplet"
        ((src, tgt),) = read_edit_frames(row["source_uri"], row["target_uri"], [0], is_video=is_video, max_pixels=self.max_pixels)
        frames = {"source": src, "edited": tgt}
        jpegs = {k: encode_jpeg(v, self.jpeg_quality) for k, v in frames.items()}
        sent = {k: shrink_image(v, self.vlm.image_max_side) for k, v in jpegs.items()}
        return _Sample(row, mode, frames, jpegs, sent, {k: _image_size(v) for k, v in sent.items()})

    def _request(self, sample: _Sample, feedback: str | None) -> VLMRequest:
        template = load_template(self.foreground_template if sample.mode == "background" else self.edit_area_template)
        hint = BOX_HINTS[self.box_format]
        if self.box_order == "yxyx":
            hint += "; write each box's four numbers in the order [y1, x1, y2, x2] (top, left, bottom, right)"
        text = template.render(instruction=sample.row.get("instruction") or "", box_hint=hint, feedback=feedback)
        return VLMRequest(prompt=text, images=[sample.sent["source"], sample.sent["edited"]], schema=template.schema,
                          cache_salt=template.hash)

    def _read_boxes(self, sample: _Sample, reply: VLMReply | VLMError) -> tuple[str | None, str]:
        """Fill `sample.boxes`; returns (reason, status) when the sample cannot go on."""
        if isinstance(reply, VLMError):
            return reply.reason, "error"
        if reply.parsed is None:
            return f"judge_unparseable: {reply.error}", "dropped"
        answer = reply.parsed
        if not isinstance(answer, GROUNDING_ANSWERS):
            raise TypeError(f"grounding answer parsed as {type(answer).__name__}")
        rejected: list[str] = []
        for image, label, coords in answer.boxes():
            height, width = sample.frames[image].shape[:2]
            sent_w, sent_h = sample.sent_sizes[image]
            try:
                pixels = to_pixels(coords, self.box_format, self.box_order, width=width, height=height,
                                   sent_width=sent_w, sent_height=sent_h)
            except BoxError as e:
                rejected.append(e.reason)
                continue
            box, why = validate_box(pixels, width, height, min_side_px=self.min_box_side_px,
                                    min_area_frac=self.min_box_area_frac)
            if box is None:
                rejected.append(why or "degenerate_box")
                continue
            sample.boxes.append(EditBox(image=image, label=label, box=list(box), answer=list(coords)))
        if not self._boxes_in(sample, "edited"):
            if rejected:
                return f"{rejected[0]} ({len(rejected)} box(es) rejected, none valid in the edited frame)", "dropped"
            wanted = "foreground" if sample.mode == "background" else "edited object"
            return f"no_box: the VLM found no {wanted} in the edited frame", "dropped"
        return None, "ok"

    @staticmethod
    def _boxes_in(sample: _Sample, image: str) -> list[EditBox]:
        return [b for b in sample.boxes if b.image == image]

    def _segment(self, samples: dict[int, _Sample], todo: list[tuple[int, str]]) -> None:
        """One SAM2 pass over every (sample, image) with boxes; each image's masks are unioned."""
        self.ensure_setup()
        images = [samples[r].frames[image] for r, image in todo]
        boxes = [[b.box for b in self._boxes_in(samples[r], image)] for r, image in todo]
        for (r, image), masks in zip(todo, self._segmenter.segment(images, boxes)):
            samples[r].masks[image] = masks.any(axis=0)

    def _masked_row(self, sample: _Sample, columns: dict[str, Any]) -> dict[str, Any]:
        for image, side in (("edited", "tgt"), ("source", "src")):
            mask = sample.masks.get(image)
            if mask is None:
                continue
            if mask.mean() < self.min_mask_frac or not mask.any():
                if image == "edited":
                    reason = f"empty_mask: SAM2 found {mask.mean():.4%} of the edited frame inside the box(es)"
                    return self.error_row(sample.row, reason, "dropped", **columns)
                continue  # the source's foreground is optional; without a mask it is left out
            columns[f"mask_{side}"] = encode_mask_png(mask)
        return self.enrich(sample.row, **columns)


def _image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from an encoded image's header."""
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as img:
        return img.size

