"""Reference images for Kiwi-Edit's RefVIE quadruplets, made without models (the `composite` backend).

A reference shows the trainer *what* the edit should bring in, apart from the scene it goes into:
- local change/add/replace: the edited object alone, cut out by its mask onto a clean solid
  background and cropped tightly around it (`cutout_reference`);
- background change: the new background alone, the foreground removed and its hole inpainted
  (`background_reference`).

Both work on the object's bounding box (plus a margin) only; beyond it they read the mask once
and, for a background, copy the frame. So a reference costs about what decoding the frame and
PNG-encoding the result cost (bench/reference.py). The inpainting is the classic OpenCV one
(Telea's fast marching or Navier-Stokes): a smooth fill from the hole's border, not a generative
one, which is why a large hole is filled at a lower resolution, where it costs little and loses
nothing such a fill has.
"""

from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np

from curation.backends.references.base import ReferenceInput, ReferenceSynthesizer, Synthesized
from curation.core.stage import failure_reason

RGB = tuple[int, int, int]

NAMED_BACKGROUNDS: dict[str, RGB] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "neutral": (128, 128, 128),
}
# zlib level and strategy of the reference PNGs (bench/reference.py measures them): level 1 is the
# fastest and higher levels buy a few percent of size for 2-4x the encode time; run-length
# matching (Z_RLE) suits PNG's filtered rows, and was smaller and faster than the default here.
PNG_COMPRESSION = 1
PNG_STRATEGY = cv2.IMWRITE_PNG_STRATEGY_RLE
# A hole whose bounding box exceeds this many pixels is inpainted on a downscaled copy: Telea/NS
# cost grows with hole area x radius^2 (a person-sized hole in a 720p frame: ~0.3 s at full
# resolution), and their fill is a smooth extrapolation of the border with no detail a higher
# resolution would keep.
MAX_HOLE_PX = 4096
# Largest downscale: a hole pixel must still show in its block's INTER_AREA average (255/f^2 >= 0.5).
MAX_FACTOR = 16


def parse_background(value: str) -> RGB:
    """A config's background colour: `white`, `black`, `gray`/`grey`/`neutral` (128) or `R,G,B`."""
    key = value.strip().lower()
    if key in NAMED_BACKGROUNDS:
        return NAMED_BACKGROUNDS[key]
    parts = key.split(",")
    try:
        rgb = tuple(int(p) for p in parts)
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"background {value!r}: expected white, black, gray/neutral or R,G,B with 0-255 each")
    return rgb  # type: ignore[return-value]


def reference_problem(
    width: int, height: int, max_aspect: float = 3.0, min_side: int = 128, max_side: int | None = 2048,
) -> str | None:
    """Why a reference of this size is unfit for training (a stable drop reason), or None.
    Slivers and thumbnails say little about the object and bucket badly in the trainer; a
    reference far above the trainer's resolution is only downscaled there, at a large cost in
    shard bytes (`max_side`: longer side; None: no upper bound)."""
    short, long = min(width, height), max(width, height)
    if short < min_side:
        return f"reference_too_small: {short} < {min_side}"
    if max_side is not None and long > max_side:
        return f"reference_too_large: {long} > {max_side}"
    if long / short > max_aspect:
        return f"reference_aspect: {long / short:.2f} > {max_aspect:g}"
    return None


