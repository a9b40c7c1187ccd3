"""Black borders (letterbox, pillarbox, windowbox): find the active picture and record its crop.

FFmpeg's cropdetect rule: a row (column) is border while its mean luma stays at or below a black
level, scanning in from each edge, and the active area is the union over frames. So a dark scene
row that lights up in any sampled frame is picture, and a fade from black does not grow the border.
Columns are measured inside the active rows only, so a letterbox does not dilute a pillarbox.

Recording the crop is the point: letterboxed footage is good footage once cropped. The drop is only
for frames that are mostly border (picture-in-picture, windowboxed inserts, near-black frames).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

CropBox = tuple[int, int, int, int]  # (x0, y0, x1, y1) in input pixels, x1/y1 exclusive


class BorderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="find black borders, record the crop box, and crop before the other checks")
    black_level: float = Field(
        9.3, ge=0, le=255,
        description="mean row/column luma (0-255, full range) at or below which a line is border. FFmpeg cropdetect's "
        "default limit is 24 on the raw Y plane, where limited-range video (nearly all video) has black at 16: "
        "(24-16)*255/219 = 9.3 on the full-range luma of our RGB frames",
    )
    min_active_fraction: float = Field(
        0.5, ge=0, le=1,
        description="drop when the active picture is below this fraction of the frame area. No standard aspect-ratio "
        "conversion leaves less than half the frame: 2.76:1 in 16:9 keeps 64%, 2.39:1 in 4:3 keeps 56%, 4:3 in "
        "16:9 keeps 75%; below half it is a windowboxed insert or a nearly black frame. 0 records the crop only",
    )

    def failure(self, active_fraction: float) -> str | None:
        if active_fraction < self.min_active_fraction:
            return f"black_border: active area {active_fraction:.2f} < {self.min_active_fraction:g} of the frame"
        return None


@dataclass(frozen=True)
class Borders:
    crop_box: CropBox | None  # None when every line is border (a black frame)
    active_fraction: float  # crop area / frame area

    @property
    def border_fraction(self) -> float:
        return 1.0 - self.active_fraction


def find_borders(grays: Sequence[np.ndarray], black_level: float) -> Borders:
    """The active picture of same-sized luma frames (full resolution, so the box is exact)."""
    height, width = grays[0].shape
    row_peak = np.max([g.mean(axis=1) for g in grays], axis=0)  # (H,) brightest each row gets
    rows = np.flatnonzero(row_peak > black_level)
    if rows.size == 0:
        return Borders(None, 0.0)
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    col_peak = np.max([g[y0:y1].mean(axis=0) for g in grays], axis=0)  # (W,) within the active rows
    cols = np.flatnonzero(col_peak > black_level)
    if cols.size == 0:
        return Borders(None, 0.0)
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    return Borders((x0, y0, x1, y1), (x1 - x0) * (y1 - y0) / (width * height))
