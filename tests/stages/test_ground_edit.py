"""The `ground_edit` stage on real photos and a short clip, with a scripted OpenAI-compatible VLM
(real client, real HTTP) and tiny random SAM2: every box convention back to frame pixels, box and
answer failures as drop reasons, object versus background grounding, masks and stored first frames.
The scripted model answers in Kiwi-Edit's shape (prompts v2, the default); v1 answers are read when
the v1 prompts are selected."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from curation.core.config import build_stage
from curation.core.schema import arrow_schema, make_sample_id, rows_to_table
from curation.media.edit_media import encode_h264
from curation.regions.roe import decode_mask_png
from curation.sources.edit_datasets import EditSourceRow
from curation.stages.ground_edit import GroundEdit

from tests.fixtures.media import EXAMPLES
from tests.fixtures.tiny_sam3 import build_tiny_sam3_tracker
from tests.fixtures.vlm_servers import http_error, ok, ok_from_prompt, openai_server, raw_text

SCHEMA = arrow_schema(EditSourceRow)
BALL = (60, 110, 141, 191)  # the painted ball, in target-frame pixels (inside every photo below)
PHOTOS = {"cat": "chelsea.png", "cup": "coffee.png", "rocket": "rocket.jpg"}
CLIP_SIZE = (384, 216)


# ---- media ---------------------------------------------------------------------------------


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def save(path: Path, image: np.ndarray) -> str:
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return str(path)


def add_ball(image: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = BALL
    out = image.copy()
    cv2.circle(out, ((x0 + x1) // 2, (y0 + y1) // 2), (x1 - x0) // 2, (220, 30, 30), -1)
    return out


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """name -> (source, target): each real photo with a red ball painted in as the edit, and a
    six-frame clip of the car video with a region tinted red in every frame."""
    root = tmp_path_factory.mktemp("edits")
    files = {}
    for name, photo in PHOTOS.items():
        source = rgb(EXAMPLES / "skimage" / photo)
        files[name] = (save(root / f"{name}_src.png", source), save(root / f"{name}_tgt.png", add_ball(source)))
    cap = cv2.VideoCapture(str(EXAMPLES / "intel-sample-videos" / "car-detection.mp4"))
    frames = []
    for _ in range(6):
        ok_, frame = cap.read()
        assert ok_
        frames.append(cv2.cvtColor(cv2.resize(frame, CLIP_SIZE, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
    cap.release()
    tinted = [f.copy() for f in frames]
    for f in tinted:
        f[60:150, 100:220, 0] = 230
    for side, clip in (("src", frames), ("tgt", tinted)):
        (root / f"car_{side}.mp4").write_bytes(encode_h264(clip, 12.5))
    files["car"] = (str(root / "car_src.mp4"), str(root / "car_tgt.mp4"))
    return files


def edit_row(media, name: str, category: str = "local_change", instruction: str | None = None) -> dict:
    source, target = media[name]
    kind = "triplet" if name == "car" else "pair"
    instruction = instruction or f"Add a red ball to the {name} {kind}."
    return dict(sample_id=make_sample_id(kind, source, target, instruction), kind=kind, source_uri=source,
                target_uri=target, instruction=instruction, category=category, dataset="test", edit_kind=kind,
                stage="edit_score", stage_version="1")


def first_frame(path: str) -> np.ndarray:
    """An image file, or a video's first frame, as RGB."""
    cap = cv2.VideoCapture(path)
    ok_, frame = cap.read()
    cap.release()
    assert ok_, path
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def frame_size(path: str) -> tuple[int, int]:
    """(width, height)."""
    height, width = first_frame(path).shape[:2]
    return width, height


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# ---- the stage and the scripted VLM ------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_server():
    with openai_server() as server:  # one for the module: stopping a server takes half a second
        yield server


@pytest.fixture
def server(shared_server):
    shared_server.reset()
    yield shared_server
    shared_server.reset()


