"""What an image editor (the `api` and `diffusers` synthesizers) is shown: the grounded region, not
the bare frame.

Kiwi-Edit §3.1 grounds the edited region, refines its box into a "pixel-perfect" SAM mask, and then
synthesizes the reference "leveraging the segmented regions": for a local edit it extracts the
target object and has the editor place it on a clean background with minimal surrounding space;
for a background change it removes the foreground and inpaints the region. So the mask is applied
before the editor sees anything, and the editor's job is what segmentation cannot do:
- object mode: the input is the object cut out by its mask onto the plain `background` colour and
  cropped to the mask's box plus `margin` (`cutout_reference`, the composite backend's own cutout);
  the editor cleans its edges, completes what the mask clipped and keeps its identity. Showing it
  the crop with the scene still around the object would leave it to re-segment the object itself,
  and the whole frame (what this backend sent before) also leaves it to find which object is meant.
- background mode: the input is the full frame with the foreground mask, grown by `dilate_px` to
  take its soft edge and halo, painted over with the plain `background` colour; the editor fills
  that area with a continuation of the scene, which is the inpainting step.

The instruction (`reference_edit.v2`) names the object and says what the plain area is.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from curation.backends.references.base import ReferenceInput
from curation.backends.references.composite import RGB, cutout_reference, mask_bbox


@dataclass(frozen=True)
class EditorInput:
    """How a sample's frame and mask become the editor's input image (the synthesis config's
    `background`, `margin` and `dilate_px`, which the composite backend reads the same way)."""

    background: RGB  # the plain colour outside the object (object mode) / over the hole (background mode)
    margin: float  # object mode: crop margin, fraction of the mask box's longer side
    dilate_px: int  # background mode: grow the foreground mask by this before painting it over

    def image(self, item: ReferenceInput) -> np.ndarray:
        """(h, w, 3) uint8 RGB: the cutout (object mode) or the frame with its hole (background mode).
        A mode other than these two is the frame as it is: its prompt fails to render anyway."""
        if item.mode == "background":
            return self.blank_foreground(item.frame, item.mask)
        if item.mode == "object":
            return cutout_reference(item.frame, item.mask, background=self.background, margin=self.margin)
        return item.frame

    def blank_foreground(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The frame with the (dilated) foreground painted the plain background colour."""
        if mask.shape != frame.shape[:2]:
            raise ValueError(f"mask of shape {mask.shape} for a {frame.shape[0]}x{frame.shape[1]} image")
        mask_bbox(mask)  # an empty mask: ValueError, as for a cutout
        hole = mask.astype(np.uint8)
        if self.dilate_px > 0:
            size = 2 * self.dilate_px + 1
            hole = cv2.dilate(hole, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
        out = frame.copy()
        out[hole.astype(bool)] = np.asarray(self.background, dtype=np.uint8)
        return out
