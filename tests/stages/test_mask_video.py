"""The `mask_video` stage: its gates on constructed masks (the tiny random SAM2 cannot make honest
masks, so every drop reason that depends on mask content is tested on `mask_stats` + `gate`
directly), key-frame candidates, and the stage run in-process on an Arrow batch of real clips with
tiny random Grounding DINO and SAM2 video: one frame-size PNG per clip frame, a mid-clip key frame,
subject_not_found, clip_too_short, and per-row errors that leave the other rows alone."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pydantic import BaseModel

from curation.backends.detect import Detection as Box
from curation.backends.detect import DetectorConfig
from curation.backends.video_segment import VideoSegmenterConfig
from curation.core import media_store
from curation.core.schema import SampleRow, arrow_schema, make_sample_id, rows_to_table
from curation.media.decode import read_frames
from curation.regions.roe import decode_mask_png
from curation.stages.mask_video import MaskGates, MaskStats, MaskVideo, candidate_frames, gate, mask_stats, subject_query
from curation.stages.scene_split import ClipColumns

from tests.fixtures.media import video_path

GATES = dict(min_frames=16, max_empty_frac=0.1, min_area_frac=0.005, max_area_frac=0.5, max_border_frac=0.5, border_px=2)


class SubjectColumns(BaseModel):
    subject: str | None = None  # what the subject-choosing stage writes
    subject_phrase: str | None = None


SCHEMA = media_store.inlined_schema(arrow_schema(SampleRow, ClipColumns, SubjectColumns))
CAR = str(video_path("intel-sample-videos/car-detection.mp4"))
BOTTLE = str(video_path("intel-sample-videos/bottle-detection.mp4"))


# ---- gates on constructed masks --------------------------------------------------------------


def square_masks(frames: int, top: int, left: int, side: int, size: int = 100) -> np.ndarray:
    masks = np.zeros((frames, size, size), dtype=bool)
    masks[:, top:top + side, left:left + side] = True
    return masks


def test_a_centred_object_of_moderate_size_is_kept():
    stats = mask_stats(square_masks(10, 40, 40, 20), border_px=2)
    assert stats == MaskStats(area_mean=pytest.approx(0.04), empty_frac=0.0, border_frac=0.0)
    assert gate(stats, MaskGates(**GATES)) is None


def test_a_mask_empty_on_too_many_frames_has_vanished():
    masks = square_masks(10, 40, 40, 20)
    masks[[2, 7]] = False  # 20% of frames empty, the gate allows 10%
    stats = mask_stats(masks, border_px=2)
    assert stats.empty_frac == pytest.approx(0.2) and stats.area_mean == pytest.approx(0.04)  # area over present frames only
    assert gate(stats, MaskGates(**GATES)).startswith("mask_vanished")
    masks[7] = masks[0]  # one empty frame of ten is within the gate
    assert gate(mask_stats(masks, border_px=2), MaskGates(**GATES)) is None


def test_an_always_empty_mask_has_vanished():
    stats = mask_stats(np.zeros((5, 30, 30), dtype=bool), border_px=2)
    assert stats == MaskStats(area_mean=None, empty_frac=1.0, border_frac=None)
    assert gate(stats, MaskGates(**GATES)).startswith("mask_vanished")


def test_small_and_large_masks_are_dropped():
    small = mask_stats(square_masks(10, 45, 45, 5), border_px=2)  # 0.25% of the frame
    large = mask_stats(square_masks(10, 10, 10, 80), border_px=2)  # 64%
    assert gate(small, MaskGates(**GATES)).startswith("mask_too_small")
    assert gate(large, MaskGates(**GATES)).startswith("mask_too_large")


def test_a_mask_on_the_border_in_most_frames_is_dropped():
    masks = square_masks(10, 40, 40, 20)
    masks[:6] = square_masks(6, 40, 0, 20)  # touching the left edge in 6 of 10 frames
    stats = mask_stats(masks, border_px=2)
    assert stats.border_frac == pytest.approx(0.6)
    assert gate(stats, MaskGates(**GATES)).startswith("mask_on_border")
    masks[5] = masks[9]  # 5 of 10 is not most
    assert gate(mask_stats(masks, border_px=2), MaskGates(**GATES)) is None


def test_the_border_band_has_the_configured_width():
    one_px_in = square_masks(4, 1, 40, 20)  # starts on the second row
    assert mask_stats(one_px_in, border_px=2).border_frac == 1.0
    assert mask_stats(one_px_in, border_px=1).border_frac == 0.0


def test_gates_refuse_an_empty_area_range():
    with pytest.raises(ValueError, match="must be below"):
        MaskGates(**{**GATES, "min_area_frac": 0.5, "max_area_frac": 0.5})


def test_key_frame_candidates_span_the_clip_without_repeats():
    assert candidate_frames(12, 3) == [0, 6, 11]
    assert candidate_frames(12, 1) == [0]
    assert candidate_frames(2, 3) == [0, 1]
    assert candidate_frames(1, 3) == [0]


def test_the_phrase_is_preferred_to_the_name():
    assert subject_query({"subject": "car", "subject_phrase": "The red car, on the left."}) == "the red car, on the left"
    assert subject_query({"subject": "Car", "subject_phrase": "  "}) == "car"


# ---- the stage on an Arrow batch -------------------------------------------------------------


def clip(name: str, path: str, start: int, end: int, subject: str | None = "car", phrase: str | None = "the white car") -> dict:
    return dict(
        sample_id=make_sample_id("clip", name, (start, end)), kind="clip", source_uri=path, status="ok", stage="subject",
        stage_version="1", start_frame=start, end_frame=end, num_clip_frames=end - start, subject=subject, subject_phrase=phrase,
    )


@pytest.fixture(scope="module")
def stage() -> MaskVideo:
    # The random detector's scores are arbitrary: low thresholds so it returns boxes. The random
    # SAM2 judges the object absent everywhere (empty masks), so the plumbing tests threshold its
    # logits far below its "absent" value to get non-empty masks, and open every gate.
    mask_video = MaskVideo(
        detector=DetectorConfig(model="tiny:grounding-dino", device="cpu", box_threshold=0.05, text_threshold=0.05),
        segmenter=VideoSegmenterConfig(model="tiny:sam2-video", device="cpu", mask_threshold=-1e6),
        key_frame_candidates=3,
        gates=MaskGates(min_frames=4, max_empty_frac=1.0, min_area_frac=0.0, max_area_frac=1.0, max_border_frac=1.0, border_px=2),
    )
    mask_video.ensure_setup()
    return mask_video


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    broken = tmp_path_factory.mktemp("media") / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    return [
        clip("car", CAR, 30, 42),
        clip("broken", str(broken), 0, 12),
        clip("bottle", BOTTLE, 0, 8, phrase=None, subject="bottle"),
        clip("short", CAR, 0, 3),
        clip("nameless", CAR, 0, 12, subject=None, phrase=None),
    ]


@pytest.fixture(scope="module")
def output(stage, rows) -> list[dict]:
    return stage(rows_to_table(rows, SCHEMA)).to_pylist()


def test_kept_clips_have_one_frame_size_mask_per_frame(output, rows):
    assert [r["sample_id"] for r in output] == [r["sample_id"] for r in rows]
    for row, frames in ((output[0], 12), (output[2], 8)):
        assert row["status"] == "ok" and row["stage"] == "mask_video"
        assert len(row["object_masks"]) == frames
        decoded = [decode_mask_png(m) for m in row["object_masks"]]
        frame_size = read_frames(row["source_uri"], [row["start_frame"]])[0].shape[:2]
        assert {m.shape for m in decoded} == {frame_size} and set(np.unique(np.stack(decoded))) <= {0, 255}
        assert row["mask_key_frame"] in [row["start_frame"] + k for k in candidate_frames(frames, 3)]
        x0, y0, x1, y1 = row["mask_box"]
        assert x0 < x1 and y0 < y1 and row["mask_detection_score"] > 0.05
        assert row["mask_empty_frac"] == 0.0 and row["mask_area_mean"] == 1.0  # every logit is above -1e6
    assert output[0]["subject_phrase"] == "the white car"  # input columns ride along


def test_a_bad_row_is_an_error_and_the_others_are_unaffected(output):
    broken, short, nameless = output[1], output[3], output[4]
    assert broken["status"] == "error" and broken["reason"].startswith("decode_failed")
    assert broken["object_masks"] is None
    assert short["status"] == "dropped" and short["reason"].startswith("clip_too_short")
    assert nameless["status"] == "error" and nameless["reason"].startswith("no_subject")
    assert output[0]["status"] == output[2]["status"] == "ok"


def test_a_key_frame_mid_clip_still_gives_masks_for_the_frames_before_it(stage, rows, monkeypatch):
    middle = candidate_frames(12, 3)[1]

    def only_in_the_middle(images, queries):  # the detector sees the clip's three candidates, in order
        return [[Box(query=0, label="car", score=0.9, box=(100.0, 80.0, 300.0, 200.0))] if k == 1 else []
                for k in range(len(images))]

    monkeypatch.setattr(stage._detector, "detect", only_in_the_middle)
    tracked = []
    track = stage._segmenter.track
    monkeypatch.setattr(stage._segmenter, "track", lambda frames, key, box: tracked.append((len(frames), key)) or track(frames, key, box))
    row = stage(rows_to_table([rows[0]], SCHEMA)).to_pylist()[0]
    assert row["mask_key_frame"] == rows[0]["start_frame"] + middle and row["mask_box"] == [100.0, 80.0, 300.0, 200.0]
    assert tracked == [(12, middle)]  # the whole clip, with the key frame as an offset into it
    assert row["status"] == "ok" and len(row["object_masks"]) == 12  # frames 30..41, before the key frame too


def test_no_box_above_the_thresholds_drops_the_clip(stage, rows, monkeypatch):
    monkeypatch.setattr(stage._detector, "cfg", stage._detector.cfg.model_copy(update={"box_threshold": 1.0}))
    row = stage(rows_to_table([rows[0]], SCHEMA)).to_pylist()[0]
    assert row["status"] == "dropped" and row["reason"].startswith("subject_not_found")
    assert row["object_masks"] is None and row["mask_key_frame"] is None


def test_the_stage_declares_its_models_and_cuts(stage):
    assert {k: v.random_weights for k, v in stage.models().items()} == {"detector": True, "segmenter": True}
    assert stage.model_devices() == {"detector": "cpu", "segmenter": "cpu"} and stage.uses_gpu()
    assert {(t.score, t.setting) for t in stage.thresholds()} == {
        ("mask_empty_frac", "gates.max_empty_frac"), ("mask_area_mean", "gates.min_area_frac"),
        ("mask_area_mean", "gates.max_area_frac"), ("mask_border_frac", "gates.max_border_frac")}
    assert all(t.column for t in stage.thresholds())


def test_output_columns_are_in_the_schema(output):
    schema = MaskVideo.output_schema(MaskVideo.model_construct(), SCHEMA)
    assert {"object_masks", "mask_key_frame", "mask_box", "mask_detection_score", "mask_area_mean", "mask_empty_frac",
            "mask_border_frac"} <= set(schema.names)
    assert isinstance(schema.field("object_masks").type, pa.ListType)
