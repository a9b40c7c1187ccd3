"""Nudity: the highest NudeNet (v3, 320n detector) score over explicit exposed-body classes.

Covered body parts, faces, feet, bellies, armpits and bare male chests are not NSFW for our data,
so only the five explicit classes count. NudeNet reports nothing below 0.2, so 0 means "nothing found".
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.quality.deps import require

# Classes of nudenet 3.4's 320n detector (nudenet/nudenet.py `__labels`) that mean explicit nudity.
EXPOSED_CLASSES = (
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_EXPOSED",
    "BUTTOCKS_EXPOSED",
)
NUDENET_INSTALL_NOTE = "the `nsfw` extra pins it: pip install 'curation[nsfw]'"


class NsfwConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="score exposed-body classes with NudeNet (needs nudenet) and drop above max_score")
    max_score: float = Field(
        0.6, ge=0, le=1,
        description="drop when any explicit class scores above this in any frame: the nudity test in PUND's "
        "evaluation code (src/tasks/utils/metrics/nudity_eval.py `if_nude`: any of the same five classes above "
        "0.6). shared/media has no nudity; its highest score is a false 0.51 (MALE_GENITALIA_EXPOSED on a "
        "defocused thumb, issue-195-aspect-ratio.mp4 frame 448), which 0.6 keeps and 0.5 would drop",
    )
    classes: tuple[str, ...] = Field(EXPOSED_CLASSES, description="NudeNet classes that count as NSFW")

    def failure(self, score: float) -> str | None:
        if score > self.max_score:
            return f"nsfw: nudenet score {score:.2f} > {self.max_score:g}"
        return None


@cache
def nude_detector(threads: int = 1) -> Any:
    """One NudeNet detector per process (and thread count).

    NudeDetector takes no session options, so its ONNX session is rebuilt with `threads` intra-op
    threads (0: ONNX Runtime's default, every core).
    """
    nudenet = require("nudenet", install="nudenet", check="nsfw", why=NUDENET_INSTALL_NOTE)
    import onnxruntime

    model_path = str(Path(nudenet.__file__).parent / "320n.onnx")  # NudeDetector's default model, in the wheel
    detector = nudenet.NudeDetector(model_path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    detector.onnx_session = onnxruntime.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    return detector


def nsfw_score(frames_rgb: Sequence[np.ndarray], classes: Sequence[str] = EXPOSED_CLASSES, threads: int = 1) -> float:
    """Max score over frames and detections of `classes`; 0.0 when none is detected."""
    if not frames_rgb:
        return 0.0
    wanted = set(classes)
    # NudeDetector is written for cv2.imread output (BGR); it pads each frame to a square and resizes
    # it to 320. One batched ONNX call for all frames is ~20% cheaper than one call per frame.
    bgr = [cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) for rgb in frames_rgb]
    detections = nude_detector(threads).detect_batch(bgr, batch_size=len(bgr))
    scores = [float(d["score"]) for per_frame in detections for d in per_frame if d["class"] in wanted]
    return max(scores, default=0.0)
