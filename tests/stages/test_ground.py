"""The `ground` stage end to end on real frames with tiny random Grounding DINO and SAM2: outcomes
per turn, mask geometry, detections tied to the turn's queries, per-session errors, a run
through the Ray runner, and SAM3 selected by `segmenter.family`."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pytest
from pydantic import BaseModel

from curation.backends.detect import DetectorConfig
from curation.backends.models import resolve_model
from curation.backends.segment import SegmenterConfig
from curation.core import media_store, storage
from curation.core.schema import SampleRow, arrow_schema, make_sample_id, rows_to_table
from curation.core.stage import ModelRef
from curation.media.jpeg import encode_jpeg
from curation.prompts.transition import FrameCaption, TransitionAnnotation, Turn, dumps
from curation.regions.roe import decode_mask_png
from curation.stages.ground import Ground
from curation.stages.sample_frames import SampleFramesColumns

from tests.fixtures.media import video_path
from tests.fixtures.tiny_sam3 import build_tiny_sam3_tracker

LOW = dict(box_threshold=0.05, text_threshold=0.05)  # the random detector's scores are arbitrary


class TurnsColumn(BaseModel):
    turns: list[Turn] | None = None  # what annotate writes


SCHEMA = media_store.inlined_schema(arrow_schema(SampleRow, SampleFramesColumns, TurnsColumn))  # media as bytes: no run


def annotation(changes: dict[str, str]) -> str:
    """A VINCIE annotation where a car drives away and a man appears."""
    return dumps(TransitionAnnotation(
        frame1_caption=FrameCaption({"scene": "a street", "obj1": "a white car", "obj2": "the road"}),
        frame2_caption=FrameCaption({"scene": "a street", "obj1": "a white car", "obj2": "the road", "char1": "A man in a red jacket."}),
        character_change={"char1": changes.get("char1", "")},
        object_change={"obj1": changes.get("obj1", ""), "obj2": changes.get("obj2", "")},
        global_change="", camera_change="none", other_change="",
        summary_change="Move the car forward and add a man.",
    ))


def read_frames(name: str, indices: list[int], width: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video_path(f"intel-sample-videos/{name}")))
    frames = []
    for index in indices:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
        assert ok
        height = round(frame.shape[0] * width / frame.shape[1])
        frames.append(cv2.cvtColor(cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def session(name: str, frames: list[np.ndarray], turns: list[Turn] | None) -> dict:
    return dict(
        sample_id=make_sample_id("session", name), kind="session", source_uri=name, status="ok", stage="annotate", stage_version="1",
        frames=[encode_jpeg(f, 90) for f in frames], frame_width=frames[0].shape[1], frame_height=frames[0].shape[0],
        turns=None if turns is None else [t.model_dump() for t in turns],
    )


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    car = read_frames("car-detection.mp4", [0, 120, 240], width=384)
    bottle = read_frames("bottle-detection.mp4", [0, 300], width=320)
    return [
        session("car", car, [
            Turn(index=0, instruction="x", annotation=annotation({"obj1": "drives forward", "char1": "appears"})),
            Turn(index=1, error="validation failed twice"),
        ]),
        session("bottle", bottle, [Turn(index=0, instruction="x", annotation=annotation({}))]),  # nothing changed
        session("unannotated", bottle, None),
    ]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CURATE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def stage(tiny_cache) -> Ground:
    ground = Ground(detector=DetectorConfig(model="tiny:grounding-dino", device="cpu", **LOW),
                    segmenter=SegmenterConfig(model="tiny:sam2", device="cpu"))
    ground.ensure_setup()
    return ground


@pytest.fixture(scope="module")
def output(stage, rows) -> list[dict]:
    return stage(rows_to_table(rows, SCHEMA)).to_pylist()


def test_found_turn_has_frame_size_masks_and_boxes_of_its_own_queries(output, rows):
    car = output[0]
    assert car["status"] == "ok" and car["stage"] == "ground" and car["sample_id"] == rows[0]["sample_id"]
    assert car["turns"] == rows[0]["turns"] and len(car["frames"]) == 3  # input columns ride along
    first = car["roe"][0]
    assert first["turn"] == 0 and first["outcome"] == "found"
    # obj1 is searched in both frames; char1 only in frame 2, where it exists; obj2 did not change
    assert first["queries"] == ["a white car", "a man in a red jacket"]
    searched = {(d["frame"], d["entity"], d["query"]) for d in first["detections"]}
    assert searched <= {("src", "obj1", "a white car"), ("tgt", "obj1", "a white car"), ("tgt", "char1", "a man in a red jacket")}
    assert {d["frame"] for d in first["detections"]} == {"src", "tgt"}
    height, width = car["frame_height"], car["frame_width"]
    for d in first["detections"]:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert set(d["label"].split()) <= set(d["query"].split()) and d["score"] > LOW["box_threshold"]
    for key in ("src_mask", "tgt_mask"):
        mask = decode_mask_png(first[key])
        assert mask.shape == (height, width)
        assert set(np.unique(mask)) <= {0, 255} and mask.any()


def test_unannotated_and_unchanged_turns_and_sessions_without_turns(output):
    unannotated = output[0]["roe"][1]
    assert (unannotated["turn"], unannotated["outcome"], unannotated["detections"]) == (1, "unannotated", [])
    assert unannotated["src_mask"] is None and unannotated["tgt_mask"] is None
    unchanged = output[1]["roe"][0]
    assert (unchanged["outcome"], unchanged["queries"], unchanged["src_mask"], unchanged["tgt_mask"]) == ("none", [], None, None)
    assert output[1]["status"] == "ok"
    assert output[2]["status"] == "error" and output[2]["reason"] == "no_turns: run annotate first" and output[2]["roe"] is None


def test_nothing_above_threshold_is_outcome_none(tiny_cache, rows):
    strict = Ground(detector=DetectorConfig(model="tiny:grounding-dino", device="cpu", box_threshold=1.0, text_threshold=1.0),
                    segmenter=SegmenterConfig(model="tiny:sam2", device="cpu"))
    roe = strict(rows_to_table(rows[:1], SCHEMA)).to_pylist()[0]["roe"]
    assert [t["outcome"] for t in roe] == ["none", "unannotated"]
    assert roe[0]["queries"] == ["a white car", "a man in a red jacket"] and roe[0]["detections"] == []
    assert roe[0]["src_mask"] is None and roe[0]["tgt_mask"] is None


def test_a_broken_session_fails_alone(stage, rows):
    broken = dict(rows[0], sample_id="broken", frames=[b"not a jpeg", *rows[0]["frames"][1:]])
    out = stage(rows_to_table([broken, rows[1]], SCHEMA)).to_pylist()
    assert out[0]["status"] == "error" and out[0]["reason"].startswith("decode_failed: frame 0")
    assert out[1]["status"] == "ok" and out[1]["roe"][0]["outcome"] == "none"


def test_a_session_the_models_fail_on_fails_alone(stage, rows):
    # 1 pixel high: Grounding DINO's resize makes it 0 pixels high and raises; the batch is then
    # redone session by session, so only this one fails
    sliver = np.full((1, 2000, 3), 128, np.uint8)
    bad = dict(rows[0], sample_id="sliver", frames=[encode_jpeg(sliver, 90)] * 3, frame_width=2000, frame_height=1)
    out = stage(rows_to_table([bad, rows[0]], SCHEMA)).to_pylist()
    assert out[0]["status"] == "error" and out[0]["reason"].startswith("ValueError")
    assert out[1]["status"] == "ok" and out[1]["roe"][0]["outcome"] == "found"


def test_segmenter_family_sam3_segments_the_boxes_with_sam3_tracker(tiny_cache, rows, tmp_path):
    sam3 = build_tiny_sam3_tracker(tmp_path / "tiny-sam3-tracker")
    # threshold far below any logit: every box's mask is its whole frame, so the union is never empty
    ground = Ground(detector=DetectorConfig(model="tiny:grounding-dino", device="cpu", **LOW),
                    segmenter=SegmenterConfig(family="sam3", model=str(sam3), mask_threshold=-1e9, device="cpu"))
    ground.ensure_setup()
    assert type(ground._segmenter.model).__name__ == "Sam3TrackerModel"
    (car,) = ground(rows_to_table(rows[:1], SCHEMA)).to_pylist()
    assert car["status"] == "ok", car["reason"]
    first = car["roe"][0]
    assert first["outcome"] == "found"
    for key in ("src_mask", "tgt_mask"):
        mask = decode_mask_png(first[key])
        assert mask.shape == (car["frame_height"], car["frame_width"]) and mask.all()


def test_models_carry_random_weights_as_data():
    models = Ground(detector=DetectorConfig(model="tiny:grounding-dino"),
                    segmenter=SegmenterConfig(model="facebook/sam2.1-hiera-tiny")).models()
    assert models == {"detector": ModelRef(id="tiny:grounding-dino", random_weights=True),
                      "segmenter": ModelRef(id="facebook/sam2.1-hiera-tiny", random_weights=False)}
    assert models["detector"].display == "tiny:grounding-dino (RANDOM WEIGHTS)"
    assert models["segmenter"].display == "facebook/sam2.1-hiera-tiny"


def test_through_the_ray_runner(tmp_path, ray_local, tiny_cache, rows, output):
    from curation.core.streaming import plan_fragments, run_map_stage

    uri = str(tmp_path / "in" / "part-00000.parquet")
    storage.write_table_atomic(rows_to_table(rows, SCHEMA), uri)
    # Workers do not see this test's CURATE_CACHE: hand them the built models by local path.
    stage = Ground(detector=DetectorConfig(model=resolve_model("tiny:grounding-dino").path, device="cpu", **LOW),
                   segmenter=SegmenterConfig(model=resolve_model("tiny:sam2").path, device="cpu"))
    stage.bind_run(str(tmp_path), str(tmp_path / "out"))  # as the runner does: masks are stored once, rows hold references
    todo, _ = plan_fragments([uri], str(tmp_path / "out"), retry_errors=False)
    assert run_map_stage(stage, todo, progress=False) == 3
    table = storage.read_table(str(tmp_path / "out"))
    assert table.column("status").to_pylist() == ["ok", "ok", "error"]
    roe = table.column("roe").to_pylist()
    assert [t["outcome"] for t in roe[0]] == ["found", "unannotated"] and roe[1][0]["outcome"] == "none"
    # same models, same frames: the run through Ray matches the direct call (up to float noise
    # from the workers' thread counts)
    through_ray, direct = roe[0][0]["detections"], output[0]["roe"][0]["detections"]
    assert [(d["frame"], d["entity"], d["label"]) for d in through_ray] == [(d["frame"], d["entity"], d["label"]) for d in direct]
    np.testing.assert_allclose([d["box"] for d in through_ray], [d["box"] for d in direct], atol=1e-2)
    assert pa.types.is_list(table.schema.field("roe").type)
    mask = roe[0][0]["src_mask"]  # stored once under the stage dir; the row holds its run-relative reference
    assert mask.startswith("out/media/") and mask.endswith(".png")
    assert decode_mask_png(media_store.load(mask, str(tmp_path))).shape == decode_mask_png(output[0]["roe"][0]["src_mask"]).shape
