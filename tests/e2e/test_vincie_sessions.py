"""VINCIE's sessions as published (`pipeline=sessions_vincie`, seed 003 §3.1, §4.1, App. C.1-C.2) on
real media: whole shots give interval sessions longer than count sampling's 6 frames, letterbox
bars never reach the stored frames, and the clip caption is in every annotation request."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from curation.core import storage
from curation.core.config import build_stage, compose
from curation.core.runner import run
from curation.core.schema import make_sample_id
from curation.media.edit_media import encode_h264

from tests.fixtures.media import EXAMPLES
from tests.fixtures.vlm_servers import ok_from_prompt, openai_server

CAR = EXAMPLES / "intel-sample-videos" / "car-detection.mp4"  # one 30 s shot (tests/data/ground_truth.json)
BOTTLE = EXAMPLES / "intel-sample-videos" / "bottle-detection.mp4"  # one 40 s shot
CAPTION = "A small white car drives across an empty grey parking lot, seen from above."
ANNOTATION = {
    "frame1_caption": {"scene": "a grey parking lot seen from above", "obj1": "a small white car"},
    "frame2_caption": {"scene": "a grey parking lot seen from above", "obj1": "a small white car"},
    "character_change": {},
    "object_change": {"obj1": "moves to the right edge of the lot"},
    "global_change": "",
    "camera_change": "none",
    "other_change": "",
    "summary_change": "Move the small white car to the right edge of the lot.",
}


def vincie(*overrides: str):
    return compose(["pipeline=sessions_vincie", *overrides])


def answer(prompt: str) -> dict:
    """The caption prompt gets a caption, the annotation prompt an annotation."""
    return {"caption": CAPTION} if "frames of one short video clip" in prompt else ANNOTATION


# ---- black borders -----------------------------------------------------------------------------


def letterboxed_bottle(tmp_path, frames: int = 90, bar: int = 48):
    """The bottle shot's first 3 s with `bar`-px black bars above and below, as H.264."""
    cap = cv2.VideoCapture(str(BOTTLE))
    out = []
    for _ in range(frames):
        ok, bgr = cap.read()
        assert ok
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        boxed = np.zeros((rgb.shape[0] + 2 * bar, rgb.shape[1], 3), np.uint8)
        boxed[bar:bar + rgb.shape[0]] = rgb
        out.append(boxed)
    cap.release()
    path = tmp_path / "letterboxed.mp4"
    path.write_bytes(encode_h264(out, 29.83))
    return path, out[0].shape


def test_letterbox_bars_are_cut_from_the_sampled_frames(tmp_path):
    path, (height, width, _) = letterboxed_bottle(tmp_path)
    clip = {"sample_id": make_sample_id("clip", str(path), (0, 90)), "parent_ids": [], "kind": "clip", "source_uri": str(path),
            "status": "ok", "reason": None, "stage": "scene_split", "stage_version": "1", "start_frame": 0, "end_frame": 90,
            "fps": 29.83, "width": width, "height": height}
    cfg = vincie("filter_quality.quality.text_overlay.enabled=false", "filter_quality.quality.nsfw.enabled=false",
                 "filter_quality.quality.motion.enabled=false",  # the first 3 s of the shot barely move
                 "sample_frames.mode=count", "sample_frames.count_min_frames=3", "sample_frames.count_max_frames=3")
    checked_table = build_stage("filter_quality", cfg)(pa.Table.from_pylist([clip]))
    (checked,) = checked_table.to_pylist()
    assert checked["status"] == "ok", checked["reason"]
    (session,) = build_stage("sample_frames", cfg)(checked_table).to_pylist()
    assert session["status"] == "ok" and len(session["frames"]) == 3
    assert session["frame_crop_box"] == checked["crop_box"] != [0, 0, width, height]
    assert session["frame_height"] <= height - 2 * 48 + 4 and session["frame_width"] == width
    for data in session["frames"]:
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert frame.shape == (session["frame_height"], session["frame_width"])
        for border_row in (frame[:2], frame[-2:]):
            assert border_row.mean() > 20, "a letterbox row reached the stored frame"
    # ... while the uncropped frames do start with the bar
    (whole,) = build_stage("sample_frames", vincie("sample_frames.mode=count", "sample_frames.apply_crop=false"))(
        checked_table).to_pylist()
    assert cv2.imdecode(np.frombuffer(whole["frames"][0], np.uint8), cv2.IMREAD_GRAYSCALE)[:8].mean() < 10


