"""Exposure and focus: mean luminance (too dark / too bright) and variance of the Laplacian (blur).

Both are measured on the active picture (inside any black border, which would otherwise darken
the mean and add hard edges) at the shared working size: the Laplacian's variance grows as an
image is shrunk, so it is only comparable between frames brought to one size.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class LuminanceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="drop frames too dark or too bright by their mean luma")
    min_luma: float = Field(
        12.0, ge=0, le=255,
        description="drop below this mean BT.601 luma (0-255): PySceneDetect's detect-threshold default, the same "
        "black level scene_split uses. The darkest real (non-fade) footage on shared/media measures 12.4",
    )
    max_luma: float = Field(
        243.0, ge=0, le=255,
        description="drop above this mean luma: the mirror of min_luma (within 12 of white is as empty as within 12 "
        "of black: fades to white, blown-out frames). No real frame on shared/media comes near it (brightest 171)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> LuminanceConfig:
        if self.min_luma >= self.max_luma:
            raise ValueError(f"min_luma {self.min_luma} must be below max_luma {self.max_luma}")
        return self

    def failure(self, luma: float) -> str | None:
        if luma < self.min_luma:
            return f"too_dark: luma {luma:.1f} < {self.min_luma:g}"
        if luma > self.max_luma:
            return f"too_bright: luma {luma:.1f} > {self.max_luma:g}"
        return None


class BlurConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="drop blurry clips by the variance of the Laplacian")
    min_laplacian_var: float = Field(
        15.0, ge=0,
        description="drop below this variance of the 3x3 Laplacian of luma at the working size (short side 360), "
        "median over frames. Measured on shared/media: in-focus footage measures 16.5 and up (car-detection's soft "
        "aerial asphalt 16.5-18, GoldenEye film close-ups 28+), motion-blurred or defocused frames 2-10 (skimage "
        "clock_motion 7.5, GoldenEye scene 19), sigma-2 Gaussian-blurred copies of natural images 1-15. The "
        "often-quoted 100 (pyimagesearch) would drop more than half of the in-focus GoldenEye stills. Flat, textureless scenes "
        "(clear sky) measure low whatever their focus",
    )

    def failure(self, laplacian_var: float) -> str | None:
        if laplacian_var < self.min_laplacian_var:
            return f"blurry: laplacian var {laplacian_var:.1f} < {self.min_laplacian_var:g}"
        return None


def mean_luma(grays: Sequence[np.ndarray]) -> float:
    """Mean luma over all frames (0-255)."""
    return float(np.mean([g.mean() for g in grays]))


def laplacian_variance(grays: Sequence[np.ndarray]) -> float:
    """Median over frames of var(Laplacian): the median ignores one frame caught in a whip pan."""
    return float(np.median([cv2.Laplacian(g, cv2.CV_64F).var() for g in grays]))
