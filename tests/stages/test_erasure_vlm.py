"""The three VLM stages of `pipeline=erasure` (InstructX App. A.2 add/remove pairs) against a
loopback OpenAI-compatible server (real client, real HTTP), on frames of the bundled car clip:
choose_subject names a removable subject from a few frames, check_removal compares matched
(original, erased) frame pairs and keeps clean erasures, erasure_instructions asks twice with the
clips' roles swapped and makes a remove and an add triplet per clip."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import BaseModel

from curation.core import media_store, storage
from curation.core.schema import Mp4, Png, SampleRow, arrow_schema, make_sample_id
from curation.media.decode import read_frames
from curation.media.edit_media import encode_h264, read_video_frames
from curation.media.jpeg import encode_jpeg
from curation.prompts.erasure import REMOVAL_SCORE
from curation.prompts.templates import load_template
from curation.regions.roe import encode_mask_png
from curation.stages.check_removal import CheckRemoval
from curation.stages.choose_subject import ChooseSubject
from curation.stages.erasure_instructions import ErasureInstructions
from curation.stages.reference import Reference

from tests.fixtures.media import EXAMPLES
from tests.fixtures.vlm_servers import http_error, ok, ok_from_prompt, openai_server, raw_text
from tests.stages.test_annotate import vlm

CAR = EXAMPLES / "intel-sample-videos" / "car-detection.mp4"
FRAMES = 12
HOLE = (slice(30, 70), slice(50, 110))  # rows, columns of the erased region in a 160x90 frame
HOLE_BOX = [50.0, 30.0, 110.0, 70.0]  # the same region as [x0, y0, x1, y1]
SUBJECTS = {"subjects": [{"name": "white car", "phrase": "white car driving across the parking lot"},
                         {"name": "lamp post", "phrase": "grey lamp post at the right edge"}]}


class ClipInput(BaseModel):
    start_frame: int | None = None
    end_frame: int | None = None
    fps: float | None = None
    subject: str | None = None
    subject_phrase: str | None = None
    clip_video: Mp4 | None = None
    erased_video: Mp4 | None = None
    object_masks: list[Png] | None = None
    mask_key_frame: int | None = None


SCHEMA = arrow_schema(SampleRow, ClipInput)  # media as references: a stage bound to a run
INLINED = media_store.inlined_schema(SCHEMA)  # media as bytes: a stage called outside a run


def clip_row(sample_id: str = "clip0", start: int = 0, end: int = 100, **columns) -> dict:
    return dict(sample_id=sample_id, parent_ids=["video0"], kind="clip", source_uri=str(CAR), status="ok",
                stage="scene_split", stage_version="1", start_frame=start, end_frame=end, fps=12.5, **columns)


def sent_images(request) -> list[bytes]:
    content = request.body["messages"][0]["content"]
    return [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in content if p["type"] == "image_url"]


def run_stage(stage, rows: list[dict], schema: pa.Schema = INLINED) -> list[dict]:
    return stage(pa.Table.from_pylist(rows, schema=schema)).to_pylist()


# --------------------------------------------------------------------------------------------
# An original clip and its "erasure": the car clip's frames, and the same with a region blurred
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips() -> dict[str, object]:
    frames = [cv2.resize(f, (160, 90), interpolation=cv2.INTER_AREA) for f in read_frames(str(CAR), range(0, 10 * FRAMES, 10))]
    erased = []
    for frame in frames:
        out = frame.copy()
        out[HOLE] = cv2.GaussianBlur(frame, (31, 31), 0)[HOLE]
        erased.append(out)
    mask = np.zeros((90, 160), bool)
    mask[HOLE] = True
    return {"clip": encode_h264(frames, 12.5), "erased": encode_h264(erased, 12.5), "mask": encode_mask_png(mask)}


def decoded_jpegs(video: bytes, indices: list[int], tmp_path: Path) -> list[bytes]:
    """What a stage sends for these frames: the video's decoded frames, JPEG-encoded at quality 90."""
    path = tmp_path / f"decoded-{len(video)}.mp4"
    path.write_bytes(video)
    return [encode_jpeg(frame, 90) for frame in read_video_frames(str(path), indices, 1 << 26)]


