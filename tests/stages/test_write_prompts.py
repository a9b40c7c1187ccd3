"""The `write_prompts` stage against a loopback OpenAI-compatible server: one text-only request per
entry of a scene's tasks, each answer a `prompt` child of the scene with its task, category and
three texts; a task listed twice asked twice (numbered, so not one cached answer twice); an
unreadable answer drops only its child; a failed request makes the scene one retryable error row,
whose retry takes the answers already paid for from the response cache."""

from __future__ import annotations

import re

import pyarrow as pa

from curation.core.schema import SampleRow, arrow_schema, make_sample_id
from curation.labels.categories import TAXONOMY
from curation.prompts.synthesis import TASK_CATEGORY, TASK_TYPES
from curation.prompts.templates import load_template
from curation.stages.plan_scenes import PlanScenesColumns
from curation.stages.write_prompts import WritePrompts

from tests.fixtures.vlm_servers import http_error, ok, ok_from_prompt, openai_server
from tests.stages.test_annotate import vlm
from tests.stages.test_judge_plausibility import text_only

SCHEMA = arrow_schema(SampleRow, PlanScenesColumns)
SCENE = dict(sample_id="scene0", parent_ids=[], kind="scene", source_uri="plan:p.yaml#an old library/0", status="ok",
             stage="judge_plausibility", stage_version="1", environment="an old library", conditions=["low sun", "a cat asleep"],
             scene_index=0, tasks=["color_texture_change", "relighting", "relighting"], plan_seed=0)
TASK_LINE = re.compile(r"The edit task: ([a-z ]+), which means")
VARIANT = re.compile(r"This is edit (\d) of (\d)")


def answer(prompt: str) -> dict:
    """Texts that say which request they answer: its task and, for a repeated task, its number."""
    task = TASK_LINE.search(prompt).group(1).replace(" ", "_")
    variant = VARIANT.search(prompt)
    tag = f"{task}#{variant.group(1) if variant else 1}"
    return {"source_prompt": f"source {tag}", "edit_prompt": f"edited {tag}", "instruction": f"do {tag}"}


def write(rows: list[dict], cfg, **fields) -> list[dict]:
    return WritePrompts(vlm=cfg, **fields)(pa.Table.from_pylist(rows, schema=SCHEMA)).to_pylist()


def test_each_task_of_a_scene_becomes_one_request_and_one_prompt_child(tmp_path):
    with openai_server(default=ok_from_prompt(answer)) as server:
        children = write([SCENE], vlm(server, tmp_path))
        prompts = [server.prompt_of(r.body) for r in server.requests]
        assert all(text_only(r) for r in server.requests)
    assert len(prompts) == 3 and len(children) == 3
    template = load_template("synthesis_prompts")
    assert template.render(environment="an old library", conditions=["low sun", "a cat asleep"], task="relighting",
                           task_description=TASK_TYPES["relighting"], variant=2, variants=2, feedback=None) in prompts
    assert sorted((c["task_type"], c["instruction"]) for c in children) == [
        ("color_texture_change", "do color_texture_change#1"), ("relighting", "do relighting#1"), ("relighting", "do relighting#2")]
    for child in children:
        tag = child["instruction"].removeprefix("do ")
        occurrence = int(tag.split("#")[1]) - 1
        assert child["kind"] == "prompt" and child["status"] == "ok" and child["stage"] == "write_prompts"
        assert child["parent_ids"] == ["scene0"] and child["environment"] == "an old library"
        assert child["sample_id"] == make_sample_id("prompt", SCENE["source_uri"], (child["task_type"], occurrence), "scene0")
        assert (child["source_prompt"], child["edit_prompt"]) == (f"source {tag}", f"edited {tag}")
        assert child["category"] == TASK_CATEGORY[child["task_type"]] and child["vlm_usage"]["requests"] == 1
    assert {c["category"] for c in children} == {"color_texture", "relight"}


def test_every_task_type_maps_to_a_curate_category():
    assert len(TASK_TYPES) == 10 and set(TASK_CATEGORY) == set(TASK_TYPES)
    assert set(TASK_CATEGORY.values()) <= set(TAXONOMY) - {"other"}
    assert TASK_CATEGORY["object_removal"] == "local_remove" and TASK_CATEGORY["background_replacement"] == "background_change"


def test_an_unreadable_answer_drops_only_its_child(tmp_path):
    def relighting_breaks(prompt: str):
        return "no json" if "The edit task: relighting" in prompt else answer(prompt)

    scene = {**SCENE, "tasks": ["color_texture_change", "relighting"]}
    with openai_server(default=ok_from_prompt(relighting_breaks)) as server:
        children = write([scene], vlm(server, tmp_path))
        assert len(server.requests) == 3  # two, and the re-ask of the broken one
    kept, dropped = sorted(children, key=lambda c: c["task_type"])
    assert kept["status"] == "ok" and kept["task_type"] == "color_texture_change"
    assert dropped["status"] == "dropped" and dropped["task_type"] == "relighting" and dropped["kind"] == "prompt"
    assert dropped["reason"].startswith("prompt_unparseable: invalid_json") and dropped["edit_prompt"] is None
    assert dropped["vlm_usage"]["requests"] == 2


def test_a_failed_request_makes_the_scene_one_error_row_and_its_retry_reads_paid_answers_from_the_cache(tmp_path):
    with openai_server(default=http_error(500)) as server:  # one server: its URL is part of the cache key
        (failed,) = write([SCENE], vlm(server, tmp_path, max_retries=0))
        assert failed["sample_id"] == "scene0" and failed["kind"] == "scene" and failed["status"] == "error"
        assert failed["reason"].startswith("vlm_http_500") and failed["reason"].endswith("request)")
        assert failed["vlm_usage"]["requests"] == 3

        server.set_default(ok_from_prompt(answer))  # retry_errors=true reruns the scene by its id
        retried = write([SCENE], vlm(server, tmp_path, max_retries=0))
        assert len(server.requests) == 6 and all(c["status"] == "ok" for c in retried)

        server.set_default(http_error(500))  # asked once more: every answer was paid for already
        again = write([SCENE], vlm(server, tmp_path, max_retries=0))
        assert len(server.requests) == 6
    assert [c["sample_id"] for c in again] == [c["sample_id"] for c in retried] and all(c["status"] == "ok" for c in again)
    assert all(c["vlm_usage"]["cache_hits"] == 1 and c["vlm_usage"]["requests"] == 0 for c in again)


def test_a_scene_without_tasks_is_dropped_without_a_request(tmp_path):
    with openai_server(default=ok({"source_prompt": "a", "edit_prompt": "b", "instruction": "c"})) as server:
        (row,) = write([{**SCENE, "tasks": []}], vlm(server, tmp_path))
        assert server.requests == []
    assert row["status"] == "dropped" and row["reason"].startswith("no_tasks")
