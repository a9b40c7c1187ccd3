"""Segments of a long video (curation.media.segments): the demux pass numbers frames as a
sequential decode does, a span decoded from a keyframe is pixel-equal to the sequential decode, and
any disagreement between packets and decoded frames is caught, on real and built footage."""

from __future__ import annotations

import numpy as np
import pytest

from curation.media.decode import SpanMismatch, iter_frames, iter_span_frames
from curation.media.segments import index_keyframes, plan_segments
from curation.media.shots import AdaptiveShots, TransNetShots

from tests.fixtures import trickymedia
from tests.fixtures.media import VIDEOS, video_path
from tests.fixtures.packetmedia import undecodable_packet_mp4

SIZE = (128, 72)


def sequential(path: str) -> list[tuple[int, int | None, np.ndarray]]:
    return list(iter_frames(path, size=SIZE, fmt="bgr24", interpolation="POINT"))


def span(path: str, keyframe: int, pts: list[int], start: int, stop: int) -> list[tuple[int, int | None, np.ndarray]]:
    return list(iter_span_frames(path, keyframe=keyframe, expected_pts=pts[keyframe:stop], start=start, stop=stop,
                                 at_end=stop == len(pts), size=SIZE, fmt="bgr24", interpolation="POINT"))


def assert_equal_frames(got, expected) -> None:
    assert [(i, p) for i, p, _ in got] == [(i, p) for i, p, _ in expected]
    for (index, _, a), (_, _, b) in zip(got, expected):
        assert np.array_equal(a, b), f"frame {index} differs from the sequential decode"


@pytest.mark.parametrize("name", VIDEOS)
def test_demuxed_packets_number_frames_as_a_sequential_decode_does(name):
    path = str(video_path(name))
    index = index_keyframes(path)
    frames = sequential(path)
    assert index.unsplittable is None
    assert index.pts == [p for _, p, _ in frames]
    assert index.keyframes[0] == 0 and index.keyframes == sorted(set(index.keyframes))


@pytest.mark.parametrize("name", ["pyscenedetect/testvideo.mp4", "built/vfr-drop3.mp4", "intel-sample-videos/car-detection.mp4"])
def test_a_span_decoded_from_its_keyframe_equals_the_sequential_decode(name):
    path = str(video_path(name))
    index = index_keyframes(path)
    frames = sequential(path)
    n = index.num_frames
    for keyframe in index.keyframes:
        for start, stop in ((keyframe, min(n, keyframe + 20)), (min(n - 1, keyframe + 7), n)):
            assert_equal_frames(span(path, keyframe, index.pts, start, stop), frames[start:stop])


def test_open_gop_leading_pictures_are_left_to_the_span_before(tmp_path):
    # x264 open GOPs: after a seek to a non-IDR keyframe the decoder also outputs the B-frames that
    # precede it in presentation order; they belong to the previous span and are skipped
    path = str(trickymedia.open_gop_mp4(tmp_path, video_path("built/vfr-drop3.mp4")))
    index = index_keyframes(path)
    frames = sequential(path)
    assert len(index.keyframes) > 2 and index.pts == [p for _, p, _ in frames]
    for keyframe in index.keyframes[1:]:
        assert_equal_frames(span(path, keyframe, index.pts, keyframe, min(index.num_frames, keyframe + 30)),
                            frames[keyframe:keyframe + 30])


def test_a_packet_that_decodes_to_no_frame_is_a_mismatch(tmp_path):
    path = str(undecodable_packet_mp4(tmp_path))
    index = index_keyframes(path)
    assert index.num_frames == 161 and len(sequential(path)) == 160
    with pytest.raises(SpanMismatch, match="pts"):
        span(path, index.keyframes[1], index.pts, index.keyframes[1], index.num_frames)
    # a span wholly before the bad packet is still exact
    frames = sequential(path)
    assert_equal_frames(span(path, 0, index.pts, 10, 90), frames[10:90])


def test_segments_start_at_the_keyframe_before_the_detectors_context():
    path = str(video_path("intel-sample-videos/bottle-detection.mp4"))  # 1189 frames, keyframes every 250
    index = index_keyframes(path)
    assert index.keyframes == [0, 250, 500, 750, 1000]
    adaptive = plan_segments(index, 250, AdaptiveShots(3.0, 15.0, 2, 0.6))
    # the content score of frame 250 needs frame 249: decode from the keyframe before that
    assert [(s.first, s.stop, s.lo, s.keyframe) for s in adaptive] == [
        (0, 250, 0, 0), (250, 500, 249, 0), (500, 750, 499, 250), (750, 1000, 749, 500), (1000, 1189, 999, 750)]
    assert [s.at_end for s in adaptive] == [False] * 4 + [True]
    transnet = plan_segments(index, 300, TransNetShots(0.5))
    # TransNetV2's windows: frames from 25 before the 50-frame block holding `first` to 25 past `stop`'s
    assert [(s.first, s.stop, s.lo, s.hi, s.keyframe) for s in transnet] == [
        (0, 300, 0, 325, 0), (300, 600, 275, 625, 250), (600, 900, 575, 925, 500), (900, 1189, 875, 1189, 750)]
