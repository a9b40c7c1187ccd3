"""Burned-in text (subtitles, captions, watermarks, slides): union area of detected text boxes.

By default detection only (RapidOCR's PP-OCRv4 DB detector), as EasyAnimate and Data-Juicer score
text area with a detector alone: what matters is how much of the frame is text, not what it says.
The detector has false positives (on shared/media it boxes a whole glass bowl: 0.07-0.21 of the frame), so
`recognize=true` keeps only boxes RapidOCR's recogniser reads with confidence >= 0.5 (its own
default), at about twice the cost on frames with text and none on frames without. It also drops
hard-to-read true text (skimage's blurred handwriting).
Frames go in at the working size (640x360 for 16:9) with RapidOCR's `det_limit_type=max`, so the
detector sees them as they are instead of upscaling the short side to 736 (4x the pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.quality.deps import require


class TextOverlayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="measure burned-in text area with RapidOCR (needs rapidocr-onnxruntime) and drop above "
                                            "max_area_ratio")
    max_area_ratio: float = Field(
        0.02, ge=0, le=1,
        description="drop above this text area / frame area: EasyAnimate's default (filter.py min_text_score=0.02, "
        "videos whose text score is above it are removed). On shared/media a single watermark line "
        "(testvideo.mp4's copyright) measures 0.05",
    )
    num_frames: int = Field(
        3, ge=1,
        description="frames OCR'd, evenly spread over the sampled ones (Data-Juicer's frame_sample_num default): "
        "overlays persist across a shot, and the detector is the most expensive CPU check",
    )
    recognize: bool = Field(
        False, description="count only boxes the recogniser reads with confidence >= 0.5 (fewer false positives, slower)"
    )
    aggregate: Literal["mean", "max"] = Field(
        "mean", description="how per-frame ratios combine: mean, as EasyAnimate and Data-Juicer do; max catches brief titles"
    )

    def failure(self, area_ratio: float) -> str | None:
        if area_ratio > self.max_area_ratio:
            return f"text_overlay: text area {area_ratio:.3f} > {self.max_area_ratio:g}"
        return None


@cache
def ocr_engine(threads: int = 1) -> Any:
    """One RapidOCR engine per process (and thread count); 0 threads: ONNX Runtime's default, every core."""
    rapidocr = require("rapidocr_onnxruntime", install="rapidocr-onnxruntime", check="text_overlay")
    count = threads or -1  # RapidOCR's spelling of "default"
    return rapidocr.RapidOCR(det_limit_type="max", intra_op_num_threads=count, inter_op_num_threads=count)


def text_area_ratios(frames_rgb: Sequence[np.ndarray], recognize: bool = False, threads: int = 1) -> list[float]:
    """Per frame: area covered by the union of detected text quadrilaterals / frame area."""
    engine = ocr_engine(threads)
    ratios = []
    for rgb in frames_rgb:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # PaddleOCR models take OpenCV's channel order
        found, _ = engine(bgr, use_det=True, use_cls=False, use_rec=recognize)
        # detection only: a list of quads; with recognition: [quad, text, score] kept when score >= 0.5
        quads = [item[0] if recognize else item for item in found or []]
        mask = np.zeros(rgb.shape[:2], np.uint8)
        if quads:
            cv2.fillPoly(mask, [np.round(np.asarray(q)).astype(np.int32) for q in quads], 1)
        ratios.append(float(mask.mean()))
    return ratios


def pick_evenly(items: Sequence[Any], count: int) -> list[Any]:
    """`count` items spread evenly over `items` (all of them when there are no more)."""
    if len(items) <= count:
        return list(items)
    return [items[int((k + 0.5) * len(items) / count)] for k in range(count)]