# --------------------------------------------------------------------------------------------
# choose_subject
# --------------------------------------------------------------------------------------------


def test_choose_subject_shows_a_few_clip_frames_and_keeps_the_first_candidate(tmp_path):
    with openai_server(default=ok(SUBJECTS)) as server:
        (row,) = run_stage(ChooseSubject(vlm=vlm(server, tmp_path)), [clip_row()])
        (request,) = server.requests
        prompt = server.prompt_of(request.body)
    images = sent_images(request)
    assert len(images) == 4 and all(im[:2] == b"\xff\xd8" for im in images) and len(set(images)) == 4
    assert prompt == load_template("subject_choice").render(num_frames=4, max_subjects=3, feedback=None)
    assert row["status"] == "ok" and row["stage"] == "choose_subject" and row["sample_id"] == "clip0"
    assert (row["subject"], row["subject_phrase"]) == ("white car", "white car driving across the parking lot")
    assert [c["name"] for c in row["subject_candidates"]] == ["white car", "lamp post"]
    assert row["vlm_usage"]["requests"] == 1


def test_choose_subject_drops_short_clips_unsent_and_clips_with_no_removable_subject(tmp_path):
    with openai_server(default=ok({"subjects": []})) as server:
        short, empty = run_stage(ChooseSubject(vlm=vlm(server, tmp_path), frames=2, min_frames=16),
                                 [clip_row("short", 0, 10), clip_row("empty", 20, 60)])
        assert len(server.requests) == 1 and len(sent_images(server.requests[0])) == 2  # nothing sent for the short clip
    assert (short["status"], short["reason"]) == ("dropped", "clip_too_short: 10 frames (choose_subject.min_frames=16)")
    assert empty["status"] == "dropped" and empty["reason"].startswith("no_removable_subject")
    assert empty["subject"] is None and empty["subject_candidates"] == []


def test_choose_subject_drops_an_answer_that_fails_twice_and_an_api_error_is_retryable(tmp_path):
    with openai_server(default=raw_text('{"subjects": [{"name": " "}]}')) as server:
        (row,) = run_stage(ChooseSubject(vlm=vlm(server, tmp_path)), [clip_row()])
        assert len(server.requests) == 2  # asked again with the validation error
        assert "could not be used" in server.prompt_of(server.requests[1].body)
    assert row["status"] == "dropped" and row["reason"].startswith("subject_unparseable")
    with openai_server(default=http_error(500)) as server:
        (row,) = run_stage(ChooseSubject(vlm=vlm(server, tmp_path, max_retries=0)), [clip_row()])
    assert row["status"] == "error" and row["reason"].startswith("vlm_http_500")


# --------------------------------------------------------------------------------------------
# check_removal
# --------------------------------------------------------------------------------------------


def erased_row(clips, sample_id: str, subject: str, **columns) -> dict:
    return clip_row(sample_id, 0, FRAMES, subject=subject, clip_video=clips["clip"], erased_video=clips["erased"],
                    object_masks=[clips["mask"]] * FRAMES, mask_key_frame=5, **columns)


def removal_answer(prompt: str) -> dict:
    """A clean erasure of the car; a smeared one of the truck (artifact_free 3)."""
    artifacts = 4 if "erase the car" in prompt else 3
    return {"reasoning": "The subject is gone.", "subject_removed": 5, "artifact_free": artifacts}


