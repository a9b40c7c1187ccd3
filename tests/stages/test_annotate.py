"""The `annotate` stage against a loopback OpenAI-compatible server (real `openai` client, real
HTTP): turns and camera labels, the caption slot, the validation retry, per-turn and per-session
outcomes, and, through the Ray runner, the response cache, cost accounting and the budget."""

from __future__ import annotations

import base64
import json
import uuid

import cv2
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import BaseModel

from curation.backends.vlm import VLMConfig
from curation.core import media_store, storage
from curation.core.config import compose
from curation.core.runner import run
from curation.core.schema import SampleRow, arrow_schema
from curation.media.jpeg import encode_jpeg
from curation.prompts.transition import TransitionAnnotation
from curation.stages.annotate import Annotate
from curation.stages.sample_frames import SampleFramesColumns

from tests.fixtures.annotations import BREAKS_SCHEMA, VALID
from tests.fixtures.media import EXAMPLES
from tests.fixtures.openai_standin_server import command as standin_command
from tests.fixtures.openai_standin_server import processes_with
from tests.fixtures.vlm_servers import http_error, ok, ok_from_prompt, openai_server, raw_text


class CaptionColumn(BaseModel):
    caption: str | None = None


SCHEMA = media_store.inlined_schema(arrow_schema(SampleRow, SampleFramesColumns, CaptionColumn))  # media as bytes: no run


def real_frames(count: int) -> list[bytes]:
    """`count` JPEG frames of the bundled car clip, 160 px wide."""
    cap = cv2.VideoCapture(str(EXAMPLES / "intel-sample-videos" / "car-detection.mp4"))
    frames = []
    for index in range(0, 30 * count, 30):
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok_, frame = cap.read()
        assert ok_
        frame = cv2.resize(frame, (160, 90), interpolation=cv2.INTER_AREA)
        frames.append(encode_jpeg(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), 90))
    cap.release()
    return frames


def session_rows(frame_counts: list[int], caption: str | None = None) -> list[dict]:
    frames = real_frames(sum(frame_counts))  # no two sessions share a frame pair (or a cache entry)
    starts = [sum(frame_counts[:i]) for i in range(len(frame_counts))]
    return [
        dict(sample_id=f"s{i}", parent_ids=["clip"], kind="session", source_uri=f"video{i}.mp4", status="ok",
             stage="sample_frames", stage_version="1", frames=frames[start:start + n], frame_width=160,
             frame_height=90, frame_indices=list(range(start, start + n)), caption=caption)
        for i, (start, n) in enumerate(zip(starts, frame_counts))
    ]


def vlm(server, tmp_path, **overrides) -> VLMConfig:
    fields = dict(backend="openai", model="test-model", base_url=server.url, max_retries=2, backoff_initial_s=0.01,
                  backoff_max_s=0.05, timeout_s=5, cache_dir=str(tmp_path / "cache"))
    return VLMConfig(**{**fields, **overrides})


def annotate(rows: list[dict], cfg: VLMConfig, **fields) -> list[dict]:
    stage = Annotate(vlm=cfg, **fields)
    return stage(pa.Table.from_pylist(rows, schema=SCHEMA)).to_pylist()


