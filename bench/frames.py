"""Real frames for benchmarks: evenly spaced frames of every video under a directory (or of a list of videos)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm"}


def spread_frames(videos: Path | list[Path], per_video: int) -> Iterator[np.ndarray]:
    """`per_video` frames (BGR uint8) from the middle of equal parts of each video, in path order."""
    files = videos.rglob("*") if isinstance(videos, Path) else videos
    for path in sorted(p for p in files if p.suffix.lower() in VIDEO_SUFFIXES):
        cap = cv2.VideoCapture(str(path))
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        for k in range(per_video):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int((k + 0.5) * count / per_video))
            ok, bgr = cap.read()
            if ok:
                yield bgr
        cap.release()
