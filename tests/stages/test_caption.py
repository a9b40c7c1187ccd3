"""The `caption` stage against a loopback OpenAI-compatible server (real `openai` client, real
HTTP): a few frames of each clip or session in time order, an edit's target image or target video
frames (RVEDiT recaptions targets), the caption stored on the row, a bad answer leaving the sample
captionless but alive, and a transport failure making it an error."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curation.core import media_store
from curation.core.schema import SampleRow, arrow_schema, make_sample_id
from curation.prompts.templates import load_template
from curation.shards.writer import sample_members
from curation.stages.caption import Caption
from curation.stages.sample_frames import SampleFramesColumns

from tests.fixtures.media import EXAMPLES
from tests.fixtures.vlm_servers import http_error, ok, openai_server, raw_text
from tests.stages.test_annotate import real_frames, vlm
from tests.stages.test_edit_score import SCHEMA as EDIT_SCHEMA
from tests.stages.test_edit_score import marker_level, pair_rows, triplet_row

CAPTION = {"caption": "A white car drives across an empty parking lot seen from above."}
SCHEMA = media_store.inlined_schema(arrow_schema(SampleRow, SampleFramesColumns))
CAR = EXAMPLES / "intel-sample-videos" / "car-detection.mp4"


def session(frames: list[bytes], sample_id: str = "s0") -> dict:
    return dict(sample_id=sample_id, parent_ids=["clip"], kind="session", source_uri="video.mp4", status="ok",
                stage="sample_frames", stage_version="2", frames=frames, frame_width=160, frame_height=90)


def sent_images(request) -> list[bytes]:
    content = request.body["messages"][0]["content"]
    return [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in content if p["type"] == "image_url"]


def caption(rows: list[dict], cfg, schema: pa.Schema = SCHEMA, **fields) -> list[dict]:
    return Caption(vlm=cfg, **fields)(pa.Table.from_pylist(rows, schema=schema)).to_pylist()


def test_a_session_is_captioned_from_a_few_of_its_frames_in_order(tmp_path):
    frames = real_frames(8)
    with openai_server(default=ok(CAPTION)) as server:
        (row,) = caption([session(frames)], vlm(server, tmp_path))
        (request,) = server.requests
        prompt = server.prompt_of(request.body)
    assert row["status"] == "ok" and row["stage"] == "caption"
    assert row["caption"] == CAPTION["caption"] and row["caption_error"] is None
    assert sent_images(request) == [frames[1], frames[3], frames[5], frames[7]]  # 4 spread evenly, in time order
    assert prompt == load_template("caption").render(num_frames=4, is_video=True, feedback=None)
    assert row["vlm_usage"]["requests"] == 1


def test_a_clip_is_captioned_from_decoded_frames(tmp_path):
    clip = dict(sample_id=make_sample_id("clip", str(CAR), (0, 100)), parent_ids=["v"], kind="clip", source_uri=str(CAR),
                status="ok", stage="scene_split", stage_version="1", start_frame=0, end_frame=100, fps=12.5)
    schema = arrow_schema(SampleRow).append(pa.field("start_frame", pa.int64())).append(pa.field("end_frame", pa.int64()))
    schema = schema.append(pa.field("fps", pa.float64()))
    with openai_server(default=ok(CAPTION)) as server:
        (row,) = caption([clip], vlm(server, tmp_path), schema, num_frames=3)
        (request,) = server.requests
    images = sent_images(request)
    assert row["status"] == "ok" and row["caption"] == CAPTION["caption"]
    assert len(images) == 3 and all(im[:2] == b"\xff\xd8" for im in images) and len(set(images)) == 3


def test_a_bad_answer_leaves_the_sample_without_caption_and_an_api_error_is_retryable(tmp_path):
    frames = real_frames(4)
    with openai_server(default=raw_text("no json here")) as server:
        (row,) = caption([session(frames[:2])], vlm(server, tmp_path))
        assert len(server.requests) == 2  # asked again with the validation error
    assert row["status"] == "ok" and row["caption"] is None and row["caption_error"].startswith("invalid_json")
    with openai_server(default=http_error(500)) as server:
        rows = caption([session(frames[2:], "s1"), {**session([], "s2"), "frames": None}], vlm(server, tmp_path, max_retries=0))
    assert rows[0]["status"] == "error" and rows[0]["reason"].startswith("vlm_http_500")
    assert rows[1]["status"] == "error" and rows[1]["reason"].startswith("no_media")


# --------------------------------------------------------------------------------------------
# Edits: the target (RVEDiT), or the source when asked
# --------------------------------------------------------------------------------------------


def rgb(jpeg_or_png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg_or_png)) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def test_a_pairs_caption_request_carries_its_target_image_not_its_source(tmp_path):
    rows = pair_rows(tmp_path, ["Add a red disc."])
    target, source = (Path(rows[0][f"{side}_uri"]).read_bytes() for side in ("target", "source"))
    with openai_server(default=ok(CAPTION)) as server:
        (row,) = caption(rows, vlm(server, tmp_path), EDIT_SCHEMA)
        (request,) = server.requests
        prompt = server.prompt_of(request.body)
    assert row["status"] == "ok" and row["caption"] == CAPTION["caption"] and row["stage_version"] == "2"
    assert sent_images(request) == [target] and target != source  # a small upright PNG goes as it is
    assert prompt == load_template("caption").render(num_frames=1, is_video=False, feedback=None)
    assert "one still image" in prompt and "video" not in prompt


def test_a_pair_image_too_large_for_the_vlm_is_decoded_and_sent_as_its_target(tmp_path):
    rows = pair_rows(tmp_path, ["Add a red disc."])  # 96 px; the target has a red disc at its centre
    with openai_server(default=ok(CAPTION)) as server:
        (row,) = caption(rows, vlm(server, tmp_path, image_max_side=48), EDIT_SCHEMA)
        (request,) = server.requests
    (sent,) = sent_images(request)
    assert row["status"] == "ok" and sent[:2] == b"\xff\xd8"  # decoded, JPEG-encoded, then shrunk by the client
    pixels = rgb(sent)
    assert pixels.shape == (48, 48, 3)
    assert np.abs(pixels[20:28, 20:28] - [220, 30, 30]).mean() < 25  # the target's disc, not the source photo


def test_a_triplets_caption_request_carries_frames_spread_over_its_target_video(tmp_path):
    row = triplet_row(tmp_path, "Tint the car red.")  # 12 frames; the target's region [40:90, 60:140] is red
    with openai_server(default=ok(CAPTION)) as server:
        (out,) = caption([row], vlm(server, tmp_path), EDIT_SCHEMA)
        (request,) = server.requests
        prompt = server.prompt_of(request.body)
    assert out["status"] == "ok" and out["caption"] == CAPTION["caption"]
    assert prompt == load_template("caption").render(num_frames=4, is_video=True, feedback=None)
    frames = [rgb(image) for image in sent_images(request)]
    # sample_indices(0, 12, 4): the middles of four equal parts, in time order (the corner marker says which).
    assert [round(f[4:28, 4:28].mean()) for f in frames] == pytest.approx([marker_level(i) for i in (1, 4, 7, 10)], abs=4)
    assert all(f[50:80, 70:130, 0].mean() > 200 for f in frames)  # the target's red tint (the source is not red there)


def test_of_picks_the_source_or_the_target_and_refuses_media_a_sample_lacks(tmp_path):
    (pair,) = pair_rows(tmp_path, ["Add a red disc."])
    quad = {**triplet_row(tmp_path, "Tint the car red."), "sample_id": "quad0", "kind": "quad"}
    with openai_server(default=ok(CAPTION)) as server:
        by_source = caption([pair], vlm(server, tmp_path), EDIT_SCHEMA, of="source")
        assert sent_images(server.requests[0]) == [Path(pair["source_uri"]).read_bytes()]
        quads = caption([quad], vlm(server, tmp_path), EDIT_SCHEMA)
        assert all(rgb(image)[50:80, 70:130, 0].mean() > 200 for image in sent_images(server.requests[1]))
        misfits = caption([pair], vlm(server, tmp_path), EDIT_SCHEMA, of="clip")
        misfits += caption([session(real_frames(2))], vlm(server, tmp_path), of="target")
        assert len(server.requests) == 2  # nothing is sent for a sample without the media asked for
    assert by_source[0]["caption"] == quads[0]["caption"] == CAPTION["caption"]
    assert [(r["status"], r["reason"].split(":")[0]) for r in misfits] == [("error", "no_media")] * 2
    assert "caption.of=clip" in misfits[0]["reason"] and "caption.of=target" in misfits[1]["reason"]


def test_the_shard_json_has_the_caption_and_null_for_a_sample_never_captioned(tmp_path):
    """HF `datasets` wants one json schema and one member set per shard: the caption is a field of
    every sample's json (null when the stage did not run or no answer validated), never a member."""
    captioned_row, plain_row = pair_rows(tmp_path, ["Add a red disc.", "Add another red disc."])
    with openai_server(default=ok(CAPTION)) as server:
        (captioned_row,) = caption([captioned_row], vlm(server, tmp_path), EDIT_SCHEMA)
    captioned, plain = sample_members(captioned_row), sample_members(plain_row)
    assert "caption" not in plain_row and set(captioned) == set(plain) == {"txt", "src.jpg", "tgt.jpg", "json"}
    assert json.loads(captioned["json"])["caption"] == CAPTION["caption"]
    meta = json.loads(plain["json"])
    assert "caption" in meta and meta["caption"] is None
