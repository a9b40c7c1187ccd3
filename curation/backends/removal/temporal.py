"""The `temporal` remover: fill the object's hole in each frame with the background that other
frames of the clip show at the same place. Offline, no model.

An object that moves, or a camera that moves past it, uncovers the background it hides in one
frame somewhere else in the clip. So for frame t:

1. Every mask is dilated by `dilate_px` first, so the object's soft edge and the fringe a
   segmenter misses (a halo, a contact shadow) are neither kept in frame t nor copied from another.
2. The camera path: consecutive frames are related by a homography fitted with RANSAC to ORB
   matches found outside the holes (the moving object would otherwise pull the fit), refined by
   ECC image alignment (`cv2.findTransformECC`, again outside the holes), then chained. ORB's
   keypoints sit on a coarse grid, and their few-pixel errors add up along the chain (measured on
   the moving-camera test clip: up to 10 px of corner drift over 24 frames from ORB alone, under
   1 px refined). A frame within `STATIC_PX` of the previous frame's place takes exactly that
   place, so a still camera's frames are copied pixel for pixel, never resampled. A link that
   cannot be fitted (a cut, a blur) splits the clip: frames across it are never used for one
   another.
3. Other frames are visited nearest in time first (t-1, t+1, t-2, ...), up to `max_offset` away,
   each warped into frame t's view (only over the part of the hole still unfilled). Each hole
   pixel takes the first `samples` frames that saw it outside their own hole, and becomes their
   per-channel median: one misaligned or mis-masked frame is outvoted, and sensor noise averages.
4. Pixels no frame ever saw (the object never moved off them) are inpainted (OpenCV Telea), a
   smooth fill from the hole's border.

The work is numpy over the hole's bounding box, one frame against one other at a time; its cost
(bench/erase_temporal.py) grows with the hole's area and the frames needed to cover it.
"""

from __future__ import annotations

import cv2
import numpy as np

from curation.backends.removal.base import ObjectRemover, check_clip

# A frame whose corners lie less than this many pixels from the previous frame's place is taken
# as not having moved. Ours: sensor noise and encoder jitter give sub-pixel fits on a still
# camera, and resampling by such a shift would only blur the copied background.
STATIC_PX = 0.5
# Fewest ORB matches and RANSAC inliers to trust a homography between two frames. Ours: a
# homography has 8 degrees of freedom (4 point pairs); 12 inliers leave some over for RANSAC to
# reject outliers with, and below that a fit on a textureless frame is as likely wrong as right.
MIN_MATCHES = 12
MIN_INLIERS = 12
# RANSAC reprojection tolerance, in pixels of the image features are found on. Ours: OpenCV's
# usual 3 px admits ORB's keypoint jitter and rejects matches on anything moving on its own.
RANSAC_PX = 3.0
# Features are found, and ECC refines, on a copy whose longer side is at most this. Ours: ECC's
# cost grows with the pixels it compares, and its sub-pixel fit at 640 px is still about a pixel
# of a full-HD frame after scaling back (bench/erase_temporal.py times it).
FEATURE_MAX_SIDE = 640
# ECC refinement: at most this many iterations, stopping once the warp changes by less than
# ECC_EPS. Ours: the ORB fit starts it within a few pixels, where it converges in tens of steps.
ECC_ITERATIONS = 30
ECC_EPS = 1e-4
# ECC compares images whose longer side is at most this. Ours: its cost is per pixel compared
# (about 50 ms a link at 768x432 here, a sixth of that at 320 px), and its fit stays sub-pixel at
# this size, about a pixel at 720p after scaling back.
ECC_MAX_SIDE = 320
# Least ECC correlation (zero-mean, normalised) between two aligned consecutive frames outside
# the holes for their link to count. Ours: frames of one shot align to well above 0.9 even with
# other things moving; across a cut, or from a wrong ORB fit, the correlation is far lower.
MIN_CORRELATION = 0.8
# Whether a fitted link beats standing still: the share of pixels (outside the holes, at ECC's
# size) whose grey level differs by at most AGREE_LEVELS between the aligned frames, under the
# fit and under the identity. The fit must agree on at least STILL_MARGIN more of them. Ours:
# 6 levels is three times the sensor-like noise (sigma 2) the tests add; the margin keeps a
# still camera still when the features lie on things moving on their own (cars crossing a
# parking lot pull the fit along; standing still then explains more of the frame).
AGREE_LEVELS = 6
STILL_MARGIN = 0.01


