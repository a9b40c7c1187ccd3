"""Burned-in text (subtitles, captions, watermarks, slides): union area of detected text boxes.

RapidOCR's detector boxes the text lines and the score is how much of the frame those boxes cover,
as EasyAnimate and Data-Juicer score text area: what matters is how much of the frame is text, not
what it says. The models are the ones the `rapidocr` 3.10 wheel carries (PP-OCRv6 small detector
and recogniser; nothing is downloaded at run time), named in `ocr_engine` so a change of the
library's defaults cannot swap them silently.

By default (`recognize=true`) a box counts only when RapidOCR's recogniser reads it with confidence
>= 0.5 (its own default). Ours, since the move from rapidocr-onnxruntime's PP-OCRv4 detector: the
PP-OCRv6 detector boxes whole rounded objects as text (skimage's coffee cup: 0.85 of the frame,
chelsea's cat 0.21, the glass bowl of issue-195-aspect-ratio.mp4 up to 0.73), and the recogniser
reads nothing in most of them (0.0), while true text keeps its area (testvideo.mp4's copyright line
0.06, skimage's handwriting 0.33). Recognition runs only on the boxes found, so frames without any
cost nothing extra. `recognize=false` is the detector alone. `python bench/headless_opencv.py`
prints both against the old engine's numbers.
Frames go in at the working size (640x360 for 16:9) with the detector's `limit_type=max`, so the
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

    enabled: bool = Field(True, description="measure burned-in text area with RapidOCR (needs rapidocr, curation[quality]) and drop above "
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
        True, description="count only boxes the recogniser reads with confidence >= 0.5: the PP-OCRv6 detector alone boxes "
        "rounded objects as text (a coffee cup at 0.85 of the frame); false: the detector alone (faster on such frames)"
    )
    aggregate: Literal["mean", "max"] = Field(
        "mean", description="how per-frame ratios combine: mean, as EasyAnimate and Data-Juicer do; max catches brief titles"
    )

    def failure(self, area_ratio: float) -> str | None:
        if area_ratio > self.max_area_ratio:
            return f"text_overlay: text area {area_ratio:.3f} > {self.max_area_ratio:g}"
        return None


# Our choices for RapidOCR 3.x (everything else is the library's default):
# - the models the wheel ships (PP-OCRv6 small, language "ch", which reads Latin script too), named
#   rather than left to the library's defaults, which change between releases;
# - the detector's resize limit on the long side (`max`, 736 px, the old engine's setting): frames
#   at the working size pass as they are, larger ones shrink instead of the short side growing to 736;
# - errors only in the log: the library logs every model load at info level, once per worker, and
#   warns "The text detection result is empty" for every frame without text, which is most frames.
OCR_VERSION, MODEL_TYPE, LANG = "PP-OCRv6", "small", "ch"
DET_LIMIT_TYPE, DET_LIMIT_SIDE = "max", 736
MIN_TEXT_SCORE = 0.5  # recognize=true: a box counts when the recogniser reads it with this confidence (RapidOCR's default)
# Ours, recognize=true: ... and reads at least this many characters in it. The PP-OCRv6 recogniser
# reads a single "O" (confidence 0.6) in a box over half a frame of a cat's head on a coffee table;
# burned-in text (subtitles, captions, watermarks) is a line of several characters.
MIN_TEXT_CHARS = 2


@cache
def ocr_engine(threads: int = 1) -> Any:
    """One RapidOCR engine per process (and thread count); 0 threads: ONNX Runtime's default, every core."""
    rapidocr = require("rapidocr", install="rapidocr", check="text_overlay",
                       why="the `quality` extra pins it: pip install 'curation[quality]'")
    count = threads or -1  # RapidOCR's spelling of "default"
    version, model = rapidocr.OCRVersion(OCR_VERSION), rapidocr.ModelType(MODEL_TYPE)  # it takes these as enums
    params = {
        "Det.ocr_version": version, "Det.model_type": model, "Det.lang_type": rapidocr.LangDet(LANG),
        "Rec.ocr_version": version, "Rec.model_type": model, "Rec.lang_type": rapidocr.LangRec(LANG),
        "Det.limit_type": DET_LIMIT_TYPE, "Det.limit_side_len": DET_LIMIT_SIDE,
        "Global.text_score": MIN_TEXT_SCORE, "Global.log_level": "error",
        "EngineConfig.onnxruntime.intra_op_num_threads": count, "EngineConfig.onnxruntime.inter_op_num_threads": count,
    }
    return rapidocr.RapidOCR(params=params)


def text_boxes(engine: Any, bgr: np.ndarray, recognize: bool) -> list[np.ndarray]:
    """The text quadrilaterals (4x2 pixel corners) RapidOCR finds in `bgr`; read ones only with `recognize`."""
    found = engine(bgr, use_det=True, use_cls=False, use_rec=recognize)
    # Detection alone gives a TextDetOutput, with recognition a RapidOCROutput whose boxes are already
    # filtered by Global.text_score; nothing found is an output whose `boxes` is None or empty.
    boxes = getattr(found, "boxes", None)
    if boxes is None:
        return []
    if recognize:  # a line of text reads as more than one character; a round object as "O" or "0"
        texts = getattr(found, "txts", None) or [""] * len(boxes)
        boxes = [b for b, text in zip(boxes, texts) if len(text.strip()) >= MIN_TEXT_CHARS]
    return [np.asarray(b, np.float64).reshape(4, 2) for b in boxes]


def text_area_ratios(frames_rgb: Sequence[np.ndarray], recognize: bool = False, threads: int = 1) -> list[float]:
    """Per frame: area covered by the union of detected text quadrilaterals / frame area."""
    engine = ocr_engine(threads)
    ratios = []
    for rgb in frames_rgb:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # PaddleOCR models take OpenCV's channel order
        quads = text_boxes(engine, bgr, recognize)
        mask = np.zeros(rgb.shape[:2], np.uint8)
        if quads:
            cv2.fillPoly(mask, [np.round(q).astype(np.int32) for q in quads], 1)
        ratios.append(float(mask.mean()))
    return ratios


def pick_evenly(items: Sequence[Any], count: int) -> list[Any]:
    """`count` items spread evenly over `items` (all of them when there are no more)."""
    if len(items) <= count:
        return list(items)
    return [items[int((k + 0.5) * len(items) / count)] for k in range(count)]