def test_check_removal_sends_matched_pairs_original_first_and_keeps_by_threshold(clips, tmp_path):
    with openai_server(default=ok_from_prompt(removal_answer)) as server:
        stage = CheckRemoval(vlm=vlm(server, tmp_path), min_score=4)
        kept, dropped = run_stage(stage, [erased_row(clips, "a", "car"), erased_row(clips, "b", "truck")])
        requests = {server.prompt_of(r.body).split(" from", 1)[0].rsplit(" ", 1)[1]: r for r in server.requests}
    assert set(requests) == {"car", "truck"}
    indices = [0, 3, 6, 9]  # pair_frame_indices(12, 12, 4): frame 0 and three more, evenly
    originals, erased = decoded_jpegs(clips["clip"], indices, tmp_path), decoded_jpegs(clips["erased"], indices, tmp_path)
    assert sent_images(requests["car"]) == [im for pair in zip(originals, erased) for im in pair]
    assert server.prompt_of(requests["car"].body) == load_template("removal_check").render(subject="car", num_pairs=4, feedback=None)
    assert kept["status"] == "ok" and kept["removal_score"] == 4.0 and kept["removal_frames"] == indices
    assert dict(kept["scores"]) == {REMOVAL_SCORE: 4.0, "subject_removed": 5.0, "artifact_free": 4.0}
    assert (dropped["status"], dropped["reason"]) == ("dropped", "removal_check_below_threshold: 3 (keep >= 4)")
    assert dropped["removal_score"] == 3.0 and dict(dropped["scores"])[REMOVAL_SCORE] == 3.0
    (threshold,) = stage.thresholds()
    assert (threshold.score, threshold.value, threshold.setting) == (REMOVAL_SCORE, 4, "min_score")


def test_check_removal_never_invents_a_score_and_needs_both_videos(clips, tmp_path):
    with openai_server(default=raw_text('{"reasoning": "ok", "subject_removed": 9, "artifact_free": 5}')) as server:
        bad, missing = run_stage(CheckRemoval(vlm=vlm(server, tmp_path), min_score=4),
                                 [erased_row(clips, "a", "car"), {**erased_row(clips, "b", "car"), "erased_video": None}])
        assert len(server.requests) == 2  # the answer off the 1-5 scale, and its re-ask; nothing for the missing video
    assert bad["status"] == "dropped" and bad["reason"].startswith("removal_check_unparseable") and bad["removal_score"] is None
    assert missing["status"] == "error" and missing["reason"].startswith("no_erasure")


# --------------------------------------------------------------------------------------------
# erasure_instructions
# --------------------------------------------------------------------------------------------


INSTRUCTIONS = {"remove": "Remove the white car driving across the middle of the parking lot.",
                "add": "Add a white car driving slowly across the middle of the parking lot."}


def instruction_answer(prompt: str) -> dict:
    return {"instruction": INSTRUCTIONS["add" if 'Write the "add" instruction' in prompt else "remove"]}


@pytest.fixture
def bound_rows(clips, tmp_path) -> list[dict]:
    """A clip starting at frame 40 of its video, its media as files the manifest references."""
    files = {}
    for name, data in (("clip.mp4", clips["clip"]), ("erased.mp4", clips["erased"]), ("mask.png", clips["mask"])):
        (tmp_path / name).write_bytes(data)
        files[name] = str(tmp_path / name)
    return [clip_row("clip0", 40, 40 + FRAMES, subject="white car", clip_video=files["clip.mp4"],
                     erased_video=files["erased.mp4"], object_masks=[files["mask.png"]] * FRAMES, mask_key_frame=45)]


def instructions_table(server, tmp_path, rows: list[dict], **overrides) -> tuple[pa.Table, str]:
    run_dir = str(tmp_path / "run")
    stage = ErasureInstructions(vlm=vlm(server, tmp_path, **overrides))
    stage.bind_run(run_dir, f"{run_dir}/05-erasure_instructions")
    return stage(pa.Table.from_pylist(rows, schema=SCHEMA)), run_dir


def instructions(server, tmp_path, rows: list[dict], **overrides) -> tuple[list[dict], str]:
    table, run_dir = instructions_table(server, tmp_path, rows, **overrides)
    return table.to_pylist(), run_dir