class TemporalRemover(ObjectRemover):
    name = "temporal"

    def __init__(self, *, dilate_px: int, samples: int, max_offset: int | None, align: bool, features: int, inpaint_radius: int):
        self.dilate_px = dilate_px
        self.samples = samples
        self.max_offset = max_offset
        self.align = align
        self.features = features
        self.inpaint_radius = inpaint_radius

    def remove(self, frames: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        check_clip(frames, masks)
        holes = dilate_masks(masks, self.dilate_px)  # (T, H, W) bool
        if self.align:
            to_first, segment = camera_path(frames, holes, self.features)
        else:
            to_first, segment = np.broadcast_to(np.eye(3), (len(frames), 3, 3)), np.zeros(len(frames), int)
        return [self._fill(t, frames, holes, to_first, segment) for t in range(len(frames))]

    def _fill(self, t: int, frames: list[np.ndarray], holes: np.ndarray, to_first: np.ndarray, segment: np.ndarray) -> np.ndarray:
        hole = holes[t]
        box = bounding_box(hole)
        if box is None:
            return frames[t]
        y0, y1, x0, x1 = box
        hole_roi = hole[y0:y1, x0:x1]  # (h, w)
        height, width = hole_roi.shape
        stack = np.zeros((self.samples, height, width, 3), np.uint8)  # the first `samples` sightings of each pixel
        count = np.zeros((height, width), np.int32)
        need = hole_roi.copy()
        for s in candidates(t, len(frames), self.max_offset):
            if segment[s] != segment[t]:
                continue
            sub = bounding_box(need)
            if sub is None:
                break
            sy0, sy1, sx0, sx1 = sub
            same_view = np.array_equal(to_first[s], to_first[t])  # still camera: no resampling
            s_to_t = np.eye(3) if same_view else np.linalg.solve(to_first[t], to_first[s])
            pixels, seen = view_from(frames[s], ~holes[s], s_to_t, y0 + sy0, y0 + sy1, x0 + sx0, x0 + sx1)
            take = need[sy0:sy1, sx0:sx1] & seen
            iy, ix = np.nonzero(take)
            if not len(iy):
                continue
            iy, ix = iy + sy0, ix + sx0
            stack[count[iy, ix], iy, ix] = pixels[iy - sy0, ix - sx0]
            count[iy, ix] += 1
            need[iy, ix] = count[iy, ix] < self.samples
        out = frames[t].copy()
        roi = out[y0:y1, x0:x1]
        for c in range(1, self.samples + 1):
            sel = hole_roi & (count == c)
            if sel.any():
                roi[sel] = np.median(stack[:c, sel], axis=0).round().astype(np.uint8)  # (n, 3)
        unseen = hole_roi & (count == 0)
        if unseen.any():
            inpaint_unseen(out, y0, x0, unseen, self.inpaint_radius)
        return out


# ---- helpers ----------------------------------------------------------------------------------


def dilate_masks(masks: list[np.ndarray], dilate_px: int) -> np.ndarray:
    """(T, H, W) bool: each mask grown by a disc of radius `dilate_px`."""
    stacked = np.stack([np.asarray(m, bool) for m in masks])
    if dilate_px == 0:
        return stacked
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
    return np.stack([cv2.dilate(m.view(np.uint8), kernel) > 0 for m in stacked])


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1), ends exclusive, of the True pixels; None when there are none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def candidates(t: int, n: int, max_offset: int | None) -> list[int]:
    """The other frames, nearest in time first: t-1, t+1, t-2, t+2, ... up to `max_offset` away."""
    reach = n - 1 if max_offset is None else min(max_offset, n - 1)
    order = []
    for offset in range(1, reach + 1):
        order.extend(s for s in (t - offset, t + offset) if 0 <= s < n)
    return order


