"""Camera motion class from homographies between consecutive sampled frames.

A homography models what a camera rotating about its centre (pan, tilt) or zooming does to the
picture, so it is fitted to tracked corners (Shi-Tomasi + pyramidal Lucas-Kanade, seeded with the
phase-correlation shift so long gaps and fast pans still track; forward-backward checked; RANSAC),
and summarised by what it does to the frame: the centre's shift and the change of the frame's area.

Sign conventions (image coordinates, y down). The numbers describe how the *content* moves:
`shift_x` > 0 means content moves right, which is the camera panning LEFT; `shift_y` > 0 means
content moves down, the camera tilting UP; `zoom` > 0 means content grows, zooming IN. Labels name
what the *camera* does, as VINCIE's do. A homography cannot tell a zoom from a dolly, nor a pan from
a truck (sideways travel), so zoom-in maps to VINCIE's dolly-in, zoom-out to dolly-out, static to
none. VINCIE's `orbit` (travel around a subject: parallax, not a homography) is never produced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.labels.camera import CameraLabel

RawCameraLabel = Literal["static", "pan-left", "pan-right", "tilt-up", "tilt-down", "zoom-in", "zoom-out", "undetermined"]
TO_VINCIE: dict[str, CameraLabel | None] = {
    "static": "none",
    "pan-left": "pan-left",
    "pan-right": "pan-right",
    "tilt-up": "tilt-up",
    "tilt-down": "tilt-down",
    "zoom-in": "dolly-in",
    "zoom-out": "dolly-out",
    "undetermined": None,  # unknown, which is not the same as "none"
}

MIN_INLIERS = 12  # fewer RANSAC inliers and the pair is not trusted (flat frames, a cut, a whip pan)
FB_MAX_ERROR_PX = 1.0  # forward-backward tracking error above which a corner is dropped
RANSAC_REPROJ_PX = 1.5  # at the 180-px short side


class CameraMotionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="classify the camera's motion from a homography between frames (never drops; fills "
                                            "camera_motion)")
    static_rate: float = Field(
        0.02, ge=0,
        description="the camera is static when its dominant motion moves the frame edge by less than this fraction "
        "of the frame per second (pan: shift/width, tilt: shift/height, zoom: (scale-1)/2)",
    )


@dataclass(frozen=True)
class CameraMotion:
    label: RawCameraLabel
    shift_x: float  # content shift, fraction of the width per second (+: content moves right = camera pans left)
    shift_y: float  # content shift, fraction of the height per second (+: content moves down = camera tilts up)
    zoom: float  # log scale change per second (+: content grows = zoom in)
    pairs: int  # consecutive frame pairs with a trusted homography

    @property
    def vincie(self) -> CameraLabel | None:
        return TO_VINCIE[self.label]


def pair_homography(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """3x3 homography taking points of luma frame `a` to `b`, or None when it cannot be trusted."""
    corners = cv2.goodFeaturesToTrack(a, maxCorners=300, qualityLevel=0.01, minDistance=5)
    if corners is None or len(corners) < MIN_INLIERS:
        return None
    (dx, dy), _ = cv2.phaseCorrelate(a.astype(np.float32), b.astype(np.float32))
    guess = corners + np.float32([dx, dy])
    lk = dict(winSize=(21, 21), maxLevel=3, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    tracked, ok, _ = cv2.calcOpticalFlowPyrLK(a, b, corners, guess, flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **lk)
    back, ok_back, _ = cv2.calcOpticalFlowPyrLK(b, a, tracked, corners.copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **lk)
    good = (ok[:, 0] == 1) & (ok_back[:, 0] == 1) & (np.linalg.norm(back - corners, axis=2)[:, 0] < FB_MAX_ERROR_PX)
    if good.sum() < MIN_INLIERS:
        return None
    H, inliers = cv2.findHomography(corners[good], tracked[good], cv2.RANSAC, RANSAC_REPROJ_PX)
    if H is None or inliers.sum() < MIN_INLIERS or abs(H[2, 2]) < 1e-9:
        return None
    return H / H[2, 2]


def homography_motion(H: np.ndarray, width: int, height: int) -> tuple[float, float, float]:
    """(shift_x / width, shift_y / height, log scale): where the frame centre goes, and how its area changes."""
    frame = np.float32([[0, 0], [width, 0], [width, height], [0, height], [width / 2, height / 2]])[:, None]
    moved = cv2.perspectiveTransform(frame, H)[:, 0]  # (5, 2)
    area = cv2.contourArea(moved[:4])
    if area <= 0:  # folded over: not a camera motion
        return math.nan, math.nan, math.nan
    centre = moved[4] - (width / 2, height / 2)
    return float(centre[0] / width), float(centre[1] / height), 0.5 * math.log(area / (width * height))


def classify(shift_x: float, shift_y: float, zoom: float, static_rate: float) -> RawCameraLabel:
    """Label of the dominant motion, compared as how fast it moves the frame edge."""
    speeds = {
        ("pan-left" if shift_x > 0 else "pan-right"): abs(shift_x),
        ("tilt-up" if shift_y > 0 else "tilt-down"): abs(shift_y),
        ("zoom-in" if zoom > 0 else "zoom-out"): abs(math.expm1(zoom)) / 2,  # edge moves (s-1)/2 of the frame
    }
    label, speed = max(speeds.items(), key=lambda kv: kv[1])
    return label if speed >= static_rate else "static"  # type: ignore[return-value]


def camera_motion(grays: Sequence[np.ndarray], times_s: Sequence[float], static_rate: float) -> CameraMotion | None:
    """Net camera motion over the sampled frames (per second); None without two timed frames.

    Rates are the summed per-pair motion over the summed time of the trusted pairs, so a pan that
    comes back, or handheld shake, nets out as static.
    """
    if len(grays) < 2:
        return None
    height, width = grays[0].shape
    total = np.zeros(3)
    seconds, pairs = 0.0, 0
    for a, b, ta, tb in zip(grays, grays[1:], times_s, times_s[1:]):
        if tb <= ta:
            continue
        H = pair_homography(a, b)
        if H is None:
            continue
        motion = homography_motion(H, width, height)
        if not all(map(math.isfinite, motion)):
            continue
        total += motion
        seconds += tb - ta
        pairs += 1
    if pairs == 0:
        return CameraMotion("undetermined", math.nan, math.nan, math.nan, 0)
    shift_x, shift_y, zoom = (total / seconds).tolist()
    return CameraMotion(classify(shift_x, shift_y, zoom, static_rate), shift_x, shift_y, zoom, pairs)
