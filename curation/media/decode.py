"""The one place video frames are decoded (PyAV).

Frame index = 0-based position in a sequential decode ("decode order" in DESIGN.md: the order the
decoder outputs pictures, which is presentation order). Frames come out upright and at display
aspect (see `curation.media.probe` for the rotation and SAR conventions) unless a `size` is given,
in which case swscale scales to that upright size in the same call that converts the pixel format.

Packets the decoder rejects are skipped, as the ffmpeg command line does, so a glitch mid-stream
costs that picture only; both functions here skip the same way, so indices still agree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from curation.core.stage import StageError
from curation.media.probe import display_size, open_container, rotation_steps, video_stream

log = logging.getLogger(__name__)

# Seek for a target more than this many frames past the current position; closer targets are
# reached by decoding forward (a seek costs up to a GOP of decoding anyway).
SEEK_AHEAD_FRAMES = 48
# Tries at stepping back before a target when a seek lands after it, before decoding from the start.
MAX_SEEK_RETRIES = 4


# --------------------------------------------------------------------------------------------
# Sequential decode
# --------------------------------------------------------------------------------------------


def iter_frames(
    path: str,
    *,
    size: tuple[int, int] | None = None,
    fmt: str = "rgb24",
    start: int = 0,
    stop: int | None = None,
    threads: int = 0,
    interpolation: str = "AREA",
) -> Iterator[tuple[int, int | None, np.ndarray]]:
    """Yield `(index, pts, image)` for frames `start <= index < stop` of a sequential decode.

    `image` is HxWxC uint8 (for `fmt="rgb24"`), upright, at display aspect, or scaled to `size=(w, h)`
    (upright width and height) by swscale while converting. Frames before `start` are decoded but
    never converted. `pts` is the frame's presentation timestamp in the stream's time base (None
    when the container has none); scene_split records it so `read_frames` can seek exactly.
    `threads=0` lets FFmpeg pick (frame and slice threading). `interpolation` is swscale's
    algorithm; AREA averages when shrinking (no aliasing for detectors) at about bilinear's speed.
    """
    with open_container(path) as container:
        stream = _prepare(container, threads)
        convert = _Converter(stream, size, fmt, interpolation)
        for index, frame in enumerate(decode_video(container, stream)):
            if stop is not None and index >= stop:
                break
            if index >= start:
                yield index, frame.pts, convert(frame)


class SpanMismatch(Exception):
    """Decoding from a keyframe did not give the frames the demuxed packets promised (a pts missing,
    repeated or unexpected, a seek landing elsewhere, fewer or more frames): the caller falls back
    to one sequential pass, which defines frame indices."""


def iter_span_frames(
    path: str,
    *,
    keyframe: int,
    expected_pts: Sequence[int],
    start: int,
    stop: int,
    at_end: bool,
    size: tuple[int, int] | None = None,
    fmt: str = "rgb24",
    threads: int = 0,
    interpolation: str = "AREA",
) -> Iterator[tuple[int, int | None, np.ndarray]]:
    """Yield `(index, pts, image)` for frames `start <= index < stop`, decoded from the keyframe at
    index `keyframe`, each equal to what `iter_frames` yields at that index, or raise `SpanMismatch`.

    `expected_pts` are the pts of frames `keyframe, keyframe + 1, …` in presentation order, from a
    demux pass (`curation.media.segments`). Every decoded frame from the keyframe on must carry
    exactly the next one, so each index is checked rather than assumed; frames before the keyframe
    that the decoder still outputs (leading pictures of an open GOP, which belong to the span
    before) are skipped. `at_end`: `stop` is the video's last frame + 1, and the stream must end there.
    """
    if not keyframe <= start < stop <= keyframe + len(expected_pts) or (at_end and stop != keyframe + len(expected_pts)):
        raise ValueError(f"span [{start}, {stop}) is not inside the {len(expected_pts)} frames from keyframe {keyframe}")
    keyframe_pts = expected_pts[0]
    with open_container(path) as container:
        stream = _prepare(container, threads)
        convert = _Converter(stream, size, fmt, interpolation)
        if keyframe > 0:
            try:
                container.seek(keyframe_pts, stream=stream, backward=True, any_frame=False)
            except av.FFmpegError as e:
                raise SpanMismatch(f"seek failed: {e}") from e
        index = None
        for frame in decode_video(container, stream):
            if index is None:
                if frame.pts is not None and frame.pts < keyframe_pts:
                    continue
                if frame.pts != keyframe_pts or (keyframe > 0 and not frame.key_frame):
                    raise SpanMismatch(f"decoding from keyframe {keyframe} (pts {keyframe_pts}) began at pts {frame.pts}")
                index = keyframe
            else:
                index += 1
                if index >= stop:
                    if at_end:
                        raise SpanMismatch(f"frame {index} decoded beyond the {stop} packets demuxed")
                    return
                if frame.pts != expected_pts[index - keyframe]:
                    raise SpanMismatch(f"frame {index} has pts {frame.pts}, the packets say {expected_pts[index - keyframe]}")
            if index >= start:
                yield index, frame.pts, convert(frame)
        if index is None or index < stop - 1:
            raise SpanMismatch(f"the stream ended at frame {index}, before frame {stop - 1}")


def decode_video(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
    """Decoded frames of `stream` from the container's current position, skipping rejected packets."""
    for packet in container.demux(stream):
        try:
            frames = stream.decode(packet)
        except av.InvalidDataError:
            continue
        yield from frames


