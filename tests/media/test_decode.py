"""Decoding: random access must be pixel-equal to a sequential decode on every test video (VFR,
rotated, anamorphic, mkv included) and on built open-GOP / MPEG-4 part 2 files; frames come out
upright and at display aspect."""

from __future__ import annotations

import itertools
import logging

import av
import cv2
import numpy as np
import pytest

from curation.core.stage import StageError
from curation.media.decode import _LATE, _Run, decode_video, iter_frames, read_frames

from tests.fixtures import trickymedia
from tests.fixtures.media import VIDEOS, ground_truth
from tests.fixtures.media import video_path as media_path

GAVE_UP = "seeking gave up"
VFR = "built/vfr-drop3.mp4"  # 160 frames; source of the open-GOP, MPEG-4 part 2 and MPEG-TS builds
ROTATED = "built/rotate-90.mp4"  # stored 512x288, shown 288x512


def video_path(name: str) -> str:
    return str(media_path(name))


def sequential(path: str, keep, **kwargs) -> tuple[dict[int, np.ndarray], list[int]]:
    """One full sequential decode: the frames at `keep`, and every frame's pts."""
    keep, frames, pts = set(keep), {}, []
    for index, frame_pts, image in iter_frames(path, **kwargs):
        assert index == len(pts)
        pts.append(frame_pts)
        if index in keep:
            frames[index] = image
    return frames, pts


