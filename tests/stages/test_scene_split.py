"""scene_split on the bundled real footage and the videos built from it (tests/fixtures/media.py):
cuts against their ground truth, clip lengths, black/flat drops, and bad files, all through the
stage's batch call as the runner makes it."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import av
import pyarrow as pa
import pytest

import curation.stages.scene_split as scene_split_module
from curation.core.config import build_stage
from curation.core.schema import make_sample_id
from curation.media.probe import probe_video

from tests.fixtures.badmedia import random_bytes_mp4, text_mp4, truncated_mp4
from tests.fixtures.media import ground_truth, video_path
from tests.fixtures.packetmedia import undecodable_packet_mp4

ONE_SHOT = {"intel-sample-videos/car-detection.mp4", "intel-sample-videos/bottle-detection.mp4", "built/whip-pan.mp4"}


def video_row(path: Path | str, **probed) -> dict:
    """A `video` row as Ingest writes it (its columns are `probe_video`'s)."""
    path = str(path)
    info = probed or probe_video(path, 1 << 30).model_dump()
    return dict(sample_id=make_sample_id("video", path), parent_ids=[], kind="video", source_uri=path, status="ok",
                reason=None, stage="ingest", stage_version="1", **info)


def run(files: list[str], overrides: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    """Output rows of one batch, grouped by the input video's name."""
    name_of = {str(video_path(f)): f for f in files}
    stage = build_stage("scene_split", overrides=[f"scene_split.{o}" for o in overrides])
    stage.ensure_setup()
    out = stage(pa.Table.from_pylist([video_row(path) for path in name_of])).to_pylist()
    by_file: dict[str, list[dict]] = {f: [] for f in files}
    for row in out:
        by_file[name_of[row["source_uri"]]].append(row)
    return by_file


def detected_cuts(rows: list[dict]) -> list[int]:
    """Shot starts (before trimming/splitting), from every clip row, kept or dropped."""
    return sorted({r["shot_start_frame"] for r in rows if r["shot_start_frame"] > 0})


def assert_recall(cuts: list[int], truth: list[int], name: str) -> None:
    missed = [c for c in truth if not any(abs(c - d) <= 1 for d in cuts)]
    assert not missed, f"{name}: hard cuts {missed} not found within +-1 frame (detected {cuts})"


@pytest.fixture(scope="module")
def default_run() -> dict[str, list[dict]]:
    return run(sorted(ground_truth()))


# ---- detection ---------------------------------------------------------------------------------


def test_default_config_finds_every_hard_cut_and_no_false_cut_on_one_shot_videos(default_run):
    for name, truth in ground_truth().items():
        rows = default_run[name]
        assert rows and all(r["kind"] == "clip" and r["status"] in ("ok", "dropped") for r in rows), name
        cuts = detected_cuts(rows)
        assert_recall(cuts, truth["hard_cuts"], name)
        if name in ONE_SHOT:
            assert cuts == [], f"{name} is one shot, yet cuts were detected at {cuts}"


def test_clip_rows_are_consistent_with_the_decode(default_run):
    for name, truth in ground_truth().items():
        rows = sorted(default_run[name], key=lambda r: r["start_frame"])
        assert rows[-1]["shot_end_frame"] == truth["decoded_frames"], name
        previous_end = 0
        for r in rows:
            assert previous_end <= r["start_frame"] < r["end_frame"], name
            assert r["num_clip_frames"] == r["end_frame"] - r["start_frame"] == len(r["frame_pts"])
            assert r["frame_pts"] == sorted(r["frame_pts"]), f"{name}: pts not increasing"
            assert r["start_s"] < r["end_s"]
            assert r["shot_start_frame"] <= r["start_frame"] and r["end_frame"] <= r["shot_end_frame"]
            assert r["parent_ids"] and r["sample_id"] not in r["parent_ids"]
            previous_end = r["end_frame"]
        assert len({r["sample_id"] for r in rows}) == len(rows), f"{name}: duplicate sample ids"


def test_times_follow_the_stream_pts_on_variable_frame_rate_video(default_run):
    truth = ground_truth()["built/vfr-drop3.mp4"]
    rows = default_run["built/vfr-drop3.mp4"]
    tb = Fraction(rows[0]["time_base"])
    for cut, t in zip(truth["hard_cuts"], truth["hard_cut_times_s"]):
        shot = next(r for r in rows if r["shot_start_frame"] == cut)
        assert float(shot["frame_pts"][0] * tb) == pytest.approx(shot["start_s"])
        # trim_frames=1 starts the clip one frame after the cut, which sits at the truth's time
        assert shot["start_frame"] == cut + 1 and shot["start_s"] > t


def test_content_detector_equals_pyscenedetect_goldens():
    # PySceneDetect's resources goldens: testvideo.mp4 ContentDetector.default {"cuts": [30, 180, 394]}.
    # whip-pan.mp4: ContentDetector fires on very fast motion (why adaptive is the default). By
    # construction the only large frame-to-frame changes are the 24 px/frame whip pan, frames
    # 150-161 (HSV content score ~39-44 there against <= 15 elsewhere, threshold 27), so it cuts at
    # the first, 150; its minimum scene length, 0.6 s = 12 frames at 20 fps, hides 151-161.
    by_file = run(["pyscenedetect/testvideo.mp4", "built/whip-pan.mp4"], ("detector=content",))
    assert detected_cuts(by_file["pyscenedetect/testvideo.mp4"]) == [30, 180, 394]
    first, _ = ground_truth()["built/whip-pan.mp4"]["whip_pan_frames"]
    assert detected_cuts(by_file["built/whip-pan.mp4"]) == [first] == [150]


def test_transnetv2_finds_hard_cuts_and_ignores_fast_motion():
    files = ["pyscenedetect/issue-236-split-copy.mkv", "built/vfr-drop3.mp4", "built/whip-pan.mp4"]
    by_file = run(files, ("detector=transnetv2", "transnet_device=cpu"))
    truth = ground_truth()
    for name in files:
        assert_recall(detected_cuts(by_file[name]), truth[name]["hard_cuts"], name)
    assert detected_cuts(by_file["built/whip-pan.mp4"]) == []


# ---- clip lengths ------------------------------------------------------------------------------


def test_long_shots_split_into_equal_pieces_of_at_most_max_clip_s(default_run):
    rows = sorted(default_run["intel-sample-videos/bottle-detection.mp4"], key=lambda r: r["start_frame"])
    total = rows[-1]["end_s"] - rows[0]["start_s"]
    assert len(rows) == 4  # 39.9 s with max_clip_s=10
    # one shot, no cut inside it: pieces tile the shot with no trimming between them
    assert [r["start_frame"] for r in rows[1:]] == [r["end_frame"] for r in rows[:-1]]
    assert rows[0]["start_frame"] == 0 and rows[-1]["end_frame"] == 1189
    for r in rows:
        assert r["status"] == "ok" and r["end_s"] - r["start_s"] <= 10.0
        assert r["end_s"] - r["start_s"] == pytest.approx(total / 4, abs=1 / r["fps"])


def test_max_clip_s_null_keeps_a_shot_whole():
    rows = run(["intel-sample-videos/car-detection.mp4"], ("max_clip_s=null",))["intel-sample-videos/car-detection.mp4"]
    assert [(r["start_frame"], r["end_frame"], r["status"]) for r in rows] == [(0, 377, "ok")]


def test_short_clips_are_dropped_and_kept_clips_are_long_enough(default_run):
    for name, rows in default_run.items():
        for r in rows:
            clip_len_s = r["end_s"] - r["start_s"]
            if r["status"] == "ok":
                assert clip_len_s >= 2.0, name
            elif clip_len_s < 2.0:
                assert r["reason"].startswith("too_short: "), (name, r["reason"])
    # issue-236 is 2 s in all, cut at 19: both halves are too short
    assert {r["reason"].split(":")[0] for r in default_run["pyscenedetect/issue-236-split-copy.mkv"]} == {"too_short"}


def test_trim_frames_cuts_only_at_detected_cuts():
    name = "pyscenedetect/issue-195-aspect-ratio.mp4"
    cuts = [70, 170, 301, 421, 484]
    for trim in (0, 2):
        rows = sorted(run([name], (f"trim_frames={trim}", "min_clip_s=0"))[name], key=lambda r: r["start_frame"])
        bounds = [0, *cuts, 628]
        expected = [(a + (trim if a > 0 else 0), b - (trim if b < 628 else 0)) for a, b in zip(bounds, bounds[1:])]
        assert [(r["start_frame"], r["end_frame"]) for r in rows] == expected


# ---- black and flat clips ----------------------------------------------------------------------


def test_black_clips_on_testvideo_are_dropped_with_their_luma():
    # testvideo.mp4 is black at 0-29 and 693-719 (ground truth black_runs); adaptive cuts at 30 and 691.
    name = "pyscenedetect/testvideo.mp4"
    rows = sorted(run([name], ("min_clip_s=0.5",))[name], key=lambda r: r["start_frame"])
    black = [r for r in rows if r["status"] == "dropped"]
    assert [(r["start_frame"], r["end_frame"]) for r in black] == [(0, 29), (692, 720)]
    for r in black:
        assert r["reason"].startswith("black_clip: mean luma ") and r["reason"].endswith(" < 12")
        assert r["mean_luma"] < 12
    assert all(r["status"] == "ok" and r["mean_luma"] > 30 for r in rows if r not in black)


def test_flat_clips_are_dropped_as_static_when_black_drop_is_off():
    name = "pyscenedetect/testvideo.mp4"
    rows = run([name], ("min_clip_s=0.5", "drop_black=false"))[name]
    reasons = sorted(r["reason"].split(":")[0] for r in rows if r["status"] == "dropped")
    assert reasons == ["static_clip", "static_clip"]
    rows = run([name], ("min_clip_s=0.5", "drop_black=false", "drop_static=false"))[name]
    assert all(r["status"] == "ok" for r in rows)


# ---- failures ----------------------------------------------------------------------------------


def _zero_frame_mkv(tmp: Path) -> Path:
    """A video stream whose every packet is garbage: it opens, but decodes to no frame."""
    path = tmp / "no_frames.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuvj420p"
        for i in range(10):
            packet = av.Packet(b"not a jpeg picture" * 4)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 25)
            out.mux(packet)
    return path


def test_bad_files_become_error_rows_and_do_not_stop_the_batch(tmp_path):
    good = video_path("pyscenedetect/issue-236-split-copy.mkv")
    probed = probe_video(str(good), 1 << 30).model_dump()
    # files that went bad after ingest probed them: same columns, broken bytes
    bad = {
        "truncated": (truncated_mp4(tmp_path, source="pyscenedetect/testvideo.mp4"), "decode_failed: "),
        "random": (random_bytes_mp4(tmp_path), "decode_failed: "),
        "text": (text_mp4(tmp_path), "decode_failed: "),
        "missing": (tmp_path / "gone.mp4", "decode_failed: "),
        "no_frames": (_zero_frame_mkv(tmp_path), "no_frames: "),
    }
    rows = [video_row(good)] + [video_row(path, **probed) for path, _ in bad.values()]
    rows.append(dict(video_row(good), sample_id="no-probe-columns", time_base=None, fps=None))
    stage = build_stage("scene_split")
    stage.ensure_setup()
    out = stage(pa.Table.from_pylist(rows)).to_pylist()

    errors = {r["source_uri"]: r for r in out if r["status"] == "error"}
    for path, prefix in bad.values():
        row = errors[str(path)]
        assert row["kind"] == "video" and row["reason"].startswith(prefix), row["reason"]
    assert next(r for r in out if r["sample_id"] == "no-probe-columns")["reason"].startswith("missing_columns: fps, time_base")
    assert [r["kind"] for r in out if r["source_uri"] == str(good) and r["status"] != "error"] == ["clip", "clip"]


# ---- long videos in segments -------------------------------------------------------------------


def rows_in_segments(name: str, frames_per_segment: int | None, monkeypatch, *overrides: str) -> tuple[list[dict], list]:
    """Output rows of `name` with segments of that many frames (None: one pass), and the plan used.
    `segment_s` is set so that it is exactly that many frames at the video's rate."""
    row = video_row(video_path(name))
    segment_s = "null" if frames_per_segment is None else repr(frames_per_segment / row["fps"])
    stage = build_stage("scene_split", overrides=[f"scene_split.{o}" for o in (f"segment_s={segment_s}", *overrides)])
    stage.ensure_setup()
    plans: list = []
    real_plan = scene_split_module.plan_segments
    monkeypatch.setattr(scene_split_module, "plan_segments", lambda *a: plans.append(real_plan(*a)) or plans[-1])
    out = stage(pa.Table.from_pylist([row])).to_pylist()
    return out, plans


def assert_same_rows_in_segments(name: str, spans: list[int], monkeypatch, caplog, *overrides: str) -> None:
    one_pass, plans = rows_in_segments(name, None, monkeypatch, *overrides)
    assert plans == [] and one_pass
    for span in spans:
        rows, plans = rows_in_segments(name, span, monkeypatch, *overrides)
        assert [s.first for s in plans[0]] == list(range(0, one_pass[0]["num_frames"], span)), span
        assert "one pass instead of segments" not in caplog.text
        assert rows == one_pass, f"{name}: segments of {span} frames give other rows than one pass"


def test_segment_edges_on_a_cut_and_a_frame_either_side_give_the_rows_of_one_pass(monkeypatch, caplog):
    # testvideo.mp4: hard cut at 180 (ground truth), so segments of 179/180/181 frames put an edge
    # one frame before, on, and one frame after it.
    cuts = detected_cuts(run(["pyscenedetect/testvideo.mp4"])["pyscenedetect/testvideo.mp4"])
    assert 30 in cuts and 180 in cuts
    assert_same_rows_in_segments("pyscenedetect/testvideo.mp4", [179, 180, 181], monkeypatch, caplog)


def test_a_segment_edge_inside_the_minimum_scene_length_after_a_cut_changes_nothing(monkeypatch, caplog):
    # whip-pan.mp4 with ContentDetector: cut at 150, and its 12-frame minimum scene length hides the
    # large scores of 151-161. Edges at 150, 151 and 155 (150 = 3 * 50, 151, 155 = 5 * 31): the
    # flash filter's memory runs across the edge, which only a decision over all scores keeps.
    assert_same_rows_in_segments("built/whip-pan.mp4", [50, 151, 31], monkeypatch, caplog, "detector=content")


def test_variable_frame_rate_video_in_segments_keeps_exact_indices_and_times(monkeypatch, caplog):
    # vfr-drop3: cuts at 47 and 114 (keyframes there too); edges on them and one frame after
    assert_same_rows_in_segments("built/vfr-drop3.mp4", [47, 48, 57, 115], monkeypatch, caplog)


@pytest.mark.slow  # TransNetV2 on the CPU: ~15 windows of 100 frames
def test_transnetv2_in_segments_gives_the_rows_of_one_pass(monkeypatch, caplog):
    # 160 frames: segments of 47 frames start windows at 25, 75 and 125, mid-video on TransNetV2's grid
    assert_same_rows_in_segments("built/vfr-drop3.mp4", [47], monkeypatch, caplog, "detector=transnetv2",
                                 "transnet_device=cpu")


def test_packets_that_decode_to_fewer_frames_fall_back_to_one_pass(tmp_path, monkeypatch, caplog):
    path = undecodable_packet_mp4(tmp_path)
    row = video_row(path)
    assert row["num_frames"] == 161  # the header counts packets; 160 frames decode
    outputs = {}
    for segment_s in ("null", repr(40 / row["fps"])):
        stage = build_stage("scene_split", overrides=[f"scene_split.segment_s={segment_s}"])
        stage.ensure_setup()
        outputs[segment_s] = stage(pa.Table.from_pylist([row])).to_pylist()
    assert "one pass instead of segments" in caplog.text
    one_pass, split = outputs.values()
    assert split == one_pass and max(r["end_frame"] for r in split) == 160


def test_segments_run_as_ray_tasks_when_ray_is_up(ray_local, monkeypatch, caplog):
    # Pools of earlier tests give their CPUs back asynchronously: wait for them (bounded), so the
    # segments really run as Ray tasks instead of in-process.
    deadline = time.monotonic() + 60
    while ray_local.available_resources().get("CPU", 0) < 0.5 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_local.available_resources().get("CPU", 0) >= 0.5, "no CPU came free for the segment tasks"
    assert_same_rows_in_segments("pyscenedetect/testvideo.mp4", [180], monkeypatch, caplog, "segment_cpus=0.5")
