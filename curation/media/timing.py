"""When each frame of a clip is shown, and which recorded pts belong to it: shared by every stage
that reads a clip's frames, so they agree on timing under variable frame rates."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np

from curation.core.stage import StageError


def clip_span(row: dict[str, Any]) -> tuple[int, int, list[int] | None]:
    """(start, end, frame_pts) of a clip row; frame_pts is None when it is not this span's (then
    `read_frames` decodes sequentially instead of seeking)."""
    start, end = int(row["start_frame"]), int(row["end_frame"])
    frame_pts = row.get("frame_pts")
    if frame_pts is not None and len(frame_pts) != end - start:
        frame_pts = None
    return start, end, frame_pts


def clip_times(start: int, end: int, fps: float | None, frame_pts: list[int] | None, time_base: str | None) -> np.ndarray:
    """Presentation time (s) of every frame of the clip: from the recorded pts when there are any
    (exact under VFR), else index / fps."""
    if frame_pts is not None and time_base:
        return np.asarray(frame_pts, dtype=np.float64) * float(Fraction(time_base))
    if not fps:
        raise StageError("no_fps: clip row has neither frame_pts with time_base nor fps")
    return np.arange(start, end, dtype=np.float64) / float(fps)