def encode_reference_png(image: np.ndarray, compression: int = PNG_COMPRESSION, strategy: int = PNG_STRATEGY) -> bytes:
    """(H, W, 3) RGB uint8 -> PNG bytes, as the `reference` column stores them."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, compression, cv2.IMWRITE_PNG_STRATEGY, strategy]
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError("PNG encoder refused the reference")
    return buf.tobytes()


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1), end-exclusive, of a (H, W) bool mask's set pixels; empty mask -> ValueError."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not rows.size:
        raise ValueError("empty mask: nothing to make a reference from")
    cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _check(image: np.ndarray, mask: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask of shape {mask.shape} for a {image.shape[0]}x{image.shape[1]} image")


def _grow(box: tuple[int, int, int, int], pad: int, height: int, width: int) -> tuple[int, int, int, int]:
    y0, y1, x0, x1 = box
    return max(0, y0 - pad), min(height, y1 + pad), max(0, x0 - pad), min(width, x1 + pad)


def cutout_reference(
    image: np.ndarray,
    mask: np.ndarray,
    background: RGB = (255, 255, 255),
    margin: float = 0.05,
    min_margin_px: int = 4,
) -> np.ndarray:
    """The masked object on a solid background, cropped to its bounding box plus a margin
    (`margin` of the box's longer side, at least `min_margin_px`, clipped to the image).
    Inside the mask: exactly the source pixels; everywhere else: exactly `background`."""
    _check(image, mask)
    mask = mask.astype(bool, copy=False)
    y0, y1, x0, x1 = box = mask_bbox(mask)
    pad = max(min_margin_px, math.ceil(margin * max(y1 - y0, x1 - x0)))
    y0, y1, x0, x1 = _grow(box, pad, *mask.shape)
    out = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
    out[:] = np.asarray(background, dtype=np.uint8)
    cv2.copyTo(image[y0:y1, x0:x1], mask[y0:y1, x0:x1].view(np.uint8), out)  # writes into `out`
    return out


def background_reference(
    image: np.ndarray,
    mask: np.ndarray,
    method: Literal["telea", "ns"] = "telea",
    radius: int = 5,
    dilate_px: int = 7,
    max_hole_px: int = MAX_HOLE_PX,
) -> np.ndarray:
    """The full frame with the foreground (`mask`, dilated by `dilate_px` to take its soft edge
    and halo too) removed and the hole inpainted from its surroundings (`radius`: how far from
    the hole, in frame pixels, the fill reads). Pixels outside the dilated hole are the source's
    exactly.

    Only the hole's bounding box plus the radius is worked on: Telea/NS read nothing further, so
    the result equals a full-frame inpaint. A hole whose bounding box exceeds `max_hole_px`
    pixels (0: never) is inpainted at an integer downscale, with the radius scaled to keep the
    same neighbourhood; a working pixel counts as hole if any frame pixel under it does, so no
    foreground value reaches the fill through the downscale."""
    _check(image, mask)
    flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[method]
    mask = mask.astype(bool, copy=False)
    height, width = mask.shape
    hole_box = _grow(mask_bbox(mask), dilate_px, height, width)
    hole_area = (hole_box[1] - hole_box[0]) * (hole_box[3] - hole_box[2])
    factor = max(1, min(MAX_FACTOR, math.ceil(math.sqrt(hole_area / max_hole_px)))) if max_hole_px else 1
    work_radius = max(1, math.ceil(radius / factor))
    y0, y1, x0, x1 = _grow(hole_box, (work_radius + 1) * factor, height, width)  # + the ring the fill reads
    hole = mask[y0:y1, x0:x1].view(np.uint8) * np.uint8(255)
    if dilate_px > 0:
        hole = cv2.dilate(hole, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1)))
    crop = image[y0:y1, x0:x1]
    filled = cv2.inpaint(crop, hole, radius, flag) if factor == 1 else _inpaint_downscaled(crop, hole, factor, work_radius, flag)
    out = image.copy()
    cv2.copyTo(filled, hole, out[y0:y1, x0:x1])  # writes into `out`, inside the hole only
    return out


def _inpaint_downscaled(crop: np.ndarray, hole: np.ndarray, factor: int, radius: int, flag: int) -> np.ndarray:
    """Inpaint `crop` at 1/`factor` scale and upscale the fill back to the crop's size. The crop
    is padded by replication to whole blocks, so INTER_AREA averages exactly one block per
    working pixel: a known working pixel holds only known frame pixels, and a block with any
    hole pixel (255) averages to at least 255/factor^2, above 0 while factor <= MAX_FACTOR."""
    h, w = hole.shape
    pad_h, pad_w = -h % factor, -w % factor
    size = ((w + pad_w) // factor, (h + pad_h) // factor)
    small = cv2.resize(cv2.copyMakeBorder(crop, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE), size, interpolation=cv2.INTER_AREA)
    small_hole = cv2.resize(cv2.copyMakeBorder(hole, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE), size, interpolation=cv2.INTER_AREA)
    filled = cv2.inpaint(small, small_hole, radius, flag)
    return cv2.resize(filled, (w + pad_w, h + pad_h), interpolation=cv2.INTER_LINEAR)[:h, :w]


# --------------------------------------------------------------------------------------------
# the `composite` synthesizer
# --------------------------------------------------------------------------------------------


class CompositeSynthesizer(ReferenceSynthesizer):
    """References without a model, offline: object mode cuts the masked object out onto a solid
    background (`cutout_reference`), background mode inpaints the foreground away
    (`background_reference`). Nothing to open; no prompt, no cost."""

    name = "composite"
    takes_prompt = False
    copies_target_pixels = True  # object: the target's pixels inside the mask; background: all but the hole

    def __init__(self, background: RGB, margin: float, inpaint: Literal["telea", "ns"], inpaint_radius: int, dilate_px: int):
        self.background = background
        self.margin = margin
        self.inpaint = inpaint
        self.inpaint_radius = inpaint_radius
        self.dilate_px = dilate_px

    def synthesize(self, items: list[ReferenceInput]) -> list[Synthesized]:
        out = []
        for item in items:
            try:
                out.append(Synthesized(image=self.reference(item.frame, item.mask, item.mode)))
            except Exception as e:  # noqa: BLE001 - one bad sample must not fail its batch
                out.append(Synthesized(reason=failure_reason(e)))
        return out

    def reference(self, frame: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
        """The reference of one (H, W, 3) RGB frame and its (H, W) bool mask."""
        if mode == "background":
            return background_reference(frame, mask, method=self.inpaint, radius=self.inpaint_radius, dilate_px=self.dilate_px)
        return cutout_reference(frame, mask, background=self.background, margin=self.margin)
