"""Working copies of the frames every check shares.

Thresholds that depend on scale (blur, motion, text area) are only meaningful at a fixed working
size, so frames are brought to one: short side WORK_SHORT_SIDE for the appearance checks, half
that for the motion checks. 360 is 640x360 for 16:9 video, the size RapidOCR's detector and
NudeNet's 320-px input need no more than.
"""

from __future__ import annotations

import cv2
import numpy as np

WORK_SHORT_SIDE = 360  # luma, blur, text overlay, NSFW
WORK_MAX_LONG_SIDE = 960  # panoramas: cap the long side (RapidOCR's detector keeps frames below 960 px as they are)
MOTION_SHORT_SIDE = WORK_SHORT_SIDE // 2  # optical flow and homographies: 320x180 for 16:9


def check_frames(frames: list[np.ndarray]) -> tuple[int, int]:
    """(height, width) shared by all frames; fails early on anything but equal-sized RGB uint8."""
    if not frames:
        raise ValueError("no frames to assess")
    height, width = frames[0].shape[:2]
    for frame in frames:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames must be HxWx3 uint8 RGB, got {frame.shape} {frame.dtype}")
        if frame.shape[:2] != (height, width):
            raise ValueError(f"frames differ in size: {frame.shape[:2]} vs {(height, width)}")
    return height, width


def work_size(width: int, height: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """(w, h) with the short side at `short_side`, or smaller so the long side stays <= max_long_side."""
    scale = min(short_side / min(width, height), max_long_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (w, h): area averaging when shrinking (no aliasing), bilinear when enlarging."""
    if (image.shape[1], image.shape[0]) == size:
        return image
    shrinking = size[0] < image.shape[1]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma, 0-255 (the same weights scene_split's black filter uses)."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
