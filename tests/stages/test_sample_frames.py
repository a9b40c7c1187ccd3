"""SampleFrames on clips of test videos: the right frames (checked against a sequential decode),
2-6 per count session and up to 20 per interval session, cut to the border crop, VFR-true times,
reproducible choices, and short clips dropped with a reason."""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from curation.cli import app
from curation.core.config import build_stage
from curation.core.schema import SampleRow, arrow_schema, rows_to_table
from curation.media.decode import iter_frames
from curation.media.probe import probe_video

from tests.fixtures.media import ground_truth, video_path

CLIP_FIELDS = [
    pa.field("fps", pa.float64()), pa.field("time_base", pa.string()), pa.field("width", pa.int64()),
    pa.field("height", pa.int64()), pa.field("start_frame", pa.int64()), pa.field("end_frame", pa.int64()),
    pa.field("frame_pts", pa.list_(pa.int64())),
]


class Video:
    """A test video with every frame decoded once (small ones only) and its pts, as scene_split records them."""

    def __init__(self, name: str):
        self.path = str(video_path(name))
        self.info = probe_video(self.path, 1 << 26)
        decoded = list(iter_frames(self.path))
        self.pts = [pts for _, pts, _ in decoded]
        self.frames = [image for _, _, image in decoded]

    def clip(self, start: int, end: int, with_pts: bool = True) -> dict:
        return dict(
            sample_id=f"clip-{start}-{end}", parent_ids=["video-1"], kind="clip", source_uri=self.path,
            status="ok", reason=None, stage="scene_split", stage_version="1", fps=self.info.fps,
            time_base=self.info.time_base, width=self.info.width, height=self.info.height,
            start_frame=start, end_frame=end, frame_pts=self.pts[start:end] if with_pts else None,
        )


@pytest.fixture(scope="module")
def vfr() -> Video:
    video = Video("built/vfr-drop3.mp4")  # VFR, 160 frames of 512x288, cuts at 47 and 114
    assert ground_truth()["built/vfr-drop3.mp4"]["hard_cuts"] == [47, 114]
    return video


@pytest.fixture(scope="module")
def rotated() -> Video:
    video = Video("built/rotate-90.mp4")  # stored 512x288, shown 288x512; cuts at 61 and 181
    assert ground_truth()["built/rotate-90.mp4"]["hard_cuts"] == [61, 181]
    return video


def table(rows: list[dict]) -> pa.Table:
    schema = arrow_schema(SampleRow)
    for field in CLIP_FIELDS:
        schema = schema.append(field)
    return rows_to_table(rows, schema)


def stage(*overrides: str):
    built = build_stage("sample_frames", overrides=list(overrides))
    built.ensure_setup()
    return built


