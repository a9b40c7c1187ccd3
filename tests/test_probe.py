"""probe_video on the team's real footage (geometry, frame counts, VFR) and on built bad inputs."""

from __future__ import annotations

import json

import fsspec
import pytest

from badmedia import BAD_MEDIA
from conftest import SHARED_VIDEOS, shared_media
from curation.media.probe import probe_video
from curation.stage import StageError

MAX_PIXELS = 8192 * 8192


def truth() -> dict[str, dict]:
    media = shared_media()
    return {v["file"]: v for v in json.loads((media / "ground_truth.json").read_text())["videos"]}




@pytest.mark.parametrize("name", SHARED_VIDEOS)
def test_frame_count_matches_sequential_decode_and_only_the_drop_file_is_vfr(name):
    video = truth()[name]
    info = probe_video(str(shared_media() / "videos" / name), MAX_PIXELS)
    assert info.num_frames == video["decoded_frames"]
    assert info.vfr == (name == "pyscenedetect/goldeneye-vfr-drop3.mp4")
    assert info.codec == "h264" and info.pix_fmt and 0 < info.duration_s


@pytest.mark.parametrize(
    "name, fps, display, coded, rotation, sar",
    [
        ("pyscenedetect/testvideo.mp4", 29.97, (1280, 720), (1280, 720), 0, "1:1"),
        ("pyscenedetect/issue-134-rotate.mp4", 23.976, (544, 1280), (1280, 544), -90, "1:1"),
        ("pyscenedetect/issue-195-aspect-ratio.mp4", 25.0, (1024, 576), (704, 576), 0, "16:11"),
        ("pyscenedetect/issue-236-split-copy.mkv", 23.976, (1920, 1080), (1920, 1080), 0, "1:1"),
        ("intel-sample-videos/car-detection.mp4", 12.5, (768, 432), (768, 432), 0, "1:1"),
    ],
)
def test_geometry_is_reported_as_displayed(name, fps, display, coded, rotation, sar):
    info = probe_video(str(shared_media() / "videos" / name), MAX_PIXELS)
    assert (info.width, info.height) == display
    assert (info.coded_width, info.coded_height) == coded
    assert info.rotation == rotation and info.sar == sar
    assert info.fps == pytest.approx(fps, abs=0.01)


def test_vfr_file_reports_average_rate_and_true_duration():
    info = probe_video(str(shared_media() / "videos/pyscenedetect/goldeneye-vfr-drop3.mp4"), MAX_PIXELS)
    # 160 frames over ~9.97 s: the average rate, not the 23.976 of the stream's nominal rate
    assert info.duration_s == pytest.approx(9.968, abs=0.01)
    assert info.fps == pytest.approx(160 / info.duration_s, rel=0.01)
    assert info.time_base == "1/24000"


def test_has_audio():
    videos = shared_media() / "videos"
    assert probe_video(str(videos / "pyscenedetect/issue-134-rotate.mp4"), MAX_PIXELS).has_audio
    assert not probe_video(str(videos / "pyscenedetect/testvideo.mp4"), MAX_PIXELS).has_audio


def test_max_pixels_applies_to_the_displayed_size():
    videos = shared_media() / "videos"
    probe_video(str(videos / "pyscenedetect/testvideo.mp4"), 1280 * 720)
    with pytest.raises(StageError, match=r"^too_large: 1280x720 exceeds max_pixels=921599$"):
        probe_video(str(videos / "pyscenedetect/testvideo.mp4"), 1280 * 720 - 1)
    # anamorphic: 704x576 coded fits, but it is shown 1024x576
    with pytest.raises(StageError, match=r"^too_large: 1024x576 exceeds"):
        probe_video(str(videos / "pyscenedetect/issue-195-aspect-ratio.mp4"), 704 * 576)


def test_fsspec_uri_is_read_through_a_file_object():
    src = shared_media() / "videos/pyscenedetect/issue-134-rotate.mp4"
    fs = fsspec.filesystem("memory")
    fs.pipe("/probe-test/rotate.mp4", src.read_bytes())
    try:
        info = probe_video("memory:///probe-test/rotate.mp4", MAX_PIXELS)
        assert (info.width, info.height, info.num_frames) == (544, 1280, 240)
        with pytest.raises(StageError, match="^not_found"):
            probe_video("memory:///probe-test/missing.mp4", MAX_PIXELS)
    finally:
        fs.rm("/probe-test", recursive=True)


def test_missing_file(tmp_path):
    with pytest.raises(StageError, match="^not_found"):
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
