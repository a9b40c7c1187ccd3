"""Reference-image synthesizers for quadruplets, behind one protocol (`base.ReferenceSynthesizer`),
chosen by config through one factory (`make_synthesizer`):

- `composite` (composite.py): mask cutout and OpenCV inpainting; offline, the default;
- `api` (api.py): an image-editing API, with the VLM machinery's cache, retries and budget;
- `diffusers` (diffusers.py): a local image-editing pipeline, e.g. Qwen-Image-Edit.

The two editors are shown the grounded region, not the bare frame (editor_input.py: the object's
mask cutout, or the frame with its foreground blanked), as Kiwi-Edit §3.1 describes.

`SynthesisConfig` holds their settings; the `reference` stage is one, so its keys
(`reference.backend`, `reference.margin`, `reference.api.*`, ...) are these fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curation.backends.budget import Budget
from curation.backends.diffusers_edit import DiffusersEditConfig
from curation.backends.image_edit import ImageEditConfig
from curation.backends.references.api import ApiSynthesizer
from curation.backends.references.base import ReferenceInput, ReferenceSynthesizer, Synthesized
from curation.backends.references.composite import CompositeSynthesizer, parse_background
from curation.backends.references.diffusers import DiffusersSynthesizer
from curation.backends.references.editor_input import EditorInput

__all__ = ["ReferenceInput", "ReferenceSynthesizer", "SynthesisConfig", "Synthesized", "make_synthesizer"]


class SynthesisConfig(BaseModel):
    """Which synthesizer makes references, and the settings of each."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["composite", "api", "diffusers"] = Field(
        description="composite (offline), api (image-edit API) or diffusers (local pipeline)")
    background: str = Field(description="object references (and the plain area an editor is shown): white, black, gray/neutral or 'R,G,B'")
    margin: float = Field(
        ge=0, description="object references and editor inputs: crop margin around the mask's box, as a fraction of its longer side")
    inpaint: Literal["telea", "ns"] = Field(description="background references (composite): OpenCV inpainting method")
    inpaint_radius: int = Field(ge=1, description="background references (composite): inpainting radius in pixels")
    dilate_px: int = Field(
        ge=0, description="background references: grow the foreground mask by this before inpainting or blanking it for an editor (halo)")
    api: ImageEditConfig | None = Field(None, description="backend=api: the image-edit API (curation/backends/image_edit.py)")
    diffusers: DiffusersEditConfig | None = Field(
        None, description="backend=diffusers: the local pipeline (curation/backends/diffusers_edit.py)")

    @field_validator("background")
    @classmethod
    def _background_is_a_colour(cls, value: str) -> str:
        parse_background(value)  # a bad colour fails with the config, before any sample
        return value

    @model_validator(mode="after")
    def _backend_configured(self) -> SynthesisConfig:
        if self.backend == "api" and self.api is None:
            raise ValueError("reference.backend=api needs reference.api (backend, model, ...: see reference.yaml)")
        if self.backend == "diffusers" and self.diffusers is None:
            raise ValueError("reference.backend=diffusers needs reference.diffusers.model")
        return self


def make_synthesizer(cfg: SynthesisConfig, budget: Budget | None = None) -> ReferenceSynthesizer:
    """The synthesizer `cfg.backend` names, not opened yet: building one loads and connects
    nothing. `budget` caps what a paid backend spends."""
    editor_input = EditorInput(parse_background(cfg.background), cfg.margin, cfg.dilate_px)
    if cfg.backend == "api" and cfg.api is not None:
        return ApiSynthesizer(cfg.api, editor_input, budget)
    if cfg.backend == "diffusers" and cfg.diffusers is not None:
        return DiffusersSynthesizer(cfg.diffusers, editor_input)
    if cfg.backend == "composite":
        return CompositeSynthesizer(parse_background(cfg.background), cfg.margin, cfg.inpaint, cfg.inpaint_radius, cfg.dilate_px)
    raise ValueError(f"reference backend {cfg.backend!r} is not configured")
