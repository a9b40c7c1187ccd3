"""Object removers for video clips, behind one protocol (`base.ObjectRemover`), chosen by config
through one factory (`make_remover`):

- `temporal` (temporal.py): the hole filled with the background other frames of the clip show
  there, aligned by homographies when the camera moves; OpenCV inpainting where none did.
  Offline, the default;
- `diffusers` (diffusers.py): a local inpainting pipeline, frame by frame;
- `api` (api.py): an image-editing API that takes a mask, frame by frame, with the VLM
  machinery's cache, retries and budget.

`RemovalConfig` holds their settings; the `erase` stage is one, so its keys (`erase.backend`,
`erase.dilate_px`, `erase.api.*`, ...) are these fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.backends.budget import Budget
from curation.backends.diffusers_edit import DiffusersEditConfig
from curation.backends.image_edit import ImageEditConfig
from curation.backends.removal.api import ApiRemover
from curation.backends.removal.base import ObjectRemover, RemovalFailed
from curation.backends.removal.diffusers import DiffusersRemover
from curation.backends.removal.temporal import TemporalRemover

__all__ = ["ObjectRemover", "RemovalConfig", "RemovalFailed", "make_remover"]


class RemovalConfig(BaseModel):
    """Which remover erases the object, and the settings of each."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["temporal", "diffusers", "api"] = Field(
        description="temporal (other frames' background; offline), diffusers (local inpainting pipeline) or api (image-edit API)")
    dilate_px: int = Field(ge=0, description="grow every mask by this many pixels first, so the object's edge and fringe go too")
    samples: int = Field(ge=1, description="temporal: each hole pixel is the median of this many frames that saw it, nearest first")
    max_offset: int | None = Field(
        ge=1, description="temporal: consult frames at most this many frames away (null: the whole clip)")
    align: bool = Field(description="temporal: fit homographies between frames (a moving camera); false assumes a still camera")
    features: int = Field(ge=16, description="temporal, align: ORB features per frame for the homographies")
    inpaint_radius: int = Field(ge=1, description="temporal: Telea inpainting radius for pixels no frame saw")
    prompt: str = Field(min_length=1, description="diffusers/api: what to paint into the hole")
    api: ImageEditConfig | None = Field(
        None, description="backend=api: the image-edit API (curation/backends/image_edit.py); openai only (it takes a mask)")
    diffusers: DiffusersEditConfig | None = Field(
        None, description="backend=diffusers: the inpainting pipeline and its sampling (curation/backends/diffusers_edit.py)")

    @model_validator(mode="after")
    def _backend_configured(self) -> RemovalConfig:
        if self.backend == "api" and self.api is None:
            raise ValueError("erase.backend=api needs erase.api (backend: openai, model, ...: see erase.yaml)")
        if self.backend == "api" and self.api is not None and self.api.backend != "openai":
            raise ValueError(f"erase.api.backend={self.api.backend}: only openai's images.edit takes a mask")
        if self.backend == "diffusers" and self.diffusers is None:
            raise ValueError("erase.backend=diffusers needs erase.diffusers.model")
        return self


def make_remover(cfg: RemovalConfig, budget: Budget | None = None) -> ObjectRemover:
    """The remover `cfg.backend` names, not opened yet: building one loads and connects nothing.
    `budget` caps what the paid backend spends."""
    if cfg.backend == "api" and cfg.api is not None:
        return ApiRemover(cfg.api, cfg.prompt, cfg.dilate_px, budget)
    if cfg.backend == "diffusers" and cfg.diffusers is not None:
        return DiffusersRemover(cfg.diffusers, cfg.prompt, cfg.dilate_px)
    if cfg.backend == "temporal":
        return TemporalRemover(dilate_px=cfg.dilate_px, samples=cfg.samples, max_offset=cfg.max_offset, align=cfg.align,
                               features=cfg.features, inpaint_radius=cfg.inpaint_radius)
    raise ValueError(f"removal backend {cfg.backend!r} is not configured")
