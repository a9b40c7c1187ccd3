"""The videos built at test time (tests/fixtures/trickymedia.py) are what their ground truth says,
checked on the written files with PyAV and OpenCV, not through the code under test."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from curation.media.decode import iter_frames

from tests.fixtures import trickymedia
from tests.fixtures.media import ground_truth, video_path


def display_matrix(degrees: int) -> list[int]:
    """FFmpeg's display matrix for a counterclockwise rotation (as `av_display_rotation_set(m, -degrees)`
    fills it): 16.16 fixed point, 2.30 in the last column."""
    radians = np.deg2rad(degrees)
    c, s = round(np.cos(radians) * 65536), round(np.sin(radians) * 65536)
    return [c, -s, 0, s, c, 0, 0, 0, 1 << 30]


def packet_pts(path: str) -> tuple[list[int], Fraction]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        return sorted(p.pts for p in container.demux(stream) if p.size), stream.time_base


def test_rotated_file_carries_a_minus_90_degree_display_matrix():
    path = str(video_path("built/rotate-90.mp4"))
    matrix = display_matrix(-90)
    assert matrix == [0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30]  # FFmpeg's layout: 16.16, last column 2.30
    # in the container: the track header's transformation matrix (big-endian), where the mp4 muxer writes it
    data = Path(path).read_bytes()
    tkhd = data.index(b"tkhd") - 4
    assert data.count(b"tkhd") == 1 and data[tkhd + 8] == 0  # one track, version-0 header
    assert struct.unpack(">9i", data[tkhd + 48:tkhd + 84]) == tuple(matrix)
    # and as FFmpeg reads it back: display-matrix side data on the decoded frame, -90 degrees
    with av.open(path) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (512, 288)  # stored landscape
        frame = next(container.decode(stream))
    assert frame.rotation == -90
    side = {sd.type.name: bytes(sd) for sd in frame.side_data}
    assert struct.unpack("=9i", side["DISPLAYMATRIX"]) == tuple(matrix)
    # OpenCV applies the matrix too: it shows the picture portrait
    capture = cv2.VideoCapture(path)
    ok, shown = capture.read()
    capture.release()
    assert ok and shown.shape == (512, 288, 3)


def test_vfr_file_drops_every_third_frame_of_a_23_976_fps_timeline():
    pts, time_base = packet_pts(str(video_path("built/vfr-drop3.mp4")))
    assert time_base == Fraction(1, 24000)
    assert pts == [i * 1001 for i in range(240) if i % 3 != 2]
    assert set(np.diff(pts).tolist()) == {1001, 2002}
    truth = ground_truth()["built/vfr-drop3.mp4"]
    assert truth["decoded_frames"] == len(pts) == 160
    # a shot starts at the first kept frame at or after each of issue-195's cuts (70, 170)
    assert truth["hard_cuts"] == [pts.index(70 * 1001), pts.index(171 * 1001)] == [47, 114]
    assert truth["hard_cut_times_s"] == [70 * 1001 / 24000, 171 * 1001 / 24000]


def test_rotated_and_vfr_files_hold_the_source_frames_at_their_mapped_indices():
    """Each built frame is the issue-195 frame its truth maps it to (within coding loss), and not its
    neighbour, so cut indices carried over from issue-195's ground truth are right."""
    source = str(video_path("pyscenedetect/issue-195-aspect-ratio.mp4"))
    wanted = {69, 70, 169, 171, 300, 301, 420, 421}
    frames = {i: im.astype(np.int16) for i, _, im in iter_frames(source, size=(512, 288), stop=422) if i in wanted}
    vfr = {i: im for i, _, im in iter_frames(str(video_path("built/vfr-drop3.mp4")))}
    rotated = {i: np.rot90(im, 1) for i, _, im in iter_frames(str(video_path("built/rotate-90.mp4")))}  # back to landscape
    for built, index, source_index in [(vfr, 46, 69), (vfr, 47, 70), (vfr, 113, 169), (vfr, 114, 171),
                                       (rotated, 60, 300), (rotated, 61, 301), (rotated, 180, 420), (rotated, 181, 421)]:
        distance = {s: np.abs(built[index] - frames[s]).mean() for s in wanted}
        assert distance[source_index] < 3, (index, distance)
        assert distance[source_index] == min(distance.values()), (index, distance)


def test_whip_pan_is_one_camera_move_fast_only_in_frames_150_to_161():
    """Consecutive frames differ by a pure translation of the window: 2 px right, plus 24 px down
    during the whip pan. One continuous shot, so its ground truth has no cut."""
    truth = ground_truth()["built/whip-pan.mp4"]
    assert truth["hard_cuts"] == [] and truth["whip_pan_frames"] == [150, 161]
    path = str(video_path("built/whip-pan.mp4"))
    frames = {i: cv2.cvtColor(im, cv2.COLOR_RGB2GRAY).astype(np.float32) for i, _, im in iter_frames(path)}
    assert len(frames) == truth["decoded_frames"] == 280
    with av.open(path) as container:
        assert container.streams.video[0].average_rate == 20
    offsets = trickymedia.whip_pan_offsets()
    for i in (1, 100, 149, 150, 155, 161, 162, 279):
        (dx, dy), _ = cv2.phaseCorrelate(frames[i], frames[i - 1])  # how far the content moved from i-1 to i
        step = np.subtract(offsets[i], offsets[i - 1])
        assert tuple(step) == ((2, 24) if 150 <= i <= 161 else (2, 0))
        assert abs(dx - step[0]) < 0.5 and abs(dy - step[1]) < 0.5, (i, dx, dy)
