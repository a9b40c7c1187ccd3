"""The front door: one config with a sub-config per check, and `assess` running them in order.

Run order: the crop first (every other check looks inside it), the two model checks last (they cost
~80% of the time, bench/filters.py); reasons are reported in CHECK_ORDER, so a row's drop reason
(the first one) does not depend on run order.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.labels.camera import CameraLabel
from curation.quality import borders, camera_motion, exposure, motion, nsfw, text_overlay
from curation.quality.borders import BorderConfig
from curation.quality.camera_motion import CameraMotionConfig, RawCameraLabel
from curation.quality.exposure import BlurConfig, LuminanceConfig
from curation.quality.frames import MOTION_SHORT_SIDE, WORK_MAX_LONG_SIDE, WORK_SHORT_SIDE, check_frames, resize, to_gray, work_size
from curation.quality.motion import MotionConfig
from curation.quality.nsfw import NsfwConfig
from curation.quality.text_overlay import TextOverlayConfig

# Order of `QualityReport.failed` (the first is the row's drop reason), by reason prefix.
CHECK_ORDER = ("too_dark", "too_bright", "blurry", "text_overlay", "nsfw", "static", "black_border")


class QualityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_frames: int = Field(
        8, ge=1,
        description="frames sampled per clip (sample_indices): one per 1.25 s at scene_split's 10 s maximum clip "
        "length, one per 0.25 s at its 2 s minimum, 7 pairs for flow and homographies. Cost is linear in it: "
        "~65 ms/frame of checks plus ~28 ms/frame of decoding on a busy 2-core machine (bench/filters.py)",
    )
    stop_at_first_failure: bool = Field(
        False, description="skip the model checks (text overlay, NSFW) once a cheaper one failed; off so every "
        "dropped row still carries all its scores for auditing",
    )
    onnx_threads: int = Field(
        1, ge=0,
        description="ONNX Runtime threads per model session (RapidOCR, NudeNet); 0 = its default, every core. One, "
        "because the Ray worker pool is the parallelism: on 2 busy cores NudeNet ran 18 ms/frame with 1 thread, "
        "24 with the default and 30 with 2",
    )
    borders: BorderConfig = Field(default_factory=BorderConfig)
    luminance: LuminanceConfig = Field(default_factory=LuminanceConfig)
    blur: BlurConfig = Field(default_factory=BlurConfig)
    text_overlay: TextOverlayConfig = Field(default_factory=TextOverlayConfig)
    nsfw: NsfwConfig = Field(default_factory=NsfwConfig)
    motion: MotionConfig = Field(default_factory=MotionConfig)
    camera_motion: CameraMotionConfig = Field(default_factory=CameraMotionConfig)


class QualityReport(BaseModel):
    scores: dict[str, float] = Field(description="every score computed, by name (absent: check off or not applicable)")
    crop_box: tuple[int, int, int, int] | None = Field(
        description="active picture (x0, y0, x1, y1), x1/y1 exclusive, in the input frames' pixels; None when the "
        "border check is off or the frames are all black"
    )
    camera: CameraLabel | None = Field(description="VINCIE camera label; None when not computed or undetermined")
    camera_raw: RawCameraLabel | None = Field(description="the homography's own label (zoom-in, static, undetermined, ...)")
    failed: list[str] = Field(description="one reason per failed check, in CHECK_ORDER, e.g. 'too_dark: luma 8.1 < 12'")

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def reason(self) -> str | None:
        """The row's drop reason: the first failed check."""
        return self.failed[0] if self.failed else None


def sample_indices(start: int, end: int, num: int) -> list[int]:
    """`num` frame indices evenly over [start, end): the middle of `num` equal segments, so neither
    boundary frame (where a cut detector may be off by one) is taken; every frame when fewer."""
    count = end - start
    if count <= num:
        return list(range(start, max(start, end)))
    return [start + int((k + 0.5) * count / num) for k in range(num)]


def load_models(cfg: QualityConfig) -> None:
    """Load the enabled checks' models now (once per process), e.g. in a stage's setup()."""
    if cfg.text_overlay.enabled:
        text_overlay.ocr_engine(cfg.onnx_threads)
    if cfg.nsfw.enabled:
        nsfw.nude_detector(cfg.onnx_threads)