def _prepare(container: av.container.InputContainer, threads: int) -> av.video.stream.VideoStream:
    stream = video_stream(container)
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    return stream


class _Converter:
    """Frame -> upright uint8 array; one swscale context reused for the whole stream."""

    def __init__(self, stream: av.video.stream.VideoStream, size: tuple[int, int] | None, fmt: str, interpolation: str):
        self.stream = stream
        self.size = size
        self.fmt = fmt
        self.interpolation = interpolation
        self.reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        turns = rotation_steps(frame.rotation)
        if self.size is None:
            sar = self.stream.codec_context.sample_aspect_ratio or Fraction(1)
            width, height = display_size(frame.width, frame.height, sar, 0)
        else:
            width, height = self.size if turns % 2 == 0 else self.size[::-1]
        image = self.reformatter.reformat(
            frame, width, height, self.fmt, interpolation=self.interpolation
        ).to_ndarray(channel_last=True)
        return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


# --------------------------------------------------------------------------------------------
# Frame-accurate random access
# --------------------------------------------------------------------------------------------


def read_frames(
    path: str,
    indices: Sequence[int],
    frame_pts: Sequence[int | None] | None = None,
    *,
    first_index: int = 0,
    size: tuple[int, int] | None = None,
    fmt: str = "rgb24",
    threads: int = 0,
    interpolation: str = "AREA",
) -> list[np.ndarray]:
    """Frames at decode-order `indices` (any order, repeats allowed), each pixel-equal to the frame
    `iter_frames` yields at that index with the same `size`/`fmt`/`interpolation`.

    Seeking is fast but not frame-accurate everywhere (VFR, AVI/MPEG-4 part 2, streams whose
    packet count differs from their decoded frame count), so it is only used where it can be checked:

    - With `frame_pts` (the pts of frames `first_index, first_index + 1, …` in decode order, as
      scene_split records them): for each target, seek to the keyframe at or before its pts, decode
      forward, and accept frames only after a keyframe has been decoded (pictures before it may
      lack their references) and only while every decoded pts is exactly the next recorded one. A
      target is taken when its pts comes up. Targets a short way ahead are reached by decoding on
      instead of seeking again. A seek that lands past the target (MPEG-TS/PS seek by bisection
      and overshoot; H.264 open GOPs drop the leading pictures) seeks again further back, a few
      times, extrapolating pts below a clip's span from the typical frame gap.
    - If anything disagrees (a pts missing or repeated, an unexpected pts, the target never found,
      retries exhausted), the targets not yet read are decoded sequentially from the start instead.
    - Without `frame_pts`: one sequential decode from frame 0 to `max(indices)`; frames that are not
      wanted are never converted to RGB.
    """
    if not indices:
        return []
    wanted = sorted(set(indices))
    if wanted[0] < 0:
        raise ValueError(f"negative frame index {wanted[0]}")
    found: dict[int, np.ndarray] = {}
    if frame_pts is not None:
        with open_container(path) as container:
            stream = _prepare(container, threads)
            convert = _Converter(stream, size, fmt, interpolation)
            why = _read_by_seeking(container, stream, convert, wanted, list(frame_pts), first_index, found)
    missing = [i for i in wanted if i not in found]
    if missing:
        if frame_pts is not None:
            log.info("%s: seeking gave up (%s); decoding %d frame(s) sequentially", path, why, len(missing))
        found.update(_read_sequential(path, missing, size, fmt, threads, interpolation))
    absent = [i for i in wanted if i not in found]
    if absent:
        raise StageError(f"decode_failed: frame {absent[0]} not in video (decoded fewer frames)")
    return [found[i] for i in indices]