def test_every_adjacent_pair_becomes_a_turn_with_instruction_and_camera_label(tmp_path):
    with openai_server(default=ok(VALID, prompt_tokens=100, completion_tokens=50)) as server:
        out = annotate(session_rows([3, 2], caption="A car in a parking lot."), vlm(server, tmp_path))
        assert len(server.requests) == 3  # 2 pairs + 1 pair
        prompt = server.requests[0].body["messages"][0]["content"]
        texts = [p["text"] for p in prompt if p["type"] == "text"]
        images = [p for p in prompt if p["type"] == "image_url"]
    assert any("A car in a parking lot." in t for t in texts)  # the caption slot
    assert len(images) == 2 and images[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert [len(r["turns"]) for r in out] == [2, 1]
    for row in out:
        assert row["status"] == "ok" and row["stage"] == "annotate"
        for k, turn in enumerate(row["turns"]):
            assert turn["index"] == k and turn["error"] is None
            assert turn["instruction"] == VALID["summary_change"]
            assert turn["camera"] == "pan-right" and turn["camera_raw"] == VALID["camera_change"]
            assert TransitionAnnotation.model_validate_json(turn["annotation"]).object_change == {"obj1": "moves forward"}
    assert out[0]["vlm_usage"]["prompt_tokens"] == 200 and out[0]["vlm_usage"]["completion_tokens"] == 100
    assert out[0]["vlm_usage"]["requests"] == 2


def test_a_schema_breaking_answer_is_asked_again_with_the_error(tmp_path):
    with openai_server(default=ok(VALID)) as server:
        server.enqueue(raw_text(BREAKS_SCHEMA))
        out = annotate(session_rows([2]), vlm(server, tmp_path))
        assert len(server.requests) == 2
        retry_prompt = " ".join(p["text"] for p in server.requests[1].body["messages"][0]["content"] if p["type"] == "text")
    assert "schema_mismatch" in retry_prompt and "summary_change" in retry_prompt
    assert out[0]["status"] == "ok" and out[0]["turns"][0]["annotation"] is not None


def test_pairs_failing_twice_are_recorded_per_turn_and_a_session_without_valid_turns_is_dropped(tmp_path):
    rows = session_rows([3, 2])
    # Bad answers for the pairs starting at s0's frame 0 and s1's frame 0, whatever order they arrive in.
    bad_first_frames = [base64.b64encode(rows[0]["frames"][0]).decode(), base64.b64encode(rows[1]["frames"][0]).decode()]

    def answer(body_text: str):
        body = json.loads(body_text)
        first_image = next(p["image_url"]["url"] for p in body["messages"][0]["content"] if p["type"] == "image_url")
        return "not an annotation" if first_image.split(",", 1)[1] in bad_first_frames else VALID

    with openai_server(default=ok_from_prompt(answer)) as server:
        server.prompt_of = json.dumps  # hand the whole request body to `answer`
        out = annotate(rows, vlm(server, tmp_path))
        assert len(server.requests) == 3 + 2  # three pairs, two of them asked again
    s0, s1 = out
    assert s0["status"] == "ok"
    assert s0["turns"][0]["error"].startswith("invalid_json") and s0["turns"][0]["annotation"] is None
    assert s0["turns"][1]["annotation"] is not None and s0["turns"][1]["error"] is None
    assert s1["status"] == "dropped" and s1["reason"].startswith("no_valid_turn: 0 of 1")
    assert s1["turns"][0]["error"].startswith("invalid_json")


def test_a_turn_the_vlm_could_not_annotate_keeps_the_homography_camera_label(tmp_path):
    rows = session_rows([3])
    rows[0]["turns"] = [{"index": k, "camera": "tilt-up", "camera_raw": "homography: tilt-up"} for k in range(2)]
    bad_first_frame = base64.b64encode(rows[0]["frames"][0]).decode()

    def answer(body_text: str):
        body = json.loads(body_text)
        first_image = next(p["image_url"]["url"] for p in body["messages"][0]["content"] if p["type"] == "image_url")
        return "not an annotation" if first_image.split(",", 1)[1] == bad_first_frame else VALID

    with openai_server(default=ok_from_prompt(answer)) as server:
        server.prompt_of = json.dumps
        (row,) = annotate(rows, vlm(server, tmp_path))
    failed, annotated = row["turns"]
    assert failed["error"].startswith("invalid_json") and (failed["camera"], failed["camera_raw"]) == ("tilt-up", "homography: tilt-up")
    assert (annotated["camera"], annotated["camera_raw"]) == ("pan-right", VALID["camera_change"])  # the VLM's wins


def test_api_errors_after_retries_make_the_session_an_error_and_keep_the_reason(tmp_path):
    with openai_server(default=http_error(500)) as server:
        out = annotate(session_rows([2]), vlm(server, tmp_path, max_retries=1))
        assert len(server.requests) == 2  # first try + one retry
    assert out[0]["status"] == "error" and out[0]["reason"].startswith("vlm_http_500")
    assert out[0]["turns"][0]["error"].startswith("vlm_http_500")


def test_429_with_retry_after_then_success(tmp_path):
    with openai_server(default=ok(VALID)) as server:
        server.enqueue(http_error(429, retry_after=0.2))
        out = annotate(session_rows([2]), vlm(server, tmp_path))
        assert len(server.requests) == 2
    assert out[0]["status"] == "ok" and out[0]["vlm_usage"]["retries"] == 1


def write_sessions(tmp_path, frame_counts: list[int]) -> str:
    rows = session_rows(frame_counts)
    half = len(rows) // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        storage.write_table_atomic(pa.Table.from_pylist(part, schema=SCHEMA), str(tmp_path / "sessions" / f"part-{i:05d}.parquet"))
    return str(tmp_path / "sessions")


def run_annotate(tmp_path, server, output: str, *extra: str):
    cfg = compose(["stage=annotate", f"input={write_sessions(tmp_path, [2, 3, 2, 2])}", f"output={tmp_path / output}",
                   "vlm=openai", f"vlm.base_url={server.url}", "vlm.model=test-model", "vlm.max_retries=1", "vlm.api_key_env=null",
                   "vlm.backoff_initial_s=0.01", f"vlm.cache_dir={tmp_path / 'cache'}", "progress=false",
                   "vlm.usd_per_mtok_input=1.0", "vlm.usd_per_mtok_output=2.0", *extra])
    return run(cfg)[0]


@pytest.mark.slow
def test_through_ray_a_second_identical_run_is_served_from_the_cache(tmp_path, ray_local):
    with openai_server(default=ok_from_prompt(lambda prompt: VALID)) as server:
        first = run_annotate(tmp_path, server, "run1")
        sent = len(server.requests)
        assert sent == 5, first.counts  # 1 + 2 + 1 + 1 pairs
        second = run_annotate(tmp_path, server, "run2")
        assert len(server.requests) == sent  # zero new HTTP requests
    assert first.counts["ok"] == second.counts["ok"] == 4
    record1 = json.loads((tmp_path / "run1" / "01-annotate" / "_run.json").read_text())
    record2 = json.loads((tmp_path / "run2" / "01-annotate" / "_run.json").read_text())
    usage1, usage2 = record1["vlm"]["usage"], record2["vlm"]["usage"]
    assert usage1["requests"] == 5 and usage1["prompt_tokens"] == 50 and usage1["completion_tokens"] == 25
    assert usage1["usd"] == pytest.approx(50 * 1e-6 + 25 * 2e-6)
    assert usage2["requests"] == 0 and usage2["cache_hits"] == 5 and usage2["usd"] == 0
    assert record1["model_ids"]["prompt"].startswith("transition_annotation.v2.j2@")
    assert "OPENAI_API_KEY" not in json.dumps(record1["config"]["vlm"]).replace('"api_key_env": "OPENAI_API_KEY"', "")


@pytest.mark.slow
def test_through_ray_the_budget_stops_sending_and_says_so(tmp_path, ray_local):
    # Each request costs 10 prompt tokens at $1e5/Mtok = $1: a $1.5 budget allows two (in flight at once: at most 3).
    with openai_server(default=ok(VALID)) as server:
        result = run_annotate(tmp_path, server, "run", "budget.max_usd=1.5", "vlm.usd_per_mtok_input=100000",
                              "vlm.max_in_flight=1")
        sent = len(server.requests)
    assert sent == 2
    record = json.loads((tmp_path / "run" / "01-annotate" / "_run.json").read_text())
    assert record["vlm"]["budget_exhausted"] == result.counts["error"]["budget_exhausted"] >= 2
    assert record["vlm"]["usage"]["usd"] == pytest.approx(2.0 + 2 * 5 * 2e-6)
    table = storage.read_table(str(tmp_path / "run" / "01-annotate"))
    errors = table.filter(pc.equal(table.column("status"), "error")).column("reason").to_pylist()
    assert all(r.startswith("budget_exhausted") for r in errors)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_through_ray_vlm_vllm_starts_its_servers_for_the_stage_and_stops_them(tmp_path, ray_local):
    # The engine replaced by a stand-in speaking its API; CPU-only actors (num_gpus=0) on the test cluster.
    tag = f"annotate-vllm-{uuid.uuid4().hex}"
    server = standin_command("tests.fixtures.annotations:VALID", "--tag", tag)
    cfg = compose(["stage=annotate", f"input={write_sessions(tmp_path, [2, 3, 2, 2])}", f"output={tmp_path / 'run'}",
                   "vlm=vllm", "vlm.model=org/standin-vl", f"vlm.server.command=[{','.join(json.dumps(a) for a in server)}]",
                   "vlm.server.replicas=2", "vlm.server.num_gpus=0", "vlm.server.num_cpus=0", "vlm.server.host=127.0.0.1",
                   f"vlm.cache_dir={tmp_path / 'cache'}", "progress=false"])
    result = run(cfg)[0]
    assert result.counts["ok"] == 4, result.counts
    record = json.loads((tmp_path / "run" / "01-annotate" / "_run.json").read_text())
    assert record["vlm"]["model"] == "vllm:org/standin-vl" and record["vlm"]["usage"]["requests"] == 5
    assert not processes_with(tag)  # the stage's end stopped both servers