def stage(server, tmp_path, *overrides: str) -> GroundEdit:
    """ground_edit with its packaged defaults, the fake server as its VLM and tiny random SAM2."""
    return build_stage("ground_edit", overrides=[
        "vlm=openai", f"vlm.base_url={server.url}", "vlm.model=grounder", "vlm.api_key_env=null",
        "vlm.max_retries=1", "vlm.backoff_initial_s=0.01", "vlm.backoff_max_s=0.05", "vlm.timeout_s=10",
        f"vlm.cache_dir={tmp_path / 'vlm-cache'}", "ground_edit.segmenter.model=tiny:sam2",
        "ground_edit.segmenter.device=cpu", *overrides])


def ground(server, tmp_path, rows: list[dict], *overrides: str) -> list[dict]:
    return stage(server, tmp_path, *overrides)(rows_to_table(rows, SCHEMA)).to_pylist()


def objects(*boxes: list[float], label: str = "red ball") -> dict:
    """An editing-area answer (ground_edit_area.v2, Kiwi-Edit prompt 1): boxes in image 2."""
    return {"image_2": [{"bbox": list(box), "label": label} for box in boxes]}


def objects_v1(*boxes: list[float], label: str = "red ball") -> dict:
    """The same answer as ground_edit_area.v1 asked for it."""
    return {"objects": [{"label": label, "bbox_2d": list(box)} for box in boxes]}


def norm1000(box, width: int, height: int) -> list[float]:
    x0, y0, x1, y1 = box
    return [x0 / width * 1000, y0 / height * 1000, x1 / width * 1000, y1 / height * 1000]


def images_sent(body: dict) -> list[bytes]:
    urls = [p["image_url"]["url"] for p in body["messages"][0]["content"] if p["type"] == "image_url"]
    return [base64.b64decode(url.split(",", 1)[1]) for url in urls]


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def model_boxing(box, frame: tuple[int, int], fmt: str, order: str):
    """A model that boxes `box` (target-frame pixels) in the edited image *as it received it*,
    in its own convention: what a real grounding model does."""
    def answer(body_text: str) -> dict:
        sent_w, sent_h = size_of(images_sent(json.loads(body_text))[1])
        width, height = frame
        sx, sy = {"pixel": (sent_w / width, sent_h / height), "norm1000": (1000 / width, 1000 / height),
                  "norm1": (1 / width, 1 / height)}[fmt]
        x0, y0, x1, y1 = box
        given = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
        return objects([given[1], given[0], given[3], given[2]] if order == "yxyx" else given)

    return answer


# ---- box conventions ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, order, max_side", [
    ("norm1000", "xyxy", 1024),
    ("norm1", "xyxy", 1024),
    ("pixel", "xyxy", 1024),
    ("pixel", "xyxy", 200),  # the stage shrinks the frame before sending: the box is in the small image
    ("norm1000", "yxyx", 1024),  # Gemini's native order
    ("pixel", "yxyx", 200),
])
def test_each_box_convention_becomes_the_same_frame_pixel_box(server, media, tmp_path, monkeypatch, fmt, order, max_side):
    row = edit_row(media, "cat")
    frame = frame_size(row["target_uri"])
    server.set_default(ok_from_prompt(model_boxing(BALL, frame, fmt, order)))
    monkeypatch.setattr(server, "prompt_of", json.dumps)  # the fake model reads the whole request, images included
    (out,) = ground(server, tmp_path, [row], f"ground_edit.box_format={fmt}", f"ground_edit.box_order={order}",
                    f"vlm.image_max_side={max_side}")
    sent = size_of(images_sent(server.requests[0].body)[1])
    assert (sent == frame) == (max_side >= max(frame))  # shrunk exactly when the frame is larger
    assert out["status"] == "ok", out["reason"]
    (box,) = out["edit_boxes"]
    assert box["image"] == "edited" and box["label"] == "red ball"
    assert box["box"] == pytest.approx(list(BALL))


