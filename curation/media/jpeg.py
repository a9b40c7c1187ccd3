"""JPEG encoding of decoded RGB frames: one place, so every stage and the shard writer agree."""

from __future__ import annotations

import cv2
import numpy as np

from curation.stage import StageError


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """(H, W, 3) RGB uint8 -> JPEG bytes. Raises StageError(encode_failed) if OpenCV refuses."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise StageError("encode_failed: JPEG encoder refused the frame")
    return buf.tobytes()