def decode_jpeg(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def assert_frames_are_the_decoded_ones(row: dict, video: Video) -> None:
    assert len(row["frames"]) == len(row["frame_indices"]) == len(row["frame_times_s"])
    for index, data in zip(row["frame_indices"], row["frames"]):
        image = decode_jpeg(data).astype(np.int16)
        assert image.shape == video.frames[index].shape
        distance = {j: np.abs(image - video.frames[j]).mean() for j in (index - 1, index, index + 1) if 0 <= j < len(video.frames)}
        assert distance[index] < 2.5, index  # only JPEG loss...
        assert distance[index] == min(distance.values()), (index, distance)  # ...and not a neighbour


@pytest.mark.parametrize("with_pts", [True, False])
def test_count_sessions_hold_the_right_frames(vfr, with_pts):
    clips = [vfr.clip(0, 47, with_pts), vfr.clip(47, 114, with_pts), vfr.clip(114, 160, with_pts)]
    out = stage("sample_frames.mode=count")(table(clips)).to_pylist()
    assert len(out) == 3
    for clip, row in zip(clips, out):
        assert row["status"] == "ok" and row["kind"] == "session" and row["sampling"] == "count"
        assert row["parent_ids"] == [clip["sample_id"]] and row["stage"] == "sample_frames"
        indices = row["frame_indices"]
        assert 2 <= len(indices) <= 6 and indices == sorted(set(indices))
        assert clip["start_frame"] <= indices[0] and indices[-1] < clip["end_frame"]
        assert (row["frame_width"], row["frame_height"]) == (512, 288)
        assert_frames_are_the_decoded_ones(row, vfr)


def test_interval_times_come_from_pts_on_vfr(vfr):
    # shot 2 is frames 47-113, shown from 2.920 s (source frame 70) to 7.049 s (source frame 169):
    # 4.13 s, so three frames 2 s apart; frames are 1 or 2 ticks of 1001/24000 apart
    (row,) = stage("sample_frames.mode=interval", "sample_frames.interval_s=2.0")(table([vfr.clip(47, 114)])).to_pylist()
    assert row["sampling"] == "interval" and len(row["frame_indices"]) == 3
    time_base = Fraction(vfr.info.time_base)
    assert row["frame_times_s"] == [float(vfr.pts[i] * time_base) for i in row["frame_indices"]]
    gaps = np.diff(row["frame_times_s"])
    assert np.all(np.abs(gaps - 2.0) <= 2 * 1001 / 24000)  # nearest frame to each 2 s step
    assert_frames_are_the_decoded_ones(row, vfr)


def test_rotated_frames_are_upright_and_max_side_keeps_aspect(rotated):
    (row,) = stage("sample_frames.mode=count", "sample_frames.max_side=320")(table([rotated.clip(61, 181)])).to_pylist()
    assert (row["frame_width"], row["frame_height"]) == (180, 320)  # 288x512 shown, long side to 320
    for data, index in zip(row["frames"], row["frame_indices"]):
        image = decode_jpeg(data)
        assert image.shape == (320, 180, 3)
        expected = cv2.resize(rotated.frames[index], (180, 320), interpolation=cv2.INTER_AREA)
        assert np.abs(image.astype(np.int16) - expected.astype(np.int16)).mean() < 2.5


def test_short_clips_are_dropped_with_a_reason(vfr):
    short = [vfr.clip(10, 11), vfr.clip(20, 40)]  # 1 frame; 20 frames (source frames 30-58: ~1.2 s)
    count_rows = stage("sample_frames.mode=count")(table(short)).to_pylist()
    assert count_rows[0]["status"] == "dropped" and count_rows[0]["reason"].startswith("too_short: 1 frames")
    assert count_rows[0]["sample_id"] == "clip-10-11" and count_rows[0]["kind"] == "clip"
    assert count_rows[1]["status"] == "ok"
    interval_rows = stage("sample_frames.mode=interval")(table(short)).to_pylist()
    assert [r["status"] for r in interval_rows] == ["dropped", "dropped"]
    assert interval_rows[1]["reason"].startswith("too_short: 20 frames")
    # hybrid falls back to count sampling where an interval would give a single frame
    hybrid = stage("sample_frames.interval_prob=1.0")(table(short[1:])).to_pylist()
    assert hybrid[0]["status"] == "ok" and hybrid[0]["sampling"] == "count"


def test_clip_past_the_end_of_the_video_is_an_error_row(vfr):
    bad = vfr.clip(150, 160, with_pts=False)
    bad["end_frame"] = 400
    (row,) = stage("sample_frames.mode=count")(table([bad])).to_pylist()
    assert row["status"] == "error" and row["reason"].startswith("decode_failed:")


def test_choices_are_reproducible_and_cover_the_range():
    sampler = stage("sample_frames.mode=hybrid")
    times = np.arange(301) / 30.0  # a 10 s clip
    picks = {f"clip-{i}": sampler.choose(times, sampler.rng(f"clip-{i}")) for i in range(200)}
    assert picks == {sid: sampler.choose(times, sampler.rng(sid)) for sid in picks}
    strategies = {strategy for strategy, _ in picks.values()}
    assert strategies == {"interval", "count"}
    counts = {len(offsets) for strategy, offsets in picks.values() if strategy == "count"}
    assert counts == {2, 3, 4, 5, 6}
    for strategy, offsets in picks.values():
        assert offsets == sorted(set(offsets)) and offsets[0] >= 0 and offsets[-1] < 301
        if strategy == "interval":  # 10 s at 3 s steps: 4 frames, centred
            assert offsets == [15, 105, 195, 285]
    reseeded = stage("sample_frames.seed=1")
    assert [reseeded.choose(times, reseeded.rng(sid)) for sid in picks] != list(picks.values())


def test_count_min_above_count_max_is_a_config_error():
    with pytest.raises(ValidationError, match="count_min_frames=5 > count_max_frames=3"):
        build_stage("sample_frames", overrides=["sample_frames.count_min_frames=5", "sample_frames.count_max_frames=3"])


def test_the_old_shared_cap_fails_and_names_the_new_keys():
    """Version 1's one `max_frames` capped both strategies; an old config must not silently mean one of them."""
    options = {k: v for k, v in build_stage("sample_frames").model_dump().items()}
    with pytest.raises(ValidationError, match=r"sample_frames.max_frames was renamed: set count_max_frames .* and interval_max_frames"):
        type(build_stage("sample_frames"))(**options, max_frames=6)
    # on the command line, the same hint in the one-line config error
    result = CliRunner().invoke(app, ["run", "pipeline=sessions", "sample_frames.min_frames=2", "input=x", "output=y"])
    assert result.exit_code != 0
    assert "unknown config key: sample_frames.min_frames: renamed, set sample_frames.count_min_frames" in result.output


def test_interval_and_count_caps_are_separate():
    """VINCIE: count sampling 2-6 frames (§3.1); interval sampling every 3 s reaches 20-image sessions (§4.1)."""
    sampler = stage("sample_frames.mode=interval")
    times = np.arange(90 * 30 + 1) / 30.0  # a 90 s shot
    strategy, offsets = sampler.choose(times, sampler.rng("long-shot"))
    assert strategy == "interval" and len(offsets) == 20
    assert np.allclose(np.diff(times[offsets]), 3.0)
    counting = stage("sample_frames.mode=count")
    counts = {len(counting.choose(times, counting.rng(f"clip-{i}"))[1]) for i in range(100)}
    assert counts == {2, 3, 4, 5, 6}
    capped = stage("sample_frames.mode=interval", "sample_frames.interval_max_frames=7")
    assert len(capped.choose(times, capped.rng("long-shot"))[1]) == 7


def test_frames_are_cut_to_the_border_crop_and_turns_carry_the_homography_camera(vfr):
    clip = {**vfr.clip(47, 114), "crop_box": [16, 24, 496, 264], "camera_motion": "pan-left",
            "camera_motion_raw": "pan-left"}
    schema = table([]).schema.append(pa.field("crop_box", pa.list_(pa.int64())))
    schema = schema.append(pa.field("camera_motion", pa.string())).append(pa.field("camera_motion_raw", pa.string()))
    (row,) = stage("sample_frames.mode=count")(rows_to_table([clip], schema)).to_pylist()
    assert row["status"] == "ok" and row["frame_crop_box"] == [16, 24, 496, 264]
    assert (row["frame_width"], row["frame_height"]) == (480, 240)
    for data, index in zip(row["frames"], row["frame_indices"]):
        expected = vfr.frames[index][24:264, 16:496]
        assert np.abs(decode_jpeg(data).astype(np.int16) - expected.astype(np.int16)).mean() < 2.5
    assert [t["index"] for t in row["turns"]] == list(range(len(row["frames"]) - 1))
    assert {(t["camera"], t["camera_raw"], t["annotation"]) for t in row["turns"]} == {("pan-left", "homography: pan-left", None)}

    (whole,) = stage("sample_frames.mode=count", "sample_frames.apply_crop=false")(rows_to_table([clip], schema)).to_pylist()
    assert whole["frame_crop_box"] is None and (whole["frame_width"], whole["frame_height"]) == (512, 288)
    (plain,) = stage("sample_frames.mode=count")(table([vfr.clip(47, 114)])).to_pylist()
    assert plain["frame_crop_box"] is None and plain["turns"] is None  # no filter_quality: nothing to apply or label

    bad = {**clip, "crop_box": [0, 0, 600, 288]}
    (row,) = stage("sample_frames.mode=count")(rows_to_table([bad], schema)).to_pylist()
    assert row["status"] == "error" and row["reason"].startswith("bad_crop_box:")