def view_from(frame: np.ndarray, seen: np.ndarray, s_to_t: np.ndarray, y0: int, y1: int, x0: int, x1: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Frame s's pixels and its `seen` mask as frame t's camera sees them over the box
    [y0:y1, x0:x1] of frame t; `s_to_t` maps frame s's coordinates to frame t's."""
    if np.array_equal(s_to_t, np.eye(3)):
        return frame[y0:y1, x0:x1], seen[y0:y1, x0:x1]
    shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
    matrix, size = shift @ s_to_t, (x1 - x0, y1 - y0)
    pixels = cv2.warpPerspective(frame, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # Outside frame s the border value 0 says "not seen"; nearest keeps the hole's edge where it was.
    inside = cv2.warpPerspective(seen.view(np.uint8), matrix, size, flags=cv2.INTER_NEAREST, borderValue=0)
    return pixels, inside > 0


def camera_path(frames: list[np.ndarray], holes: np.ndarray, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3, 3) homographies from each frame's coordinates to frame 0's, and (T,) segment ids:
    frames with different ids could not be related (a link failed between them).

    A frame whose chained homography lies within `STATIC_PX` of the previous frame's gets exactly
    the previous frame's: a still camera's frames are then copied, not resampled, while a slow pan
    still accumulates (each frame is within STATIC_PX of its true place; a per-link cut-off
    would drop the pan's sub-threshold steps and drift)."""
    height, width = frames[0].shape[:2]
    scale = min(1.0, FEATURE_MAX_SIDE / max(height, width))
    ecc_scale = min(1.0, ECC_MAX_SIDE / max(height, width))
    small, tiny = _scaled(width, height, scale), _scaled(width, height, ecc_scale)
    to_small, to_tiny = np.diag([scale, scale, 1.0]), np.diag([ecc_scale, ecc_scale, 1.0])
    orb = cv2.ORB_create(n_features)
    chained, to_first, segment = np.eye(3), [np.eye(3)], [0]
    previous = None
    for frame, hole in zip(frames, holes):
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        where = np.where(hole, 0, 255).astype(np.uint8)
        gray_small = cv2.resize(gray, small, interpolation=cv2.INTER_AREA) if scale < 1.0 else gray
        where_small = cv2.resize(where, small, interpolation=cv2.INTER_NEAREST) if scale < 1.0 else where
        gray_tiny = (cv2.resize(gray, tiny, interpolation=cv2.INTER_AREA) if ecc_scale < 1.0 else gray).astype(np.float32)
        where_tiny = cv2.resize(where, tiny, interpolation=cv2.INTER_NEAREST) if ecc_scale < 1.0 else where
        keypoints, descriptors = orb.detectAndCompute(gray_small, where_small)
        if previous is not None:
            link = frame_link(previous[:2], (keypoints, descriptors))
            if link is not None:
                link = np.linalg.solve(to_small, link @ to_small)  # full-resolution pixels
                link = refine_link(previous[2], gray_tiny, previous[3] & where_tiny, to_tiny @ link @ np.linalg.inv(to_tiny))
            if link is None:
                chained = np.eye(3)
                to_first.append(np.eye(3))
                segment.append(segment[-1] + 1)
            else:
                chained = chained @ np.linalg.solve(to_tiny, link @ to_tiny)
                still = corner_motion(np.linalg.solve(to_first[-1], chained), (width, height)) < STATIC_PX
                to_first.append(to_first[-1] if still else chained)
                segment.append(segment[-1])
        previous = keypoints, descriptors, gray_tiny, where_tiny
    return np.stack(to_first), np.asarray(segment)


def _scaled(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


def frame_link(previous: tuple, current: tuple) -> np.ndarray | None:
    """The homography taking the current frame's coordinates to the previous frame's (in the
    pixels features were found in), or None when the two cannot be matched."""
    (kp_prev, des_prev), (kp_cur, des_cur) = previous, current
    if des_prev is None or des_cur is None or len(kp_prev) < MIN_MATCHES or len(kp_cur) < MIN_MATCHES:
        return None
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(des_cur, des_prev)
    if len(matches) < MIN_MATCHES:
        return None
    src = np.float32([kp_cur[m.queryIdx].pt for m in matches])
    dst = np.float32([kp_prev[m.trainIdx].pt for m in matches])
    homography, inliers = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_PX)
    if homography is None or int(inliers.sum()) < MIN_INLIERS:
        return None
    return homography


def refine_link(previous: np.ndarray, current: np.ndarray, where: np.ndarray, link: np.ndarray) -> np.ndarray | None:
    """`link` (current -> previous coordinates) refined by ECC on the two grey images, comparing
    only the `where` pixels of the previous one; None when ECC does not converge or the aligned
    images still disagree (a cut, or ORB matched the wrong things)."""
    warp = np.linalg.inv(link)  # ECC's warp maps the template's (previous) coordinates to the input's
    warp = (warp / warp[2, 2]).astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, ECC_EPS)
    try:
        correlation, warp = cv2.findTransformECC(previous, current, warp, cv2.MOTION_HOMOGRAPHY, criteria, where, 3)
    except cv2.error:  # no convergence (too little texture where it may look)
        return None
    if correlation < MIN_CORRELATION:
        return None
    refined = np.linalg.inv(warp.astype(np.float64))
    if agreement(previous, current, where, np.eye(3)) >= agreement(previous, current, where, refined) - STILL_MARGIN:
        return np.eye(3)
    return refined