def test_each_clip_becomes_a_remove_and_an_add_triplet_asked_with_the_clips_swapped(clips, bound_rows, tmp_path):
    with openai_server(default=ok_from_prompt(instruction_answer)) as server:
        rows, run_dir = instructions(server, tmp_path, bound_rows)
        assert len(server.requests) == 2
        by_direction = {"add" if 'Write the "add"' in server.prompt_of(r.body) else "remove": r for r in server.requests}
    indices = [0, 3, 6, 9]
    originals, erased = decoded_jpegs(clips["clip"], indices, tmp_path), decoded_jpegs(clips["erased"], indices, tmp_path)
    assert sent_images(by_direction["remove"]) == originals + erased  # source (original) first, then target (erased)
    assert sent_images(by_direction["add"]) == erased + originals  # the roles swapped
    template = load_template("erasure_instruction")
    for direction, request in by_direction.items():
        assert server.prompt_of(request.body) == template.render(direction=direction, subject="white car", num_frames=4,
                                                                 feedback=None)

    remove, add = rows
    ids = {d: make_sample_id("triplet", str(CAR), ("erasure", d), "clip0") for d in ("remove", "add")}
    assert (remove["sample_id"], add["sample_id"]) == (ids["remove"], ids["add"]) and ids["remove"] != ids["add"]
    assert (remove["twin_id"], add["twin_id"]) == (ids["add"], ids["remove"])
    for row, direction in ((remove, "remove"), (add, "add")):
        assert row["status"] == "ok" and row["kind"] == "triplet" and row["edit_kind"] == "triplet"
        assert row["edit_direction"] == direction and row["category"] == f"local_{direction}"
        assert row["parent_ids"] == ["clip0"] and row["instruction"] == INSTRUCTIONS[direction]
        assert Path(row["source_uri"]).is_absolute() and Path(row["target_uri"]).is_absolute()
        assert (row["num_frames"], row["target_num_frames"], row["instruction_frames"]) == (FRAMES, FRAMES, indices)
    assert Path(remove["source_uri"]).read_bytes() == Path(add["target_uri"]).read_bytes() == clips["clip"]
    assert Path(remove["target_uri"]).read_bytes() == Path(add["source_uri"]).read_bytes() == clips["erased"]
    assert remove["source_uri"].startswith(run_dir + "/05-erasure_instructions/")

    # The add row carries what `reference` cuts the object out of: the original frame at the key frame.
    assert remove["tgt_frame"] is None and remove["mask_tgt"] is None and remove["edit_boxes"] is None
    assert remove["src_frame"] is None
    assert media_store.load(add["tgt_frame"], run_dir) == decoded_jpegs(clips["clip"], [45 - 40], tmp_path)[0]
    # The add row's input is the erased clip: score_reference shows that frame as the source.
    assert media_store.load(add["src_frame"], run_dir) == decoded_jpegs(clips["erased"], [45 - 40], tmp_path)[0]
    assert media_store.load(add["mask_tgt"], run_dir) == clips["mask"]
    assert add["edit_boxes"] == [{"image": "edited", "label": "white car", "box": HOLE_BOX, "answer": HOLE_BOX}]


def test_the_triplets_ids_are_the_same_on_a_rerun(bound_rows, tmp_path):
    with openai_server(default=ok_from_prompt(instruction_answer)) as server:
        first, _ = instructions(server, tmp_path, bound_rows)
        again, _ = instructions(server, tmp_path / "again", bound_rows)
    assert [r["sample_id"] for r in first] == [r["sample_id"] for r in again]
    assert [r["source_uri"] for r in first] != [r["source_uri"] for r in again]  # each run stores its own copy


def test_a_failed_request_makes_the_clip_an_error_that_retry_errors_redoes(bound_rows, tmp_path):
    with openai_server(default=http_error(500)) as server:
        rows, _ = instructions(server, tmp_path, bound_rows, max_retries=0)
    (row,) = rows  # under the clip's own id, which is what retry_errors reprocesses
    assert (row["sample_id"], row["status"]) == ("clip0", "error") and row["reason"].startswith("vlm_http_500")
    assert row["instruction"] is None and row["edit_direction"] is None


