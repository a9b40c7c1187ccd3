"""Stored image bytes <-> RGB frames: JPEG encoding and decoding of any stored image (JPEG/PNG)
in one place, so every stage and the shard writer agree."""

from __future__ import annotations

import cv2
import numpy as np

from curation.core.stage import StageError


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """(H, W, 3) RGB uint8 -> JPEG bytes. Raises StageError(encode_failed) if OpenCV refuses."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise StageError("encode_failed: JPEG encoder refused the frame")
    return buf.tobytes()


def decode_image(data: bytes, what: str = "stored image") -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ...) -> (H, W, 3) RGB uint8. Raises StageError(decode_failed)
    naming `what` (e.g. "frame 2", "tgt_frame") when the bytes are not a readable image."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise StageError(f"decode_failed: {what} is not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
