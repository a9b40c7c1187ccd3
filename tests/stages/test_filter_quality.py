"""The filter_quality stage on real clips: every check's score lands in `scores`, the crop box and
camera class in their columns, failures drop with the first reason, bad media is an error row, and
the stage runs through Ray inside the sessions pipeline's first stages."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow as pa
import pytest

from curation.core import storage
from curation.core.config import build_stage, compose
from curation.core.runner import run
from curation.core.schema import make_sample_id
from curation.media.edit_media import encode_h264

from tests.fixtures.media import EXAMPLES

BOTTLE = EXAMPLES / "intel-sample-videos" / "bottle-detection.mp4"
CHECKS = {"border_fraction", "luma", "laplacian_var", "text_area", "text_area_max", "nsfw", "motion_px_per_s"}


def clip_row(path, start: int, end: int, fps: float, width: int, height: int) -> dict:
    return {"sample_id": make_sample_id("clip", str(path), (start, end)), "parent_ids": [], "kind": "clip",
            "source_uri": str(path), "status": "ok", "reason": None, "stage": "scene_split", "stage_version": "1",
            "start_frame": start, "end_frame": end, "fps": fps, "width": width, "height": height}


def letterboxed_clip(tmp_path, frames: int = 40):
    """A real moving shot (the bottle clip's first frames) with 60-px black bars above and below."""
    cap = cv2.VideoCapture(str(BOTTLE))
    out = []
    for _ in range(frames):
        ok, bgr = cap.read()
        assert ok
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        boxed = np.zeros((rgb.shape[0] + 120, rgb.shape[1], 3), np.uint8)
        boxed[60:60 + rgb.shape[0]] = rgb
        out.append(boxed)
    cap.release()
    path = tmp_path / "letterboxed.mp4"
    path.write_bytes(encode_h264(out, 29.83))
    return path, out[0].shape


def test_a_real_clip_gets_every_score_the_crop_box_and_a_camera_label(tmp_path):
    path, (height, width, _) = letterboxed_clip(tmp_path)
    stage = build_stage("filter_quality", overrides=["filter_quality.quality.motion.min_px_per_s=0.0"])
    stage.ensure_setup()
    (row,) = stage(pa.Table.from_pylist([clip_row(path, 0, 40, 29.83, width, height)])).to_pylist()
    assert row["status"] == "ok", row["reason"]
    assert set(dict(row["scores"])) >= CHECKS
    x0, y0, x1, y1 = row["crop_box"]
    assert (x0, x1) == (0, width) and abs(y0 - 60) <= 2 and abs(y1 - (height - 60)) <= 2  # the bars are cropped off
    assert row["camera_motion_raw"] == "static" and row["camera_motion"] == "none"  # a tripod shot


def test_a_failed_check_drops_the_clip_and_keeps_all_its_scores(tmp_path):
    frames = [np.full((120, 160, 3), 4, np.uint8) for _ in range(30)]  # a black card
    path = tmp_path / "black.mp4"
    path.write_bytes(encode_h264(frames, 25.0))
    stage = build_stage("filter_quality", overrides=["filter_quality.quality.text_overlay.enabled=false",
                                                     "filter_quality.quality.nsfw.enabled=false"])
    (row,) = stage(pa.Table.from_pylist([clip_row(path, 0, 30, 25.0, 160, 120)])).to_pylist()
    assert row["status"] == "dropped" and row["reason"].startswith("too_dark: luma")
    assert "text_area" not in dict(row["scores"]) and "luma" in dict(row["scores"])  # switched-off checks write nothing


def test_unreadable_media_is_an_error_row_and_the_batch_goes_on(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 1000)
    path, (height, width, _) = letterboxed_clip(tmp_path, frames=20)
    stage = build_stage("filter_quality", overrides=["filter_quality.quality.motion.min_px_per_s=0.0"])
    rows = stage(pa.Table.from_pylist([clip_row(broken, 0, 30, 25.0, 160, 120),
                                       clip_row(path, 0, 20, 29.83, width, height)])).to_pylist()
    assert rows[0]["status"] == "error" and rows[0]["reason"]
    assert rows[1]["status"] == "ok"


def test_a_session_is_checked_on_its_stored_frames_and_a_pair_on_its_target(tmp_path):
    from curation.media.jpeg import encode_jpeg

    cap = cv2.VideoCapture(str(BOTTLE))
    frames = []
    for _ in range(3):
        _ok, bgr = cap.read()
        frames.append(encode_jpeg(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    cap.release()
    session = {**clip_row(BOTTLE, 0, 3, 29.83, 640, 360), "kind": "session", "frames": frames, "frame_times_s": [0.0, 1.0, 2.0]}
    photo = EXAMPLES / "skimage" / "chelsea.png"
    pair = {**clip_row(photo, 0, 1, 1.0, 0, 0), "kind": "pair", "target_uri": str(photo)}
    stage = build_stage("filter_quality", overrides=["filter_quality.quality.motion.min_px_per_s=0.0"])
    rows = [stage(pa.Table.from_pylist([row])).to_pylist()[0] for row in (session, pair)]
    assert rows[0]["status"] == "ok" and "motion_px_per_s" in dict(rows[0]["scores"])
    assert rows[1]["status"] == "ok" and "motion_px_per_s" not in dict(rows[1]["scores"])  # a still has no motion
    assert rows[1]["camera_motion"] is None


@pytest.mark.slow
def test_filter_quality_runs_through_ray_after_scene_split(tmp_path, ray_local):
    out = tmp_path / "run"
    cfg = compose(["pipeline=sessions", f"input={BOTTLE}", f"output={out}", "progress=false"])
    cfg.stages = ["ingest", "scene_split", "filter_quality"]
    run(cfg)
    rows = storage.read_table(str(out / "03-filter_quality")).to_pylist()
    clips = storage.read_table(str(out / "02-scene_split")).to_pylist()
    assert len(rows) == sum(c["status"] == "ok" for c in clips) >= 2
    for row in rows:
        assert set(dict(row["scores"])) >= CHECKS and row["crop_box"] == [0, 0, 640, 360]
    record = json.loads((out / "03-filter_quality" / "_run.json").read_text())
    assert record["counts"]["total"] == len(rows)
