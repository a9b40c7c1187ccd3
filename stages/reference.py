"""reference: synthesize the reference image that turns an edit into a quadruplet (Kiwi-Edit RefVIE).

From the target's first frame and the `ground_edit` mask:
- object mode (local edits): the edited object, cut out onto a clean background, cropped tight;
- background mode (background change): the foreground removed and the hole inpainted, so what is
  left is the new background.

Backends (`backend=`): `composite` (mask cutout + OpenCV inpainting; offline, the default),
`api` (an image-editing API: OpenAI images edit or Gemini image output, with the VLM backends'
retries, cache and budget) and `diffusers` (a local image-editing pipeline, e.g. Qwen-Image-Edit).
The model backends get the `reference_edit` prompt naming the grounded object. References with an
extreme aspect ratio or a short side below `min_side` are dropped with a reason.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, PrivateAttr, model_validator

from curation import manifest as mf
from curation.backends.diffusers_edit import DiffusersEditConfig, DiffusersEditor
from curation.backends.image_edit import ImageEditConfig, make_image_editor
from curation.backends.models import describe_model
from curation.backends.vlm import VLMError, VLMUsage
from curation.media.jpeg import decode_image
from curation.prompting import load_template
from curation.reference_composite import (background_reference, cutout_reference, encode_reference_png, parse_background,
                                         reference_problem)
from curation.roe import decode_mask_png
from curation.stage import Resources, StageError, failure_reason
from curation.vlm_stage import BudgetedStage



class ReferenceColumns(BaseModel):
    reference: bytes | None = Field(None, description="the reference image (PNG)")
    reference_width: int | None = Field(None, description="reference width in pixels")
    reference_height: int | None = Field(None, description="reference height in pixels")
    reference_backend: str | None = Field(None, description="composite, api:<model> or diffusers:<model>")
    reference_usage: VLMUsage | None = Field(None, description="api backend: requests, cache hits, USD spent on this reference")


class Reference(BudgetedStage):
    """Synthesize the reference image (object cutout or inpainted background) and make the sample a quad."""

    name: ClassVar[str] = "reference"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = ReferenceColumns

    backend: Literal["composite", "api", "diffusers"] = Field(description="composite (offline), api (image-edit API) or diffusers (local pipeline)")
    background: str = Field(description="object references: white, black, gray/neutral or 'R,G,B'")
    margin: float = Field(ge=0, description="object references: crop margin around the mask's box, as a fraction of its longer side")
    inpaint: Literal["telea", "ns"] = Field(description="background references (composite): OpenCV inpainting method")
    inpaint_radius: int = Field(ge=1, description="background references (composite): inpainting radius in pixels")
    dilate_px: int = Field(ge=0, description="background references (composite): grow the foreground mask by this before inpainting (halo)")
    max_aspect: float = Field(ge=1, description="drop references whose longer/shorter side ratio exceeds this (reference_aspect)")
    min_side: int = Field(ge=1, description="drop references whose shorter side is below this many pixels (reference_too_small)")
    api: ImageEditConfig | None = Field(None, description="backend=api: the image-edit API (curation/backends/image_edit.py)")
    diffusers: DiffusersEditConfig | None = Field(None, description="backend=diffusers: the local pipeline (curation/backends/diffusers_edit.py)")
    resources: Resources = Field(default_factory=Resources, description="Ray resources per worker")

    _editor: Any = PrivateAttr(default=None)

    def setup(self) -> None:
        parse_background(self.background)  # a bad colour fails here, before any sample
        if self.backend == "api":
            self._editor = make_image_editor(self.api, self.budget())
            self._editor.open()
        elif self.backend == "diffusers":
            self._editor = DiffusersEditor(self.diffusers)

    @model_validator(mode="after")
    def _backend_configured(self) -> "Reference":
        if self.backend == "api" and self.api is None:
            raise ValueError("reference.backend=api needs reference.api (backend, model, ...: see reference.yaml)")
        if self.backend == "diffusers" and self.diffusers is None:
            raise ValueError("reference.backend=diffusers needs reference.diffusers.model")
        return self

    def backend_id(self) -> str:
        if self.backend == "api":
            return f"api:{self.api.backend}:{describe_model(self.api.model)}"
        if self.backend == "diffusers":
            return f"diffusers:{describe_model(self.diffusers.model)}"
        return "composite"

    def model_ids(self) -> dict[str, str]:
        return {"reference": self.backend_id()} if self.backend != "composite" else {}

    # ---- work ------------------------------------------------------------------------------
    def __call__(self, batch: pa.Table) -> pa.Table:
        self.ensure_setup()
        rows = batch.to_pylist()
        out: dict[int, dict[str, Any]] = {}
        inputs: dict[int, tuple[np.ndarray, np.ndarray, str]] = {}
        for r, row in enumerate(rows):
            try:
                inputs[r] = _inputs(row)
            except Exception as e:  # noqa: BLE001 - a bad sample must not stop the run
                out[r] = self.error_row(row, failure_reason(e))
        made: dict[int, np.ndarray | str] = {}
        usage: dict[int, VLMUsage] = {}
        if self.backend == "composite":
            for r, (frame, mask, mode) in inputs.items():
                try:
                    made[r] = self._composite(frame, mask, mode)
                except Exception as e:  # noqa: BLE001
                    made[r] = failure_reason(e)
        else:
            made, usage = self._by_model(rows, inputs)
        for r, result in made.items():
            if isinstance(result, str):  # a failure reason (retryable: API/model errors)
                out[r] = {**self.error_row(rows[r], result), "reference_usage": _dump(usage.get(r))}
            else:
                out[r] = self._quad(rows[r], result, usage.get(r))
        return mf.rows_to_table([out[r] for r in range(len(rows))], self.output_schema(batch.schema))

    def _composite(self, frame: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
        if mode == "background":
            return background_reference(frame, mask, method=self.inpaint, radius=self.inpaint_radius, dilate_px=self.dilate_px)
        return cutout_reference(frame, mask, background=parse_background(self.background), margin=self.margin)

    def _prompt(self, row: dict[str, Any], mode: str) -> str:
        labels = list(dict.fromkeys(b["label"] for b in row.get("edit_boxes") or [] if b["image"] == "edited"))
        return load_template("reference_edit").render(mode=mode, label=" and ".join(labels) or "main object",
                                                      background=self.background)

    def _by_model(self, rows: list[dict[str, Any]], inputs: dict[int, tuple[np.ndarray, np.ndarray, str]]
                  ) -> tuple[dict[int, np.ndarray | str], dict[int, VLMUsage]]:
        order = list(inputs)
        prompts = [self._prompt(rows[r], inputs[r][2]) for r in order]
        made: dict[int, np.ndarray | str] = {}
        usage: dict[int, VLMUsage] = {}
        if self.backend == "diffusers":
            try:
                images = self._editor.edit([inputs[r][0] for r in order], prompts)
            except Exception as e:  # noqa: BLE001 - the model failed on the batch: its samples are errors
                return {r: failure_reason(e) for r in order}, usage
            return dict(zip(order, images)), usage
        from curation.backends.image_edit import ImageEditRequest

        template = load_template("reference_edit")
        replies = self._editor.edit_many([ImageEditRequest(prompt=p, image=rows[r]["tgt_frame"], cache_salt=template.hash)
                                          for r, p in zip(order, prompts)])
        for r, reply in zip(order, replies):
            if isinstance(reply, VLMError):
                made[r], usage[r] = reply.reason, reply.usage
                continue
            usage[r] = reply.usage
            try:
                made[r] = decode_image(reply.image)
            except StageError:
                made[r] = "image_edit_bad_output: the API's image does not decode"
        return made, usage

    def _quad(self, row: dict[str, Any], image: np.ndarray, usage: VLMUsage | None) -> dict[str, Any]:
        height, width = image.shape[:2]
        columns = {"reference_width": width, "reference_height": height, "reference_backend": self.backend_id(),
                   "reference_usage": _dump(usage)}
        problem = reference_problem(width, height, max_aspect=self.max_aspect, min_side=self.min_side)
        if problem:
            return {**self.error_row(row, problem, "dropped"), **columns}
        try:
            png = encode_reference_png(image)
        except Exception as e:  # noqa: BLE001 - one bad reference must not fail its batch
            return {**self.error_row(row, f"encode_failed: {failure_reason(e)}"), **columns}
        return self.child_row(row, kind="quad", span="reference", reference=png, **columns)


def _inputs(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, str]:
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


def _dump(usage: VLMUsage | None) -> dict[str, Any] | None:
    return usage.model_dump() if usage is not None else None