def test_a_box_partly_outside_the_frame_is_clipped_and_kept(server, media, tmp_path):
    row = edit_row(media, "cat")
    width, height = frame_size(row["target_uri"])
    server.set_default(ok(objects([-200, 500, 300, 1400])))
    (out,) = ground(server, tmp_path, [row])
    assert out["status"] == "ok", out["reason"]
    (box,) = out["edit_boxes"]
    assert box["box"] == pytest.approx([0, 0.5 * height, 0.3 * width, height])
    assert box["answer"] == [-200, 500, 300, 1400]


# ---- boxes and answers that cannot be used ------------------------------------------------------


@pytest.mark.parametrize("answer, reason", [
    (objects([500, 500, 501, 501]), "degenerate_box"),  # under half a pixel wide
    (objects([400, 300, 400, 700]), "degenerate_box"),  # zero width
    (objects([1100, 200, 1300, 400]), "box_out_of_frame"),
    ({"image_2": []}, "no_box"),
])
def test_unusable_boxes_drop_the_sample_with_a_reason(server, media, tmp_path, answer, reason):
    row = edit_row(media, "cat")
    server.set_default(ok(answer))
    (out,) = ground(server, tmp_path, [row])
    assert out["status"] == "dropped" and out["reason"].startswith(reason), out["reason"]
    assert out["sample_id"] == row["sample_id"] and out["stage"] == "ground_edit"
    assert out["edit_boxes"] == [] and out["mask_tgt"] is None


def test_a_malformed_answer_is_asked_again_then_dropped_as_unparseable(server, media, tmp_path):
    server.set_default(raw_text("The ball is on the left."))
    (out,) = ground(server, tmp_path, [edit_row(media, "cat")])
    prompts = [server.prompt_of(r.body) for r in server.requests]
    assert len(prompts) == 2  # validation_retries: 1
    assert "could not be used" not in prompts[0] and "could not be used" in prompts[1]
    assert out["status"] == "dropped" and out["reason"].startswith("judge_unparseable"), out["reason"]
    assert out["vlm_usage"]["requests"] == 2


def test_http_500_after_retries_is_an_error(server, media, tmp_path):
    server.set_default(http_error(500))
    (out,) = ground(server, tmp_path, [edit_row(media, "cat")])
    assert len(server.requests) == 2  # first try + vlm.max_retries=1
    assert out["status"] == "error" and out["reason"].startswith("vlm_http_500"), out["reason"]
    assert out["mask_tgt"] is None


def test_a_sample_whose_media_is_missing_fails_alone(server, media, tmp_path):
    good = edit_row(media, "cup")
    missing = dict(edit_row(media, "cat"), sample_id="missing", source_uri=str(tmp_path / "gone.png"))
    server.set_default(ok(objects([100, 300, 300, 500])))
    out = ground(server, tmp_path, [missing, good])
    assert len(server.requests) == 1
    assert out[0]["status"] == "error" and out[0]["reason"].startswith("not_found: source"), out[0]["reason"]
    assert out[1]["status"] == "ok", out[1]["reason"]


# ---- object versus background grounding ----------------------------------------------------------


def test_object_edits_use_the_edit_area_prompt_and_mask_the_target_only(server, media, tmp_path):
    row = edit_row(media, "cup", category="local_change")
    width, height = frame_size(row["target_uri"])
    server.set_default(ok(objects(norm1000(BALL, width, height))))
    (out,) = ground(server, tmp_path, [row])
    prompt = server.prompt_of(server.requests[0].body)
    assert prompt.startswith("Two images are attached. Image 1 is the source image.")
    assert prompt.rstrip().endswith(f"Edit prompt: {row['instruction']}")
    assert "0-1000" in prompt  # box_format: norm1000, stated in the prompt
    assert out["status"] == "ok" and out["edit_mode"] == "object"
    assert out["mask_tgt"] is not None and out["mask_src"] is None
    (box,) = out["edit_boxes"]
    assert box["image"] == "edited" and box["label"] == "red ball"
    assert box["box"] == pytest.approx(list(BALL))