def picks(num_frames: int, cuts: list[int], seed: int = 0) -> list[int]:
    """Ends, thirds, both sides of every cut, and a few random frames."""
    rng = np.random.default_rng(seed)
    chosen = {0, 1, num_frames // 3, num_frames // 2, 2 * num_frames // 3, num_frames - 2, num_frames - 1}
    for cut in cuts:
        chosen |= {cut - 1, cut, cut + 1}
    chosen |= set(rng.integers(0, num_frames, 4).tolist())
    return sorted(chosen)


def assert_same(expected: dict[int, np.ndarray], indices: list[int], got: list[np.ndarray]) -> None:
    assert len(got) == len(indices)
    for index, image in zip(indices, got):
        assert image.dtype == np.uint8 and image.shape == expected[index].shape, index
        assert np.array_equal(image, expected[index]), f"frame {index} differs from the sequential decode"




@pytest.mark.parametrize("name", VIDEOS)
def test_read_frames_is_pixel_equal_to_sequential_decode(name, caplog):
    video = ground_truth()[name]
    path = video_path(name)
    indices = picks(video["decoded_frames"], video["hard_cuts"])
    expected, pts = sequential(path, indices)
    assert len(pts) == video["decoded_frames"]

    caplog.set_level(logging.INFO, logger="curation.media.decode")
    shuffled = indices[::-1] + indices[:2]  # any order, repeats allowed
    assert_same(expected, shuffled, read_frames(path, shuffled, pts))
    assert GAVE_UP not in caplog.text  # the verified seek path did the work, no fallback
    assert_same(expected, indices, read_frames(path, indices))

    # clip-level pts (what scene_split stores per clip), one clip per cut
    bounds = [0, *video["hard_cuts"], video["decoded_frames"]]
    for start, end in zip(bounds, bounds[1:]):
        wanted = sorted({start, start + 1, end - 1})  # all among `indices`: 0, 1, cut±1, last
        assert_same(expected, wanted, read_frames(path, wanted, pts[start:end], first_index=start))
    assert GAVE_UP not in caplog.text


@pytest.mark.parametrize("kind", sorted(trickymedia.BUILDERS))
def test_read_frames_on_open_gop_mpeg4_part2_and_mpeg_ts(kind, tmp_path, caplog):
    path = str(trickymedia.BUILDERS[kind](tmp_path, media_path(VFR)))
    expected, pts = sequential(path, range(160))
    assert len(pts) == 160
    # single frames each force a seek. In the first GOP MPEG-TS may fall back to decoding from
    # the start (its seeks overshoot even frame 0); the result must be right either way.
    for index in [0, 11, 21, 22, 23]:
        assert_same(expected, [index], read_frames(path, [index], pts))
    caplog.set_level(logging.INFO, logger="curation.media.decode")
    # open-GOP leading pictures sit just before each keyframe (every 24 frames)
    for index in [24, 25, 35, 46, 47, 70, 95, 143, 159]:
        assert_same(expected, [index], read_frames(path, [index], pts))
    assert_same(expected, list(range(30, 160, 7)), read_frames(path, list(range(30, 160, 7)), pts))
    assert_same(expected, [61, 100, 139], read_frames(path, [61, 100, 139], pts[60:140], first_index=60))
    assert GAVE_UP not in caplog.text
    assert_same(expected, [5, 80, 159], read_frames(path, [5, 80, 159]))


def test_pictures_before_the_first_keyframe_after_a_seek_are_never_accepted(tmp_path):
    """With `output_corrupt`, H.264 hands out an open GOP's leading pictures after a seek, decoded
    without their references. The verifier must refuse them (and ask for an earlier seek)."""
    path = str(trickymedia.open_gop_mp4(tmp_path, media_path(VFR)))
    expected, pts = sequential(path, [22])
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.flags |= av.codec.context.Flags.output_corrupt
        container.seek(pts[22], stream=stream, backward=True)
        frames = list(decode_video(container, stream))
    leading = {f.pts: f for f in itertools.takewhile(lambda f: not f.key_frame, frames)}
    assert pts[22] in leading  # the hazard is real here...
    corrupt = leading[pts[22]].to_ndarray(format="rgb24", channel_last=True)
    assert not np.array_equal(corrupt, expected[22])  # ...and its pixels are wrong

    run = _Run(iter(frames), {p: i for i, p in enumerate(pts)}, 0, pts[0], pts[-1])
    assert run.advance_to(22) == _LATE


def test_disagreeing_pts_fall_back_to_sequential_decode(caplog):
    path = video_path("intel-sample-videos/bottle-detection.mp4")
    indices = [3, 400, 900]
    expected, pts = sequential(path, indices, size=(160, 90))
    caplog.set_level(logging.INFO, logger="curation.media.decode")

    wrong = list(pts)
    wrong[400] += 1  # a pts the decoder will never produce
    assert_same(expected, indices, read_frames(path, indices, wrong, size=(160, 90)))
    assert GAVE_UP in caplog.text and "disagree" in caplog.text

    caplog.clear()
    missing = list(pts)
    missing[10] = None
    assert_same(expected, indices, read_frames(path, indices, missing, size=(160, 90)))
    assert "pts missing" in caplog.text


def test_index_past_the_end_is_a_decode_failure():
    path = video_path("pyscenedetect/issue-236-split-copy.mkv")
    with pytest.raises(StageError, match=r"^decode_failed: frame 48 "):
        read_frames(path, [10, 48])


def test_rotated_video_decodes_upright_like_opencv():
    path = video_path(ROTATED)
    _, _, ours = next(iter_frames(path))
    assert ours.shape == (512, 288, 3)  # 288 wide, 512 tall
    capture = cv2.VideoCapture(path)  # OpenCV applies the display matrix itself
    ok, theirs = capture.read()
    capture.release()
    assert ok and theirs.shape == ours.shape
    theirs = cv2.cvtColor(theirs, cv2.COLOR_BGR2RGB).astype(np.int16)
    assert np.abs(ours.astype(np.int16) - theirs).mean() < 2
    # the opposite turn is clearly wrong, so the check above has teeth
    opposite = np.rot90(np.rot90(ours, 1), 1)  # 180 degrees from ours
    assert np.abs(opposite.astype(np.int16) - theirs).mean() > 10


def test_anamorphic_video_decodes_at_display_aspect():
    path = video_path("pyscenedetect/issue-195-aspect-ratio.mp4")
    _, _, ours = next(iter_frames(path))
    assert ours.shape == (576, 1024, 3)
    capture = cv2.VideoCapture(path)  # OpenCV ignores the SAR: 704x576 stored pixels
    _ok, stored = capture.read()
    capture.release()
    stretched = cv2.resize(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB), (1024, 576), interpolation=cv2.INTER_LINEAR)
    assert np.abs(ours.astype(np.int16) - stretched.astype(np.int16)).mean() < 3


def test_size_is_the_upright_output_size():
    path = video_path(ROTATED)
    frames = {index: image for index, _, image in iter_frames(path, size=(72, 128), stop=3)}
    assert sorted(frames) == [0, 1, 2] and frames[0].shape == (128, 72, 3)
    full = next(iter_frames(path))[2]
    small = cv2.resize(full, (72, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(frames[0].astype(np.int16) - small.astype(np.int16)).mean() < 4


def test_start_stop_and_pts_on_vfr():
    path = video_path(VFR)
    everything = list(iter_frames(path, size=(160, 90)))
    window = list(iter_frames(path, size=(160, 90), start=58, stop=62))
    assert [i for i, _, _ in window] == [58, 59, 60, 61]
    for (i, pts, image), (j, pts_all, image_all) in zip(window, everything[58:62]):
        assert (i, pts) == (j, pts_all) and np.array_equal(image, image_all)
    gaps = np.diff([pts for _, pts, _ in everything])
    assert set(gaps.tolist()) == {1001, 2002}  # frames dropped: the rate really varies