def assess(
    frames: Sequence[np.ndarray],
    cfg: QualityConfig | None = None,
    *,
    times_s: Sequence[float] | None = None,
    timings: dict[str, float] | None = None,
) -> QualityReport:
    """Score RGB uint8 frames of one clip (or one image) and list the failed checks.

    `times_s`: each frame's time in seconds (e.g. index / fps), needed by the motion and camera checks.
    `timings`: if given, seconds spent per step are added to it (for benchmarks and run stats).
    """
    cfg = cfg or QualityConfig()
    frames = list(frames)
    height, width = check_frames(frames)
    if times_s is not None and len(times_s) != len(frames):
        raise ValueError(f"{len(times_s)} times for {len(frames)} frames")
    timed = _Timer(timings)
    scores: dict[str, float] = {}
    failed: list[str] = []

    crop_box = None
    if cfg.borders.enabled:
        with timed("borders"):
            found = borders.find_borders([to_gray(f) for f in frames], cfg.borders.black_level)
        crop_box = found.crop_box
        scores["border_fraction"] = found.border_fraction
        _add(failed, cfg.borders.failure(found.active_fraction))
    with timed("prepare"):
        if crop_box is not None:
            x0, y0, x1, y1 = crop_box
            frames = [f[y0:y1, x0:x1] for f in frames]
            height, width = y1 - y0, x1 - x0
        size = work_size(width, height, WORK_SHORT_SIDE, WORK_MAX_LONG_SIDE)
        work = [resize(f, size) for f in frames]  # (h, w, 3) at the working size
        grays = [to_gray(f) for f in work]

    if cfg.luminance.enabled:
        with timed("luminance"):
            scores["luma"] = exposure.mean_luma(grays)
        _add(failed, cfg.luminance.failure(scores["luma"]))
    if cfg.blur.enabled:
        with timed("blur"):
            scores["laplacian_var"] = exposure.laplacian_variance(grays)
        _add(failed, cfg.blur.failure(scores["laplacian_var"]))

    camera = None
    if times_s is not None and len(frames) > 1 and (cfg.motion.enabled or cfg.camera_motion.enabled):
        with timed("prepare"):
            small = [resize(g, work_size(size[0], size[1], MOTION_SHORT_SIDE, WORK_MAX_LONG_SIDE // 2)) for g in grays]
        if cfg.motion.enabled:
            with timed("motion"):
                rate = motion.motion_score(small, times_s)
            if rate is not None:
                scores["motion_px_per_s"] = rate
                _add(failed, cfg.motion.failure(rate))
        if cfg.camera_motion.enabled:
            with timed("camera_motion"):
                camera = camera_motion.camera_motion(small, times_s, cfg.camera_motion.static_rate)
            if camera is not None and camera.pairs:
                scores.update(camera_shift_x=camera.shift_x, camera_shift_y=camera.shift_y, camera_zoom=camera.zoom)

    skip_models = cfg.stop_at_first_failure and bool(failed)
    if cfg.text_overlay.enabled and not skip_models:
        with timed("text_overlay"):
            picked = text_overlay.pick_evenly(work, cfg.text_overlay.num_frames)
            ratios = text_overlay.text_area_ratios(picked, cfg.text_overlay.recognize, cfg.onnx_threads)
        scores["text_area"] = float(np.mean(ratios) if cfg.text_overlay.aggregate == "mean" else np.max(ratios))
        scores["text_area_max"] = float(np.max(ratios))
        _add(failed, cfg.text_overlay.failure(scores["text_area"]))
    if cfg.nsfw.enabled and not skip_models:
        with timed("nsfw"):
            scores["nsfw"] = nsfw.nsfw_score(work, cfg.nsfw.classes, cfg.onnx_threads)
        _add(failed, cfg.nsfw.failure(scores["nsfw"]))

    failed.sort(key=lambda reason: CHECK_ORDER.index(reason.split(":")[0]))
    return QualityReport(
        scores=scores,
        crop_box=crop_box,
        camera=camera.vincie if camera else None,
        camera_raw=camera.label if camera else None,
        failed=failed,
    )


class _Timer:
    """`with timed("step"):` adds the block's wall time to timings["step"] (no-op without a dict)."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings = timings

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        if self.timings is None:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - start


def _add(failed: list[str], reason: str | None) -> None:
    if reason:
        failed.append(reason)
