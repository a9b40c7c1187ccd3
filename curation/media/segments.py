"""Cutting one long video into segments that are scored apart and merged into exactly one pass's shots.

One long film is one row, so without this it is one task on one worker however big the cluster.
Here it becomes segments, each of which decodes from a keyframe on its own worker:

1. `index_keyframes`: one demux pass (packets only, nothing decoded) lists every frame's pts in
   presentation order and which frames are keyframes. Frame index = position in that list, which
   is the position in a sequential decode for any stream whose packets each decode to one frame.
2. `plan_segments`: segment k owns frames [k * span, (k + 1) * span); it decodes from the last
   keyframe at or before the first frame its detector needs (`ShotDetector.context`: the frame
   before for PySceneDetect's score, TransNetV2's window grid), so its scores are exactly one
   pass's. The detector's longer memory (adaptive window, minimum scene length, flash filter) acts
   in `decide_shots` over the merged scores of all segments, which is how cuts near and across
   segment edges come out as in one pass.
3. `score_segment`: decode and score one segment (`curation.media.decode.iter_span_frames`),
   checking every decoded frame's pts against the demuxed ones.

Streams on which this cannot be exact fall back to one pass (DESIGN.md §2 warns of them): a packet
without pts or two with the same pts (`KeyframeIndex.unsplittable`), or, found while decoding,
packets and decoded frames that disagree (a packet that decodes to nothing or to two frames, a
seek that lands elsewhere): `SpanMismatch`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from curation.media.decode import SpanMismatch, iter_span_frames
from curation.media.probe import open_container, video_stream
from curation.media.shots import ScoredSpan, ShotDetector, score_frames

__all__ = ["KeyframeIndex", "Segment", "SpanMismatch", "index_keyframes", "plan_segments", "score_segment"]


@dataclass(frozen=True)
class KeyframeIndex:
    """What the demux pass learnt: every frame's pts in presentation order and the keyframes."""

    pts: list[int]  # (N,) pts of each frame (one per packet), ascending
    keyframes: list[int]  # frame indices of keyframe packets, ascending; 0 included when frame 0 is one
    unsplittable: str | None  # why frame indices cannot be taken from packets, or None

    @property
    def num_frames(self) -> int:
        return len(self.pts)


@dataclass(frozen=True)
class Segment:
    """Frames [first, stop) scored from a decode that starts at keyframe `keyframe` and pushes
    frames [lo, hi) to the detector (lo <= first, hi >= stop: the detector's context)."""

    first: int
    stop: int
    lo: int
    hi: int
    keyframe: int
    at_end: bool  # hi is the video's last frame + 1


def index_keyframes(path: str) -> KeyframeIndex:
    """Demux every video packet of `path` (local or fsspec URI) without decoding any."""
    pts: list[int] = []
    key_pts: list[int] = []
    missing = 0
    with open_container(path) as container:
        stream = video_stream(container)
        for packet in container.demux(stream):
            if not packet.size or packet.is_discard:  # flush packets; frames an edit list cuts away
                continue
            if packet.pts is None:
                missing += 1
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                key_pts.append(packet.pts)
    pts.sort()
    unsplittable = None
    if missing:
        unsplittable = f"{missing} packet(s) without pts"
    elif len(set(pts)) != len(pts):
        unsplittable = "packets with repeated pts"
    keyframes = sorted(bisect.bisect_left(pts, p) for p in set(key_pts))
    return KeyframeIndex(pts=pts, keyframes=keyframes, unsplittable=unsplittable)


def plan_segments(index: KeyframeIndex, span_frames: int, detector: ShotDetector) -> list[Segment]:
    """Segments of `span_frames` frames (the last one takes the remainder), each decoding from the
    last keyframe at or before the first frame its detector needs. A decode that must start
    before the first keyframe starts at frame 0, as one pass does."""
    if span_frames < 1:
        raise ValueError(f"span_frames must be >= 1, got {span_frames}")
    n = index.num_frames
    out = []
    for first in range(0, n, span_frames):
        stop = min(n, first + span_frames)
        lo, hi = detector.context(first, stop, n)
        at = bisect.bisect_right(index.keyframes, lo) - 1
        keyframe = index.keyframes[at] if at >= 0 else 0
        out.append(Segment(first=first, stop=stop, lo=lo, hi=hi, keyframe=keyframe, at_end=hi == n))
    return out


def score_segment(
    path: str, detector: ShotDetector, segment: Segment, expected_pts: list[int], *, size: tuple[int, int], threads: int = 0
) -> ScoredSpan:
    """Decode `segment` from its keyframe at the detector's analysis `size` and score its frames.

    `expected_pts`: the demuxed pts of frames `segment.keyframe` to `segment.hi`. Raises
    `SpanMismatch` when the decode disagrees with them anywhere.
    """
    frames = iter_span_frames(
        path, keyframe=segment.keyframe, expected_pts=expected_pts, start=segment.lo, stop=segment.hi,
        at_end=segment.at_end, size=size, fmt=detector.pixel_format, threads=threads,
        interpolation=detector.interpolation,
    )
    return score_frames(frames, detector, first=segment.first, stop=segment.stop, at_end=segment.at_end)
