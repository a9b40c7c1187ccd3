"""probe_video on the bundled real footage and the videos built from it (geometry, frame counts,
VFR, rotation), and on built bad inputs."""

from __future__ import annotations

import av
import fsspec
import pytest

from curation.core.stage import StageError
from curation.media.probe import probe_video

from tests.fixtures.badmedia import BAD_MEDIA
from tests.fixtures.media import VIDEOS, ground_truth, video_path

MAX_PIXELS = 8192 * 8192


@pytest.mark.parametrize("name", VIDEOS)
def test_frame_count_matches_sequential_decode_and_only_the_drop_file_is_vfr(name):
    video = ground_truth()[name]
    info = probe_video(str(video_path(name)), MAX_PIXELS)
    assert info.num_frames == video["decoded_frames"]
    assert info.vfr == (name == "built/vfr-drop3.mp4")
    assert info.codec == "h264" and info.pix_fmt
    # A media fact, in the stream's own timestamp ticks: the reported length covers the span from the
    # first frame's pts to the last one's, plus the last frame, which lasts no longer than the
    # longest pts step. The pts are read from the demuxed packets, not through the code under test.
    with av.open(str(video_path(name))) as container:
        stream = container.streams.video[0]
        pts = sorted(packet.pts for packet in container.demux(stream) if packet.pts is not None)
        length_ticks = round(info.duration_s / stream.time_base)
    longest_step = max(b - a for a, b in zip(pts, pts[1:]))
    assert pts[-1] - pts[0] < length_ticks <= pts[-1] - pts[0] + longest_step


@pytest.mark.parametrize(
    "name, fps, display, coded, rotation, sar",
    [
        ("pyscenedetect/testvideo.mp4", 29.97, (1280, 720), (1280, 720), 0, "1:1"),
        ("built/rotate-90.mp4", 23.976, (288, 512), (512, 288), -90, "1:1"),  # stored landscape, shown portrait
        ("pyscenedetect/issue-195-aspect-ratio.mp4", 25.0, (1024, 576), (704, 576), 0, "16:11"),
        ("pyscenedetect/issue-236-split-copy.mkv", 23.976, (1920, 1080), (1920, 1080), 0, "1:1"),
        ("intel-sample-videos/car-detection.mp4", 12.5, (768, 432), (768, 432), 0, "1:1"),
    ],
)
def test_geometry_is_reported_as_displayed(name, fps, display, coded, rotation, sar):
    info = probe_video(str(video_path(name)), MAX_PIXELS)
    assert (info.width, info.height) == display
    assert (info.coded_width, info.coded_height) == coded
    assert info.rotation == rotation and info.sar == sar
    assert info.fps == pytest.approx(fps, abs=0.01)


def test_vfr_file_reports_average_rate_and_true_duration():
    info = probe_video(str(video_path("built/vfr-drop3.mp4")), MAX_PIXELS)
    # 160 frames over ~9.97 s: the average rate, not the 23.976 of the stream's nominal rate. By
    # construction the last frame kept is source frame 238, shown at 238 * 1001 ticks for 1001 more.
    assert info.duration_s == pytest.approx(239 * 1001 / 24000, abs=0.01)
    assert info.fps == pytest.approx(160 / info.duration_s, rel=0.01)
    assert info.time_base == "1/24000"


def test_has_audio():
    # issue-236 splits into video, AAC audio and three subtitle streams; car-detection has AAC too
    assert probe_video(str(video_path("pyscenedetect/issue-236-split-copy.mkv")), MAX_PIXELS).has_audio
    assert probe_video(str(video_path("intel-sample-videos/car-detection.mp4")), MAX_PIXELS).has_audio
    assert not probe_video(str(video_path("pyscenedetect/testvideo.mp4")), MAX_PIXELS).has_audio


def test_max_pixels_applies_to_the_displayed_size():
    testvideo = str(video_path("pyscenedetect/testvideo.mp4"))
    probe_video(testvideo, 1280 * 720)
    with pytest.raises(StageError, match=r"^too_large: 1280x720 exceeds max_pixels=921599$"):
        probe_video(testvideo, 1280 * 720 - 1)
    # anamorphic: 704x576 coded fits, but it is shown 1024x576
    with pytest.raises(StageError, match=r"^too_large: 1024x576 exceeds"):
        probe_video(str(video_path("pyscenedetect/issue-195-aspect-ratio.mp4")), 704 * 576)


def test_fsspec_uri_is_read_through_a_file_object():
    src = video_path("built/rotate-90.mp4")
    fs = fsspec.filesystem("memory")
    fs.pipe("/probe-test/rotate.mp4", src.read_bytes())
    try:
        info = probe_video("memory:///probe-test/rotate.mp4", MAX_PIXELS)
        assert (info.width, info.height, info.num_frames) == (288, 512, 240)
        with pytest.raises(StageError, match=r"^not_found"):
            probe_video("memory:///probe-test/missing.mp4", MAX_PIXELS)
    finally:
        fs.rm("/probe-test", recursive=True)


def test_missing_file(tmp_path):
    with pytest.raises(StageError, match=r"^not_found"):
        probe_video(str(tmp_path / "nope.mp4"), MAX_PIXELS)


@pytest.mark.parametrize("case", sorted(BAD_MEDIA))
def test_bad_input_raises_a_stable_reason(case, tmp_path):
    build, prefix = BAD_MEDIA[case]
    path = build(tmp_path)
    with pytest.raises(StageError) as err:
        probe_video(str(path), MAX_PIXELS)
    assert err.value.reason.startswith(prefix), err.value.reason
    assert str(tmp_path) not in err.value.reason  # reasons are counted: no per-file text in them


def test_png_bomb_is_small_on_disk_and_reports_its_claimed_size(tmp_path):
    build, _ = BAD_MEDIA["png_bomb"]
    path = build(tmp_path)
    assert path.stat().st_size < 256 * 1024
    with pytest.raises(StageError, match=r"^too_large: 30000x30000 exceeds max_pixels="):
        probe_video(str(path), MAX_PIXELS)