def test_background_changes_use_the_foreground_prompt_and_mask_both_frames(server, media, tmp_path):
    row = edit_row(media, "rocket", category="background_change", instruction="Put the rocket on the moon.")
    width, height = frame_size(row["target_uri"])
    rocket = norm1000((150, 40, 300, 400), width, height)
    moved = norm1000((160, 50, 310, 410), width, height)  # image_2's box is read in image 2, not copied from image 1
    answer = {"image_1": [{"bbox": rocket, "label": "rocket"}], "image_2": [{"bbox": moved, "label": "rocket"}]}
    server.set_default(ok(answer))
    (out,) = ground(server, tmp_path, [row])
    prompt = server.prompt_of(server.requests[0].body)
    assert prompt.startswith("Two images are attached: image 1 comes first and image 2 second.")
    assert row["instruction"] not in prompt  # Kiwi-Edit's prompt 2 takes no instruction
    assert out["status"] == "ok" and out["edit_mode"] == "background"
    boxes = {b["image"]: b["box"] for b in out["edit_boxes"]}
    assert boxes["source"] == pytest.approx([150, 40, 300, 400]) and boxes["edited"] == pytest.approx([160, 50, 310, 410])
    for key in ("mask_src", "mask_tgt"):
        assert decode_mask_png(out[key]).shape == (height, width)


def test_a_foreground_found_only_in_the_source_is_no_box(server, media, tmp_path):
    row = edit_row(media, "rocket", category="background_change", instruction="Put the rocket on the moon.")
    server.set_default(ok({"image_1": [{"bbox": [100, 100, 400, 900], "label": "rocket"}], "image_2": []}))
    (out,) = ground(server, tmp_path, [row])
    assert out["status"] == "dropped" and out["reason"].startswith("no_box: the VLM found no foreground"), out["reason"]
    assert [b["image"] for b in out["edit_boxes"]] == ["source"]


# ---- prompt versions -------------------------------------------------------------------------------


def test_a_v1_shaped_answer_to_the_v2_prompt_is_asked_again_then_unparseable(server, media, tmp_path):
    row = edit_row(media, "cat")
    server.set_default(ok(objects_v1([200, 300, 500, 700])))
    (out,) = ground(server, tmp_path, [row])
    assert len(server.requests) == 2
    assert "could not be used: schema_mismatch" in server.prompt_of(server.requests[1].body)
    assert out["status"] == "dropped" and out["reason"].startswith("judge_unparseable: schema_mismatch"), out["reason"]


def test_the_v1_prompts_are_selectable_and_their_answers_read(server, media, tmp_path):
    cat, rocket = edit_row(media, "cat"), edit_row(media, "rocket", category="background_change",
                                                       instruction="Put the rocket on the moon.")
    width, height = frame_size(cat["target_uri"])
    v1_foreground = {"objects": [{"label": "rocket", "bbox_2d": [100, 100, 400, 900], "image": "source"},
                                 {"label": "rocket", "bbox_2d": [100, 100, 400, 900], "image": "edited"}]}
    server.set_default(ok_from_prompt(lambda prompt: v1_foreground if "main subject" in prompt
                                      else objects_v1(norm1000(BALL, width, height))))
    stage_v1 = stage(server, tmp_path, "ground_edit.edit_area_template=ground_edit_area.v1",
                     "ground_edit.foreground_template=ground_foreground.v1")
    assert [t.file for t in stage_v1.templates()] == ["ground_edit_area.v1.j2", "ground_foreground.v1.j2"]
    out = stage_v1(rows_to_table([cat, rocket], SCHEMA)).to_pylist()
    prompts = sorted(server.prompt_of(r.body) for r in server.requests)
    assert prompts[0].startswith("You locate the main subject") and prompts[1].startswith("You locate the result")
    assert [o["status"] for o in out] == ["ok", "ok"], [o["reason"] for o in out]
    assert out[0]["edit_boxes"][0]["box"] == pytest.approx(list(BALL))
    assert sorted(b["image"] for b in out[1]["edit_boxes"]) == ["edited", "source"]