# ---- the preset through Ray -------------------------------------------------------------------


@pytest.fixture(scope="module")
def vincie_run(tmp_path_factory, ray_local):
    """ingest -> ... -> caption -> annotate of `pipeline=sessions_vincie` on the car and bottle shots,
    against a loopback OpenAI-compatible server that records every request."""
    root = tmp_path_factory.mktemp("vincie")
    sources = root / "sources.jsonl"
    sources.write_text("".join(json.dumps({"source_uri": str(p), "dataset": "examples"}) + "\n" for p in (CAR, BOTTLE)))
    with openai_server(default=ok_from_prompt(answer)) as server:
        cfg = vincie(f"input={sources}", f"output={root / 'run'}", "progress=false", "vlm=openai", f"vlm.base_url={server.url}",
                     "vlm.model=test-model", "vlm.api_key_env=null", f"vlm.cache_dir={root / 'cache'}",
                     # the car shot carries a timestamp overlay and the bottle's tripod shot barely moves
                     # (0.27 px/s): both would be dropped before sampling, which is not what is tested here
                     "filter_quality.quality.nsfw.enabled=false", "filter_quality.quality.text_overlay.enabled=false",
                     "filter_quality.quality.motion.enabled=false")
        cfg.stages = ["ingest", "scene_split", "filter_quality", "sample_frames", "caption", "annotate"]
        run(cfg)
        requests = [r.body for r in server.requests]
    return root / "run", cfg, requests


@pytest.mark.slow
def test_whole_shots_give_long_interval_sessions_and_count_sessions_stay_within_six(vincie_run):
    run_dir, cfg, _ = vincie_run
    checked = storage.read_table(str(run_dir / "03-filter_quality"))
    checked = checked.filter(pc.equal(checked.column("status"), "ok"))
    clips = checked.to_pylist()
    assert len(clips) == 2 and all(c["end_frame"] - c["start_frame"] > 300 for c in clips)  # whole shots, not 10 s pieces
    sessions = [s for s in storage.read_table(str(run_dir / "04-sample_frames")).to_pylist() if s["status"] == "ok"]
    assert len(sessions) == 2
    for s in sessions:  # the preset's hybrid choice, whichever strategy each clip drew
        cap = cfg.sample_frames.interval_max_frames if s["sampling"] == "interval" else cfg.sample_frames.count_max_frames
        assert 2 <= len(s["frames"]) <= cap
        if s["sampling"] == "interval":
            assert np.allclose(np.diff(s["frame_times_s"]), 3.0, atol=0.1)
    # Each strategy on both shots, with the preset's other settings
    table = checked
    interval = build_stage("sample_frames", vincie("sample_frames.mode=interval"))(table).to_pylist()
    assert sorted(len(s["frames"]) for s in interval) == [11, 14]  # 30 s and 40 s at 3 s: longer than 6 where the shot allows
    count = build_stage("sample_frames", vincie("sample_frames.mode=count"))(table).to_pylist()
    assert all(s["sampling"] == "count" and 2 <= len(s["frames"]) <= 6 for s in count)


@pytest.mark.slow
def test_the_clip_caption_is_in_every_annotation_request(vincie_run):
    run_dir, _, requests = vincie_run
    prompts = [next(p["text"] for p in body["messages"][0]["content"] if p["type"] == "text") for body in requests]
    caption_prompts = [p for p in prompts if "frames of one short video clip" in p]
    annotation_prompts = [p for p in prompts if "image-editing assistant" in p]
    assert len(caption_prompts) == 2 and len(caption_prompts) + len(annotation_prompts) == len(prompts)
    annotated = [s for s in storage.read_table(str(run_dir / "06-annotate")).to_pylist() if s["status"] == "ok"]
    assert len(annotation_prompts) == sum(len(s["frames"]) - 1 for s in annotated) > 2
    assert all(CAPTION in p for p in annotation_prompts)
    for s in annotated:
        assert s["caption"] == CAPTION
        assert all(t["instruction"] == ANNOTATION["summary_change"] and t["camera"] == "none" for t in s["turns"])
