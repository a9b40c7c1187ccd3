"""render: a prompt row becomes a `pair` whose source was drawn from `source_prompt` and whose
target is that image edited with the row's instruction. Diffusers on tiny random pipelines; the
API path against a loopback server (images/generations then images/edits): the cache, a 500
after retries, the budget, a bad row in a mixed batch; and a run killed with SIGKILL in the middle
of the stage, rerun, re-asks the API nothing it already answered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
from omegaconf import OmegaConf
from pydantic import BaseModel

from curation.core import layout, storage
from curation.core.config import compose
from curation.core.runner import run as run_pipeline
from curation.core.schema import SampleRow, arrow_schema, make_sample_id, merge_schemas, rows_to_table
from curation.shards.writer import sample_members
from curation.stages.render import Render

from tests.fixtures.vlm_servers import http_error, image_ok, invert_image, openai_server, prompt_image

SIZE = "64x48"


class PromptColumns(BaseModel):
    source_prompt: str | None = None
    edit_prompt: str | None = None
    instruction: str | None = None
    task_type: str | None = None
    category: str | None = None


SCHEMA = merge_schemas(arrow_schema(SampleRow), arrow_schema(PromptColumns))


def prompt_row(i: int, **overrides) -> dict:
    """What the prompts stage writes: one (scene, task) with its source prompt, edited prompt and instruction."""
    uri = f"synthesis://scene/{i}"
    row = dict(sample_id=make_sample_id("prompt", uri, i), parent_ids=[], kind="prompt", source_uri=uri, status="ok",
               stage="prompts", stage_version="1", source_prompt=f"a wooden cabin by a lake, scene {i}",
               edit_prompt=f"the same cabin by the lake covered in snow, scene {i}", instruction=f"Cover the cabin in snow ({i}).",
               task_type="weather", category="global_style")
    row.update(overrides)
    return row


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def stage(tmp_path: Path, *overrides: str, **fields) -> Render:
    """render with its packaged defaults (plus `overrides`, config keys), `fields` on top, bound to a run dir."""
    options = OmegaConf.to_container(compose(list(overrides))["render"], resolve=True)
    render = Render(**{**options, **fields})
    render.bind_run(str(tmp_path / "run"), str(tmp_path / "run" / "01-render"))
    return render


def run(render: Render, rows: list[dict]) -> list[dict]:
    return render(rows_to_table(rows, SCHEMA)).to_pylist()


# ---- diffusers ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")
def test_diffusers_makes_a_pair_of_stored_images_at_the_size_and_redraws_it_identically(tmp_path):
    render = stage(tmp_path, "models=tiny", f"render.source.size={SIZE}", "render.source.diffusers.device=cpu",
                   "render.edit.diffusers.device=cpu")
    assert render.uses_gpu() and render.models()["text_to_image"].random_weights
    row = prompt_row(0)
    (pair,) = run(render, [row])
    assert pair["status"] == "ok", pair["reason"]
    assert pair["kind"] == "pair" and pair["edit_kind"] == "pair" and pair["parent_ids"] == [row["sample_id"]]
    assert pair["sample_id"] == make_sample_id("pair", row["source_uri"], "render", row["sample_id"])
    for column in ("source_uri", "target_uri"):
        assert os.path.isabs(pair[column]) and pair[column].startswith(str(tmp_path / "run" / "01-render"))
    source, target = decode(Path(pair["source_uri"]).read_bytes()), decode(Path(pair["target_uri"]).read_bytes())
    assert source.shape == target.shape == (48, 64, 3)
    assert (pair["width"], pair["height"], pair["target_width"], pair["target_height"]) == (64, 48, 64, 48)
    assert pair["generator"] == "source: tiny:stable-diffusion; target: tiny:instruct-pix2pix"
    assert pair["render_usage"] is None  # no API was paid
    assert (pair["instruction"], pair["source_prompt"], pair["category"]) == (row["instruction"], row["source_prompt"], "global_style")
    # A fresh worker (a rerun) draws the same seed, hence the same source, byte for byte.
    (again,) = run(stage(tmp_path, "models=tiny", f"render.source.size={SIZE}", "render.source.diffusers.device=cpu",
                         "render.edit.diffusers.device=cpu"), [row])
    assert again["render_seed"] == pair["render_seed"] and again["source_uri"] == pair["source_uri"]
    # Another base seed draws another source.
    (reseeded,) = run(stage(tmp_path, "models=tiny", f"render.source.size={SIZE}", "render.source.seed=1",
                            "render.source.diffusers.device=cpu", "render.edit.diffusers.device=cpu"), [row])
    assert reseeded["render_seed"] != pair["render_seed"] and reseeded["source_uri"] != pair["source_uri"]


# ---- api ---------------------------------------------------------------------------------------


def api_overrides(server, tmp_path: Path, **extra: object) -> list[str]:
    """Both halves through the loopback OpenAI server, one response cache for the test."""
    common = {**dict(base_url=server.url, max_retries=1, backoff_initial_s=0.01, backoff_max_s=0.05, timeout_s=10,
                     usd_per_image=0.04, cache_dir=str(tmp_path / "cache")), **extra}
    out = [f"render.source.size={SIZE}", "render.source.backend=api", "render.edit.backend=api"]
    for block, model in (("render.source.api", "drawer"), ("render.edit.api", "editor")):
        out += [f"{block}.backend=openai", f"{block}.model={model}", *(f"{block}.{k}={v}" for k, v in common.items())]
    return out


def requests_by_prompt(server) -> Counter:
    return Counter((r.path.rsplit("/", 1)[1], server.prompt_of(r.body)) for r in server.requests)


def test_api_draws_then_edits_with_the_instruction_and_a_rerun_is_served_from_the_cache(tmp_path):
    row = prompt_row(1)
    with openai_server(default=image_ok()) as server:  # a generation: the prompt's colour, inverted; an edit: the inverse
        render = stage(tmp_path, *api_overrides(server, tmp_path))
        assert not render.uses_gpu() and render.usd_per_request(0, 0) == pytest.approx(0.04)
        (pair,) = run(render, [row])
        generate, edit = server.requests
        (again,) = run(stage(tmp_path, *api_overrides(server, tmp_path)), [row])
        assert len(server.requests) == 2  # the rerun sent nothing
    assert generate.path == "/v1/images/generations" and generate.body["prompt"] == row["source_prompt"]
    assert generate.body["size"] == SIZE
    assert edit.path == "/v1/images/edits" and server.prompt_of(edit.body) == row["instruction"]  # edit_with=instruction
    assert pair["status"] == "ok", pair["reason"]
    source = Path(pair["source_uri"]).read_bytes()
    assert source == invert_image(prompt_image(row["source_prompt"], SIZE)) and server.image_of(edit.body) == source
    assert np.array_equal(decode(Path(pair["target_uri"]).read_bytes()), 255 - decode(source))
    assert pair["generator"] == "source: openai:drawer; target: openai:editor"
    usage = pair["render_usage"]
    assert (usage["requests"], usage["cache_hits"], usage["usd"]) == (2, 0, pytest.approx(0.08))
    assert again["sample_id"] == pair["sample_id"] and again["target_uri"] == pair["target_uri"]
    assert (again["render_usage"]["requests"], again["render_usage"]["cache_hits"]) == (0, 2)


def test_edit_with_edit_prompt_sends_the_edited_scene(tmp_path):
    row = prompt_row(2)
    with openai_server(default=image_ok()) as server:
        (pair,) = run(stage(tmp_path, *api_overrides(server, tmp_path), "render.edit_with=edit_prompt"), [row])
        assert server.prompt_of(server.requests[1].body) == row["edit_prompt"]
    assert pair["status"] == "ok"


def test_an_http_500_after_retries_fails_the_row_not_the_run(tmp_path):
    row = prompt_row(3)
    with openai_server(default=http_error(500)) as server:
        (out,) = run(stage(tmp_path, *api_overrides(server, tmp_path)), [row])
        assert len(server.requests) == 2  # first try + max_retries=1, and no edit without a source
    assert out["status"] == "error" and out["reason"].startswith("vlm_http_500"), out["reason"]
    assert out["sample_id"] == row["sample_id"] and out["kind"] == "prompt" and out["target_uri"] is None
    assert out["render_usage"]["requests"] == 2


def test_the_budget_stops_sending_and_what_was_paid_is_reused_after_raising_it(tmp_path):
    rows = [prompt_row(4), prompt_row(5)]
    with openai_server(default=image_ok()) as server:
        render = stage(tmp_path, *api_overrides(server, tmp_path, max_in_flight=1), max_usd=0.04)
        first, second = run(render, rows)
        assert len(server.requests) == 1  # the first draw; then the budget is spent
        # A rerun with room in the budget (retry_errors) pays only for what was never answered.
        again = run(stage(tmp_path, *api_overrides(server, tmp_path, max_in_flight=1)), rows)
        assert len(server.requests) == 1 + 3
    for out in (first, second):
        assert out["status"] == "error" and out["reason"].startswith("budget_exhausted"), out["reason"]
    assert (first["render_usage"]["requests"], first["render_usage"]["usd"]) == (1, pytest.approx(0.04))
    assert second["render_usage"]["requests"] == 0
    assert [r["status"] for r in again] == ["ok", "ok"]
    assert (again[0]["render_usage"]["cache_hits"], again[0]["render_usage"]["requests"]) == (1, 1)


def test_a_mixed_batch_keeps_its_order_and_fails_only_its_bad_rows(tmp_path):
    rows = [prompt_row(6), prompt_row(7, source_prompt=None), prompt_row(8), prompt_row(9, instruction="  ")]
    with openai_server(default=image_ok()) as server:
        # The edit of scene 8 fails on the server: that row fails at its second request.
        render = stage(tmp_path, *api_overrides(server, tmp_path, max_retries=0, max_in_flight=1))
        server.enqueue(image_ok(), image_ok(), image_ok(), http_error(500))  # draw 6, draw 8, edit 6, edit 8
        out = run(render, rows)
    assert [r["status"] for r in out] == ["ok", "error", "error", "error"]
    assert out[0]["kind"] == "pair" and out[0]["source_uri"] != rows[0]["source_uri"]
    assert out[1]["reason"].startswith("missing_prompt") and "source_prompt" in out[1]["reason"]
    assert out[2]["reason"].startswith("vlm_http_500") and out[2]["render_usage"]["requests"] == 2
    assert out[3]["reason"].startswith("missing_prompt") and "instruction" in out[3]["reason"]
    assert [r["sample_id"] for r in out[1:]] == [r["sample_id"] for r in rows[1:]]


def test_a_pair_is_what_the_shard_writer_takes(tmp_path):
    with openai_server(default=image_ok()) as server:
        (pair,) = run(stage(tmp_path, *api_overrides(server, tmp_path)), [prompt_row(10)])
    members = sample_members(pair)
    assert {"src.jpg", "tgt.jpg"} <= set(members)


# ---- resume after SIGKILL ------------------------------------------------------------------------


def write_prompt_manifest(root: Path, parts: int, rows_per_part: int) -> None:
    root.mkdir(parents=True)
    for p in range(parts):
        rows = [prompt_row(p * rows_per_part + i) for i in range(rows_per_part)]
        storage.write_table_atomic(rows_to_table(rows, SCHEMA), str(root / f"part-{p:05d}.parquet"))


def run_args(server, tmp_path: Path, manifest: Path, run_dir: Path) -> list[str]:
    return ["stages=[render]", f"input={manifest}", f"output={run_dir}", "progress=false", "cluster.num_cpus=2",
            "render.resources.batch_size=2", "render.resources.concurrency=[1,1]",
            *api_overrides(server, tmp_path, max_in_flight=2)]


@pytest.mark.timeout(300)
def test_a_sigkilled_run_resumes_without_asking_again_what_was_answered(tmp_path, ray_local):
    """`curate run` killed with SIGKILL once some parts are written, then rerun: only the requests
    in flight at the kill (at most max_in_flight=2 per worker, one worker) may be sent again, since
    every answer is cached the moment it arrives; the sample ids equal an uninterrupted run's."""
    manifest, run_dir = tmp_path / "prompts", tmp_path / "run"
    write_prompt_manifest(manifest, parts=8, rows_per_part=2)
    with openai_server(default=image_ok(latency_s=0.3)) as server:
        command = [sys.executable, "-m", "curation.cli", "run", *run_args(server, tmp_path, manifest, run_dir)]
        proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stage_dir = run_dir / "01-render"
        try:
            deadline = time.monotonic() + 240
            while not stage_dir.exists() or len(layout.manifest_parts(str(stage_dir))) < 2:
                assert proc.poll() is None, "the run ended before it could be killed"
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert len(layout.manifest_parts(str(stage_dir))) < 8, "killed too late to test a resume"
        subprocess.run(command, check=True, capture_output=True, timeout=240)
        counts = requests_by_prompt(server)
        repeats = sum(n - 1 for n in counts.values())
        assert repeats <= 2, {k: n for k, n in counts.items() if n > 1}
        assert len(counts) == 16 * 2  # every row's draw and edit reached the server at least once
        reference_dir = tmp_path / "uninterrupted"
        run_pipeline(compose(run_args(server, tmp_path, manifest, reference_dir)))
    resumed = storage.read_table(str(stage_dir))
    reference = storage.read_table(str(reference_dir / "01-render"))
    assert resumed.column("status").to_pylist() == ["ok"] * 16
    assert sorted(resumed.column("sample_id").to_pylist()) == sorted(reference.column("sample_id").to_pylist())
    assert resumed.select(["sample_id"]).equals(reference.select(["sample_id"]))  # and in the same order


def test_the_stage_is_registered_and_its_defaults_load():
    cfg = compose(["stages=[render]"])
    render = Render(**OmegaConf.to_container(cfg["render"], resolve=True))
    assert render.expected.requests_per_row == 2 and render.edit_with == "instruction"
    assert pa.schema(render.output_schema(SCHEMA)).field("target_uri").type == pa.string()


def test_the_dry_run_asks_both_endpoints_and_generates_nothing(tmp_path):
    with openai_server(default=image_ok()) as server:
        server.models = ["drawer", "editor"]
        said = stage(tmp_path, *api_overrides(server, tmp_path)).api_check()
        assert said == "answers; serves drawer; answers; serves editor"
        assert server.requests == [] and len(server.lookups) == 2
