"""The `caption` stage against a loopback OpenAI-compatible server (real `openai` client, real
HTTP): a few frames of each clip or session in time order, the caption stored on the row, a bad
answer leaving the sample captionless but alive, and a transport failure making it an error."""

from __future__ import annotations

import base64

import pyarrow as pa

from curation.core import media_store
from curation.core.schema import SampleRow, arrow_schema, make_sample_id
from curation.prompts.templates import load_template
from curation.stages.caption import Caption
from curation.stages.sample_frames import SampleFramesColumns

from tests.fixtures.media import EXAMPLES
from tests.fixtures.vlm_servers import http_error, ok, openai_server, raw_text
from tests.stages.test_annotate import real_frames, vlm

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
    assert prompt == load_template("caption").render(num_frames=4, feedback=None)
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