def test_an_instruction_that_fails_twice_drops_both_triplets(bound_rows, tmp_path):
    def answer(prompt: str) -> dict | str:
        return "not json" if 'Write the "add"' in prompt else instruction_answer(prompt)

    with openai_server(default=ok_from_prompt(answer)) as server:
        rows, _ = instructions(server, tmp_path, bound_rows)
        assert len(server.requests) == 3  # both directions, and the add one again
    assert [(r["edit_direction"], r["status"]) for r in rows] == [("remove", "dropped"), ("add", "dropped")]
    assert all(r["reason"].startswith("instruction_unparseable: add: invalid_json") for r in rows)


def test_outside_a_run_nothing_is_sent_and_the_row_says_why(clips, tmp_path):
    with openai_server(default=ok_from_prompt(instruction_answer)) as server:
        (row,) = run_stage(ErasureInstructions(vlm=vlm(server, tmp_path)), [erased_row(clips, "a", "car")])
        assert server.requests == []
    assert row["status"] == "error" and row["reason"].startswith("no_media_store")


def test_the_add_triplet_is_what_reference_makes_a_quad_from(bound_rows, tmp_path):
    with openai_server(default=ok_from_prompt(instruction_answer)) as server:
        table, run_dir = instructions_table(server, tmp_path, bound_rows)
    reference = Reference(backend="composite", background="white", margin=0.05, inpaint="telea", inpaint_radius=5, dilate_px=7,
                          max_aspect=3.0, min_side=16, max_side=2048)  # the frames are 160x90: a small object
    reference.bind_run(run_dir, f"{run_dir}/06-reference")
    (quad,) = reference(table.filter(pc.equal(table.column("edit_direction"), "add"))).to_pylist()
    assert quad["status"] == "ok" and quad["kind"] == "quad" and quad["category"] == "local_add"
    assert quad["instruction"] == INSTRUCTIONS["add"] and quad["parent_ids"] == [table.column("sample_id")[1].as_py()]
    width, height = HOLE_BOX[2] - HOLE_BOX[0], HOLE_BOX[3] - HOLE_BOX[1]
    assert width <= quad["reference_width"] <= width + 8 and height <= quad["reference_height"] <= height + 8  # the box + margin


def test_a_mask_one_pixel_larger_than_the_h264_frame_is_cut_to_it(clips, bound_rows, tmp_path):
    """encode_h264 drops an odd last row/column; masks made on the source frames still have it."""
    mask = np.zeros((91, 161), bool)
    mask[HOLE] = True
    mask[90, :] = True  # the row H.264 dropped
    (tmp_path / "odd.png").write_bytes(encode_mask_png(mask))
    rows = [{**bound_rows[0], "object_masks": [str(tmp_path / "odd.png")] * FRAMES}]
    with openai_server(default=ok_from_prompt(instruction_answer)) as server:
        (_, add), run_dir = instructions(server, tmp_path, rows)
    assert add["status"] == "ok" and media_store.load(add["mask_tgt"], run_dir) == clips["mask"]
    assert add["edit_boxes"][0]["box"] == HOLE_BOX


def test_the_spend_estimate_is_per_clip_not_per_triplet(bound_rows, tmp_path):
    with openai_server(default=ok_from_prompt(instruction_answer)) as server:
        table, run_dir = instructions_table(server, tmp_path, bound_rows)
        stage = ErasureInstructions(vlm=vlm(server, tmp_path))
    stage_dir = f"{run_dir}/05-erasure_instructions"
    storage.write_table_atomic(table, f"{stage_dir}/part-00000.parquet")
    estimate = stage.spend_estimate(stage_dir)
    assert (estimate.source, estimate.measured_rows, estimate.requests_per_row) == ("measured", 1, 2.0)
