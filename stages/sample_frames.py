"""Sample frames: turn each clip into a session of K frames (VINCIE hybrid sampling), as JPEG bytes.

Count sampling takes 2-6 frames spread over the clip (VINCIE §3.1); interval sampling takes one
frame every `interval_s` (3 s) up to `interval_max_frames` (20: VINCIE §4.1's longest sessions),
so a whole shot (`scene_split.max_clip_s: null`) gives a long session. Frames are cut to the
black-border crop `filter_quality` found, and each turn carries the clip's homography camera label
until `annotate` replaces it with the VLM's.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
from pydantic import BaseModel, Field, model_validator

from curation.core.schema import Jpeg
from curation.core.stage import Stage, StageError
from curation.media.decode import read_frames
from curation.media.jpeg import encode_jpeg
from curation.media.timing import clip_span, clip_times
from curation.prompts.transition import Turn

MIN_SESSION_FRAMES = 2  # one transition needs two frames


class SampleFramesColumns(BaseModel):
    frame_indices: list[int] | None = Field(None, description="decode-order indices of the sampled frames in the source video")
    frame_times_s: list[float] | None = Field(None, description="presentation time of each sampled frame, seconds")
    frames: list[Jpeg] | None = Field(None, description="the sampled frames as JPEG bytes, upright, display aspect "
                                                        "(stored once; manifests hold references)")
    frame_width: int | None = Field(None, description="width of the stored JPEG frames")
    frame_height: int | None = Field(None, description="height of the stored JPEG frames")
    sampling: str | None = Field(None, description="strategy that picked the frames: interval | count")
    frame_crop_box: list[int] | None = Field(None, description="black-border crop cut from every frame before storing: x0, y0, x1, "
                                                               "y1 (exclusive) in decoded pixels; null: frames are uncropped")
    turns: list[Turn] | None = Field(None, description="one entry per adjacent frame pair; before `annotate` only the camera label, "
                                                       "the clip's homography class from filter_quality (camera_raw 'homography: ...')")


class SampleFrames(Stage):
    """Sample a session of frames per clip (equal-interval up to 20 or fixed-count 2-6, VINCIE) as JPEGs."""

    name: ClassVar[str] = "sample_frames"
    version: ClassVar[str] = "2"
    Columns: ClassVar[type[BaseModel]] = SampleFramesColumns
    renamed_keys: ClassVar[dict[str, str]] = {  # version 1's one cap, split by strategy
        "min_frames": "count_min_frames (count sampling, VINCIE 2)",
        "max_frames": "count_max_frames (count sampling, VINCIE 6) and interval_max_frames (interval sampling, up to 20)",
    }

    mode: Literal["interval", "count", "hybrid"] = Field(description="interval: every interval_s; count: n frames spread evenly; "
                                                                     "hybrid: either, per clip")
    interval_s: float = Field(gt=0, description="seconds between frames in interval sampling")
    interval_prob: float = Field(ge=0, le=1, description="hybrid mode: probability that a clip uses interval sampling")
    count_min_frames: int = Field(ge=MIN_SESSION_FRAMES, description="count sampling: fewest frames (n is uniform in "
                                                                     "[count_min_frames, count_max_frames]; VINCIE: 2)")
    count_max_frames: int = Field(ge=MIN_SESSION_FRAMES, description="count sampling: most frames (VINCIE: 6)")
    interval_max_frames: int = Field(ge=MIN_SESSION_FRAMES, description="interval sampling: most frames, centred in the clip "
                                                                        "(VINCIE's sessions reach 20)")
    apply_crop: bool = Field(description="cut each frame to the clip's `crop_box` (filter_quality's black-border crop) when present")
    jpeg_quality: int = Field(ge=1, le=100, description="JPEG quality of the stored frames")
    max_side: int | None = Field(gt=0, description="shrink frames so the longer side is at most this (aspect kept); null keeps the "
                                                   "display size")
    seed: int = Field(description="mixed with each clip's sample_id, so choices are random across clips but reproducible")

    @model_validator(mode="after")
    def _check_range(self) -> SampleFrames:
        if self.count_min_frames > self.count_max_frames:
            raise ValueError(f"count_min_frames={self.count_min_frames} > count_max_frames={self.count_max_frames}")
        return self

    def process(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        start, end, frame_pts = clip_span(row)
        times = clip_times(start, end, row.get("fps"), frame_pts, row.get("time_base"))
        sampling, offsets = self.choose(times, self.rng(row["sample_id"]))
        if len(offsets) < MIN_SESSION_FRAMES:
            duration = times[-1] - times[0] if len(times) else 0.0
            reason = f"too_short: {end - start} frames ({duration:.2f} s) give {len(offsets)} by {sampling} sampling"
            return [self.error_row(row, reason, status="dropped")]
        indices = [start + k for k in offsets]
        decoded = read_frames(row["source_uri"], indices, frame_pts, first_index=start)
        crop = self.crop_box(row, decoded[0].shape)
        if crop is not None:
            x0, y0, x1, y1 = crop
            decoded = [im[y0:y1, x0:x1] for im in decoded]
        images = [self.shrink(im) for im in decoded]
        return [
            self.child_row(
                row,
                kind="session",
                span=tuple(indices),
                frame_indices=indices,
                frame_times_s=[float(times[k]) for k in offsets],
                frames=[encode_jpeg(im, self.jpeg_quality) for im in images],
                frame_width=images[0].shape[1],
                frame_height=images[0].shape[0],
                sampling=sampling,
                frame_crop_box=list(crop) if crop is not None else None,
                turns=camera_turns(row, len(indices)),
            )
        ]

    def crop_box(self, row: dict[str, Any], shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
        """The clip's black-border crop (filter_quality measured it on frames decoded the same
        way), or None when there is none or cropping is off."""
        box = row.get("crop_box")
        if not self.apply_crop or box is None:
            return None
        x0, y0, x1, y1 = (int(v) for v in box)
        height, width = shape[:2]
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise StageError(f"bad_crop_box: {list(box)} does not fit {width}x{height} frames")
        return x0, y0, x1, y1

    # ---- choosing frames -------------------------------------------------------------------
    def rng(self, sample_id: str) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.seed}:{sample_id}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def choose(self, times: np.ndarray, rng: np.random.Generator) -> tuple[str, list[int]]:
        """(strategy, frame offsets within the clip) for a clip whose frames show at `times`."""
        use_interval = self.mode == "interval" or (self.mode == "hybrid" and rng.random() < self.interval_prob)
        n = int(rng.integers(self.count_min_frames, self.count_max_frames + 1))  # drawn always: same stream in every mode
        if use_interval:
            offsets = interval_offsets(times, self.interval_s, self.interval_max_frames)
            if len(offsets) >= MIN_SESSION_FRAMES or self.mode == "interval":
                return "interval", offsets
        return "count", count_offsets(len(times), n)

    def shrink(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        if self.max_side is None or max(height, width) <= self.max_side:
            return image
        scale = self.max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def interval_offsets(times: np.ndarray, interval_s: float, max_frames: int) -> list[int]:
    """Frames every `interval_s` seconds (at most `max_frames`), centred in the clip so neither
    end (where fades and cut-adjacent frames live) is favoured."""
    if len(times) == 0:
        return []
    span = float(times[-1] - times[0])
    n = min(int(span // interval_s) + 1, max_frames)
    first = times[0] + (span - (n - 1) * interval_s) / 2
    targets = first + interval_s * np.arange(n)
    # nearest frame to each target time
    right = np.clip(np.searchsorted(times, targets), 1, len(times) - 1) if len(times) > 1 else np.zeros(n, int)
    left = np.maximum(right - 1, 0)
    nearest = np.where(np.abs(times[left] - targets) <= np.abs(times[right] - targets), left, right)
    return sorted({int(k) for k in nearest})


def camera_turns(clip: dict[str, Any], num_frames: int) -> list[dict[str, Any]] | None:
    """One turn per adjacent frame pair labelled with the clip's homography camera class, VINCIE's
    camera label when no VLM annotates; None when filter_quality did not classify the clip."""
    raw = clip.get("camera_motion_raw")
    if raw is None:
        return None
    return [Turn(index=k, camera=clip.get("camera_motion"), camera_raw=f"homography: {raw}").model_dump()
            for k in range(num_frames - 1)]


def count_offsets(num_frames: int, n: int) -> list[int]:
    """`n` frames spread evenly: the middle frame of each of n equal parts of the clip."""
    n = min(n, num_frames)
    return sorted({int((k + 0.5) * num_frames / n) for k in range(n)})


