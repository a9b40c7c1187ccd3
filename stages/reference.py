"""reference: synthesize the reference image that turns an edit into a quadruplet (Kiwi-Edit RefVIE).

From the target's first frame and the `ground_edit` mask:
- object mode (local edits): the edited object, cut out onto a clean background, cropped tight;
- background mode (background change): the foreground removed and the hole inpainted, so what is
  left is the new background.

Backends (`backend=`, curation/backends/references/): `composite` (mask cutout + OpenCV
inpainting; offline, the default), `api` (an image-editing API: OpenAI images edit or Gemini
image output, with the VLM backends' retries, cache and budget) and `diffusers` (a local
image-editing pipeline, e.g. Qwen-Image-Edit). Those that take an instruction get the
`reference_edit` prompt naming the grounded object, and are shown the grounded region rather than
the bare frame (curation/backends/references/editor_input.py: the object's mask cutout, or the frame
with its foreground blanked). References with an extreme aspect ratio, a short side below
`min_side` or a long side above `max_side` are dropped with a reason.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field, PrivateAttr

from curation.backends.references import ReferenceInput, ReferenceSynthesizer, SynthesisConfig, make_synthesizer
from curation.backends.references.composite import encode_reference_png, reference_problem
from curation.backends.usage import VLMUsage
from curation.core.schema import Png
from curation.core.stage import ModelRef, Row, StageError, failure_reason
from curation.media.jpeg import decode_image
from curation.prompts.templates import PromptTemplate, load_template
from curation.regions.roe import decode_mask_png
from curation.stages.base.scope import CategoryScope
from curation.stages.base.vlm import EditorBackedStage


class ReferenceColumns(BaseModel):
    reference: Png | None = Field(None, description="the reference image (PNG)")
    reference_width: int | None = Field(None, description="reference width in pixels")
    reference_height: int | None = Field(None, description="reference height in pixels")
    reference_backend: str | None = Field(None, description="composite, api:<model> or diffusers:<model>")
    reference_is_cutout: bool | None = Field(
        None, description="the reference is made of the target frame's own pixels (composite: the object's mask cutout, or the "
        "frame with its foreground inpainted), so a model can learn to copy the target from it; False for an editor's image")
    reference_usage: VLMUsage | None = Field(None, description="api backend: requests, cache hits, USD spent on this reference")
    generator: str | None = Field(
        None, description="what made the sample's generated media (the reference): composite, a diffusers model id, or "
        "<provider>:<model> for an API, whose terms then apply to it")


class Reference(EditorBackedStage, SynthesisConfig, CategoryScope):
    """Synthesize the reference image (object cutout or inpainted background) and make the sample a quad."""

    name: ClassVar[str] = "reference"
    version: ClassVar[str] = "2"  # 2: editors shown the mask cutout / blanked frame; max_side; reference_is_cutout
    Columns: ClassVar[type[BaseModel]] = ReferenceColumns
    reads_media: ClassVar[tuple[str, ...]] = ("tgt_frame", "mask_tgt")

    # The synthesizer's settings (backend, background, margin, inpaint..., api, diffusers) are
    # this stage's fields through SynthesisConfig; these are the stage's own.
    max_aspect: float = Field(ge=1, description="drop references whose longer/shorter side ratio exceeds this (reference_aspect)")
    min_side: int = Field(ge=1, description="drop references whose shorter side is below this many pixels (reference_too_small)")
    max_side: int | None = Field(
        ge=1, description="drop references whose longer side is above this many pixels (reference_too_large); null: no bound")

    _synthesizer: ReferenceSynthesizer | None = PrivateAttr(default=None)

    def setup(self) -> None:
        self._synthesizer = make_synthesizer(self, self.budget())
        self._synthesizer.open()

    usage_column: ClassVar[str] = "reference_usage"

    def model_devices(self) -> dict[str, str]:
        device = getattr(self._synthesizer, "device", None)
        return {"reference": device} if device else {}

    def models(self) -> dict[str, ModelRef]:
        model = make_synthesizer(self).model()  # built, not opened: nothing loads
        return {"reference": model} if model else {}

    # ---- work ------------------------------------------------------------------------------
    def process_batch(self, rows: list[Row]) -> list[Row]:
        return self.in_scope(rows, self._process_in_scope)

    def _process_in_scope(self, rows: list[Row]) -> list[Row]:
        synthesizer = self._synthesizer
        if synthesizer is None:
            raise RuntimeError("reference: process_batch before setup()")
        template = load_template("reference_edit") if synthesizer.takes_prompt else None
        out: dict[int, Row] = {}
        inputs: dict[int, ReferenceInput] = {}
        for r, row in enumerate(rows):
            try:
                inputs[r] = self._input(row, template)
            except Exception as e:  # noqa: BLE001 - a bad sample must not stop the run
                out[r] = self.error_row(row, failure_reason(e))
        made_by, generator = synthesizer.describe(), synthesizer.generator()
        for r, result in zip(inputs, synthesizer.synthesize(list(inputs.values())), strict=True):
            usage = result.usage.model_dump() if result.usage is not None else None
            if result.reason is not None:  # retryable: API/model errors
                out[r] = self.error_row(rows[r], result.reason, reference_usage=usage)
            else:
                out[r] = self._quad(rows[r], result.image, made_by, generator, synthesizer.copies_target_pixels, usage)
        return [out[r] for r in range(len(rows))]

    def _input(self, row: Row, template: PromptTemplate | None) -> ReferenceInput:
        frame, mask, mode = _grounded(row)
        if template is None:
            return ReferenceInput(frame=frame, mask=mask, mode=mode)
        return ReferenceInput(frame=frame, mask=mask, mode=mode, prompt=self._prompt(template, row, mode), cache_salt=template.hash)

    def _prompt(self, template: PromptTemplate, row: Row, mode: str) -> str:
        labels = list(dict.fromkeys(b["label"] for b in row.get("edit_boxes") or [] if b["image"] == "edited"))
        return template.render(mode=mode, label=" and ".join(labels) or "main object", background=self.background)

    def _quad(self, row: Row, image: np.ndarray, made_by: str, generator: str, cutout: bool, usage: dict[str, Any] | None) -> Row:
        height, width = image.shape[:2]
        columns = {"reference_width": width, "reference_height": height, "reference_backend": made_by, "generator": generator,
                   "reference_is_cutout": cutout, "reference_usage": usage}
        problem = reference_problem(width, height, max_aspect=self.max_aspect, min_side=self.min_side, max_side=self.max_side)
        if problem:
            return self.error_row(row, problem, "dropped", **columns)
        try:
            png = encode_reference_png(image)
        except Exception as e:  # noqa: BLE001 - one bad reference must not fail its batch
            return self.error_row(row, f"encode_failed: {failure_reason(e)}", **columns)
        return self.child_row(row, kind="quad", span="reference", reference=png, **columns)


def _grounded(row: Row) -> tuple[np.ndarray, np.ndarray, str]:
    """The target's first frame (RGB), its mask (bool) and the mode, as ground_edit stored them."""
    if not row.get("tgt_frame") or not row.get("mask_tgt"):
        raise StageError("not_grounded: run ground_edit first (no tgt_frame/mask_tgt)")
    frame = decode_image(row["tgt_frame"], "tgt_frame")
    try:
        mask = decode_mask_png(row["mask_tgt"]) > 0
    except ValueError as e:
        raise StageError(f"decode_failed: mask_tgt: {e}") from e
    if mask.shape != frame.shape[:2]:
        raise StageError(f"mask_size_mismatch: mask {mask.shape[::-1]} vs frame {frame.shape[1::-1]}")
    if not mask.any():  # ground_edit never stores one; a hand-made manifest might
        raise StageError("empty_mask: mask_tgt has no foreground pixel")
    return frame, mask, row.get("edit_mode") or "object"
