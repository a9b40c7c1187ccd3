"""Sample frames: turn each clip into a session of K frames (VINCIE hybrid sampling), as JPEG bytes."""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
from pydantic import BaseModel, Field, model_validator

from curation.core.schema import Jpeg
from curation.core.stage import Stage
from curation.media.decode import read_frames
from curation.media.jpeg import encode_jpeg
from curation.media.timing import clip_span, clip_times

MIN_SESSION_FRAMES = 2  # one transition needs two frames


class SampleFramesColumns(BaseModel):
    frame_indices: list[int] | None = Field(None, description="decode-order indices of the sampled frames in the source video")
    frame_times_s: list[float] | None = Field(None, description="presentation time of each sampled frame, seconds")
    frames: list[Jpeg] | None = Field(None, description="the sampled frames as JPEG bytes, upright, display aspect "
                                                        "(stored once; manifests hold references)")
    frame_width: int | None = Field(None, description="width of the stored JPEG frames")
    frame_height: int | None = Field(None, description="height of the stored JPEG frames")
    sampling: str | None = Field(None, description="strategy that picked the frames: interval | count")


class SampleFrames(Stage):
    """Sample 2-6 frames per clip (equal-interval or fixed-count, VINCIE) into a session of JPEGs."""

    name: ClassVar[str] = "sample_frames"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = SampleFramesColumns

    mode: Literal["interval", "count", "hybrid"] = Field(description="interval: every interval_s; count: n frames spread evenly; "
                                                                     "hybrid: either, per clip")
    interval_s: float = Field(gt=0, description="seconds between frames in interval sampling")
    interval_prob: float = Field(ge=0, le=1, description="hybrid mode: probability that a clip uses interval sampling")
    min_frames: int = Field(ge=MIN_SESSION_FRAMES, description="count sampling: fewest frames (n is uniform in [min_frames, max_frames])")
    max_frames: int = Field(ge=MIN_SESSION_FRAMES, description="count sampling: most frames; also caps interval sampling")
    jpeg_quality: int = Field(ge=1, le=100, description="JPEG quality of the stored frames")
    max_side: int | None = Field(gt=0, description="shrink frames so the longer side is at most this (aspect kept); null keeps the "
                                                   "display size")
    seed: int = Field(description="mixed with each clip's sample_id, so choices are random across clips but reproducible")

    @model_validator(mode="after")
    def _check_range(self) -> SampleFrames:
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames={self.min_frames} > max_frames={self.max_frames}")
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
        images = [self.shrink(im) for im in read_frames(row["source_uri"], indices, frame_pts, first_index=start)]
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
            )
        ]

    # ---- choosing frames -------------------------------------------------------------------
    def rng(self, sample_id: str) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.seed}:{sample_id}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def choose(self, times: np.ndarray, rng: np.random.Generator) -> tuple[str, list[int]]:
        """(strategy, frame offsets within the clip) for a clip whose frames show at `times`."""
        use_interval = self.mode == "interval" or (self.mode == "hybrid" and rng.random() < self.interval_prob)
        n = int(rng.integers(self.min_frames, self.max_frames + 1))  # drawn always: same stream in every mode
        if use_interval:
            offsets = interval_offsets(times, self.interval_s, self.max_frames)
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


def count_offsets(num_frames: int, n: int) -> list[int]:
    """`n` frames spread evenly: the middle frame of each of n equal parts of the clip."""
    n = min(n, num_frames)
    return sorted({int((k + 0.5) * num_frames / n) for k in range(n)})