def test_the_default_prompts_are_v2(server, tmp_path):
    assert [t.file for t in stage(server, tmp_path).templates()] == ["ground_edit_area.v2.j2", "ground_foreground.v2.j2"]


@pytest.mark.parametrize("override, message", [
    ("ground_edit.edit_area_template=ground_foreground.v2", "edit_area_template must be ground_edit_area"),
    ("ground_edit.foreground_template=ground_foreground.v9", "unknown prompt template"),
    ("ground_edit.edit_area_template=reference_score", "edit_area_template must be ground_edit_area"),
])
def test_a_prompt_of_another_family_or_an_unknown_version_fails_at_build(server, tmp_path, override, message):
    with pytest.raises(ValidationError, match=message):
        stage(server, tmp_path, override)


def test_an_empty_mask_drops_the_sample(server, media, tmp_path):
    row = edit_row(media, "cat")
    width, height = frame_size(row["target_uri"])
    server.set_default(ok(objects(norm1000(BALL, width, height))))
    (out,) = ground(server, tmp_path, [row], "ground_edit.segmenter.mask_threshold=1e9")  # no logit is that high
    assert out["status"] == "dropped" and out["reason"].startswith("empty_mask"), out["reason"]
    assert out["mask_tgt"] is None and len(out["edit_boxes"]) == 1


# ---- what is stored -----------------------------------------------------------------------------


def test_stored_frames_are_the_first_frames_and_masks_have_their_size(server, media, tmp_path):
    rows = [edit_row(media, "cat"), edit_row(media, "car")]
    server.set_default(ok(objects([200, 300, 500, 700])))
    out = ground(server, tmp_path, rows)
    for row, result in zip(rows, out):
        assert result["status"] == "ok", result["reason"]
        source, target = first_frame(row["source_uri"]), first_frame(row["target_uri"])
        for stored, expected in ((result["src_frame"], source), (result["tgt_frame"], target)):
            frame = decode(stored)
            assert frame.shape == expected.shape
            assert np.abs(frame.astype(int) - expected).mean() < 3  # JPEG q95 of the same pixels
        assert decode_mask_png(result["mask_tgt"]).shape == target.shape[:2]
    assert out[1]["tgt_frame"] != out[1]["src_frame"] and decode(out[1]["tgt_frame"]).shape[:2] == CLIP_SIZE[::-1]


# ---- the segmenter ------------------------------------------------------------------------------


def test_segmenter_family_sam3_refines_the_box_with_sam3_tracker(server, media, tmp_path):
    """Kiwi-Edit §3.1 refines the grounding box with SAM3: `segmenter.family=sam3` loads Sam3TrackerModel."""
    sam3 = build_tiny_sam3_tracker(tmp_path / "tiny-sam3-tracker")
    row = edit_row(media, "cup", category="local_change")
    width, height = frame_size(row["target_uri"])
    server.set_default(ok(objects(norm1000(BALL, width, height))))
    # threshold far below any logit: the random model's mask is the whole frame, never empty
    (out,) = ground(server, tmp_path, [row], "ground_edit.segmenter.family=sam3", f"ground_edit.segmenter.model={sam3}",
                    "ground_edit.segmenter.mask_threshold=-1e9")
    assert out["status"] == "ok", out["reason"]
    mask = decode_mask_png(out["mask_tgt"])
    assert mask.shape == (height, width) and mask.all() and out["mask_src"] is None