def agreement(previous: np.ndarray, current: np.ndarray, where: np.ndarray, link: np.ndarray) -> float:
    """Share of the `where` pixels of `previous` that the current frame, warped by `link` into
    the previous frame's view, matches within AGREE_LEVELS grey levels."""
    size = (previous.shape[1], previous.shape[0])
    warped = cv2.warpPerspective(current, link, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=-1)
    inside = (where > 0) & (warped >= 0)
    if not inside.any():
        return 0.0
    close = np.abs(warped[inside] - previous[inside]) <= AGREE_LEVELS
    return float(close.sum()) / float((where > 0).sum())


def corner_motion(homography: np.ndarray, size: tuple[int, int]) -> float:
    """How far, in pixels, the homography moves the corners of a `size` = (w, h) image, at most."""
    width, height = size
    corners = np.float32([[0, 0], [width, 0], [0, height], [width, height]]).reshape(-1, 1, 2)
    return float(np.abs(cv2.perspectiveTransform(corners, homography) - corners).max())


def inpaint_unseen(frame: np.ndarray, y0: int, x0: int, unseen: np.ndarray, radius: int) -> None:
    """Telea-inpaint, in place, the pixels of `frame` under `unseen` (a mask over the box whose
    top-left corner is (y0, x0)), reading only a margin around that box."""
    height, width = frame.shape[:2]
    margin = 2 * radius + 2
    ty0, tx0 = max(0, y0 - margin), max(0, x0 - margin)
    ty1, tx1 = min(height, y0 + unseen.shape[0] + margin), min(width, x0 + unseen.shape[1] + margin)
    hole = np.zeros((ty1 - ty0, tx1 - tx0), np.uint8)
    hole[y0 - ty0:y0 - ty0 + unseen.shape[0], x0 - tx0:x0 - tx0 + unseen.shape[1]] = unseen
    frame[ty0:ty1, tx0:tx1] = cv2.inpaint(np.ascontiguousarray(frame[ty0:ty1, tx0:tx1]), hole, radius, cv2.INPAINT_TELEA)
