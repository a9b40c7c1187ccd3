"""Region-of-edit (RoE) masks: what changed between a turn's two frames, as one mask per frame.

Pure fusion, no models: the changed entities' masks in a frame are unioned into that frame's
RoE; a box SAM2 gave no mask for counts as its filled rectangle. Masks are stored as
single-channel PNGs (0 outside, 255 inside) at the stored frame's size, which is what the shard
writer copies to `mask_src.png` / `mask_tgt.png`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
Outcome = Literal["found", "none"]


def box_mask(box: Sequence[float], height: int, width: int) -> np.ndarray:
    """(H, W) bool: the pixels a box touches (floor of its top-left, ceil of its bottom-right),
    clipped to the frame."""
    x0, y0, x1, y1 = box
    c0, r0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    c1, r1 = min(width, math.ceil(x1)), min(height, math.ceil(y1))
    mask = np.zeros((height, width), dtype=bool)
    if c1 > c0 and r1 > r0:
        mask[r0:r1, c0:c1] = True
    return mask


def region_mask(boxes: Sequence[Sequence[float]], masks: Sequence[np.ndarray | None], height: int, width: int) -> np.ndarray:
    """(H, W) bool union of one frame's entity masks; a box whose mask is None counts as filled."""
    if len(boxes) != len(masks):
        raise ValueError(f"{len(boxes)} boxes but {len(masks)} masks")
    region = np.zeros((height, width), dtype=bool)
    for box, mask in zip(boxes, masks):
        if mask is None:
            region |= box_mask(box, height, width)
            continue
        if mask.shape != (height, width):
            raise ValueError(f"mask of shape {mask.shape} for a {height}x{width} frame")
        region |= mask.astype(bool)
    return region


def encode_mask_png(mask: np.ndarray) -> bytes:
    """(H, W) bool -> single-channel 8-bit PNG, 0 outside and 255 inside."""
    ok, buf = cv2.imencode(".png", np.where(mask, 255, 0).astype(np.uint8))
    if not ok:
        raise ValueError("PNG encoder refused the mask")
    return buf.tobytes()


def decode_mask_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W) uint8 exactly as stored (0/255 for our masks)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 2:
        raise ValueError("not a single-channel PNG")
    return image


@dataclass(frozen=True)
class FrameRegions:
    """What was found in one frame of a turn: boxes and, per box, its mask or None."""

    boxes: Sequence[Sequence[float]]
    masks: Sequence[np.ndarray | None]


@dataclass(frozen=True)
class TurnMasks:
    outcome: Outcome
    src_mask: bytes | None  # PNG, None unless found
    tgt_mask: bytes | None


def fuse_turn(src: FrameRegions, tgt: FrameRegions, height: int, width: int) -> TurnMasks:
    """RoE masks of a turn. Anything found in either frame makes the turn `found`, and both masks
    are written (a frame where nothing was found gets an all-zero mask: an entity that appears
    changes only the target). Nothing found in either frame is `none`, a valid outcome (VINCIE
    trains with RoE maps only some of the time), with no masks."""
    if not len(src.boxes) and not len(tgt.boxes):
        return TurnMasks("none", None, None)
    return TurnMasks(
        "found",
        encode_mask_png(region_mask(src.boxes, src.masks, height, width)),
        encode_mask_png(region_mask(tgt.boxes, tgt.masks, height, width)),
    )