def _read_sequential(path, wanted, size, fmt, threads, interpolation) -> dict[int, np.ndarray]:
    wanted_set = set(wanted)
    last = max(wanted)
    found: dict[int, np.ndarray] = {}
    with open_container(path) as container:
        stream = _prepare(container, threads)
        convert = _Converter(stream, size, fmt, interpolation)
        for index, frame in enumerate(decode_video(container, stream)):
            if index in wanted_set:
                found[index] = convert(frame)
            if index >= last:
                break
    return found


def _read_by_seeking(container, stream, convert, wanted, frame_pts, first_index, found) -> str | None:
    """Fill `found` with the targets verified seeking can read; stop at the first disagreement and
    say why (None when every target was read)."""
    if any(p is None for p in frame_pts) or len(set(frame_pts)) != len(frame_pts):
        return "recorded pts missing or repeated"
    if any(not first_index <= t < first_index + len(frame_pts) for t in wanted):
        return "target outside the recorded pts"
    index_of = {p: first_index + k for k, p in enumerate(frame_pts)}
    gap = int(np.median(np.diff(frame_pts))) if len(frame_pts) > 1 else 1
    run: _Run | None = None
    for target in wanted:
        if run is not None and not 0 < target - run.position <= SEEK_AHEAD_FRAMES:
            run = None  # far ahead: seeking beats decoding on
        back, seek_index = 0, None
        for _ in range(MAX_SEEK_RETRIES + 1):
            if run is None:
                seek_index = max(0, target - back)
                # before the recorded span (clip-level pts), extrapolate its pts from the typical gap
                seek_pts = frame_pts[max(0, seek_index - first_index)] + min(0, seek_index - first_index) * gap
                try:
                    container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
                except av.FFmpegError as e:  # unseekable input (a pipe, some remote files)
                    return f"seek failed: {e}"
                run = _Run(decode_video(container, stream), index_of, first_index, frame_pts[0], frame_pts[-1])
            outcome = run.advance_to(target)
            if isinstance(outcome, av.VideoFrame):
                found[target] = convert(outcome)
                break
            run = None
            if outcome is _MISMATCH:
                return f"decoded pts disagree with the recorded ones near frame {target}"
            if seek_index == 0:
                return f"even a seek to the start lands after frame {target}"
            back = max(2 * back, SEEK_AHEAD_FRAMES // 4)  # landed after the target: seek earlier
        else:
            return f"every seek lands after frame {target}"
    return None


_MISMATCH = "mismatch"  # a decoded pts disagrees with the recorded ones
_LATE = "late"  # this run started after the target


class _Run:
    """Frames decoded forward from one seek, accepted only while they agree with the recorded pts.

    Pictures before the first keyframe may lack their references, so nothing is accepted before a
    keyframe. From the first accepted frame on, every decoded pts must be the next recorded one.
    """

    def __init__(self, frames: Iterator[av.VideoFrame], index_of: dict[int, int], first_index: int, lo_pts: int, hi_pts: int):
        self.frames = frames
        self.index_of = index_of
        self.first_index = first_index
        self.lo_pts, self.hi_pts = lo_pts, hi_pts
        self.position: int | None = None  # index of the last accepted frame
        self.keyed = False  # a keyframe has been decoded on this run
        self.keyed_before_span = False  # ... and it came before the recorded span

    def advance_to(self, target: int) -> av.VideoFrame | str:
        for frame in self.frames:
            self.keyed = self.keyed or bool(frame.key_frame)
            index = self.index_of.get(frame.pts)
            if index is None:
                if frame.pts is None or self.position is not None:
                    return _MISMATCH
                if frame.pts > self.hi_pts:
                    return _LATE
                if frame.pts >= self.lo_pts:
                    return _MISMATCH  # inside the span, yet the sequential decode never produced it
                self.keyed_before_span = self.keyed
                continue  # before the recorded span (clip-level pts): nothing to check yet
            if not self.keyed:
                if index >= target:
                    return _LATE
                continue
            if self.position is None:
                if index > target:
                    return _LATE
                if self.keyed_before_span and index != self.first_index:
                    return _MISMATCH
            elif index != self.position + 1:
                return _MISMATCH
            self.position = index
            if index == target:
                return frame
        # the stream ended: before the target inside a verified run, or the seek overshot it
        return _MISMATCH if self.position is not None else _LATE
