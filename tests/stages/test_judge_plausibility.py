"""The `judge_plausibility` stage against a loopback OpenAI-compatible server: one text-only request
per scene naming its environment and conditions, a scene with a rating below min_score dropped with
the criteria that failed and its ratings kept, an unreadable answer dropped, an API failure retryable."""

from __future__ import annotations

import pyarrow as pa

from curation.core.schema import SampleRow, arrow_schema
from curation.prompts.templates import load_template
from curation.stages.judge_plausibility import JudgePlausibility
from curation.stages.plan_scenes import PlanScenesColumns

from tests.fixtures.vlm_servers import http_error, ok_from_prompt, openai_server, raw_text
from tests.stages.test_annotate import vlm

SCHEMA = arrow_schema(SampleRow, PlanScenesColumns)
PLAUSIBLE = {"reasoning": "Fog over a harbour at dawn is ordinary and easy to photograph.",
             "physics": 5, "commonsense": 5, "depictable": 4}
IMPLAUSIBLE = {"reasoning": "A blizzard and a sunbather on the same beach contradict each other.",
               "physics": 2, "commonsense": 1, "depictable": 4}


def scene(sample_id: str, environment: str, conditions: list[str]) -> dict:
    return dict(sample_id=sample_id, parent_ids=[], kind="scene", source_uri=f"plan:p.yaml#{environment}/0", status="ok",
                stage="plan_scenes", stage_version="1", environment=environment, conditions=conditions, scene_index=0,
                tasks=["relighting"], plan_seed=0)


SCENES = [scene("s0", "a fishing harbour", ["light fog", "at dawn"]),
          scene("s1", "a sandy beach", ["a blizzard", "a sunbather"])]


def text_only(request) -> bool:
    """No picture attached: the request is an LLM call on text alone."""
    content = request.body["messages"][0]["content"]
    return isinstance(content, str) or all(part["type"] == "text" for part in content)


def judge(rows: list[dict], cfg, **fields) -> list[dict]:
    return JudgePlausibility(vlm=cfg, **fields)(pa.Table.from_pylist(rows, schema=SCHEMA)).to_pylist()


def by_scene(prompt: str) -> dict:
    return IMPLAUSIBLE if "Environment: a sandy beach" in prompt else PLAUSIBLE


def test_an_implausible_scene_is_dropped_with_the_failed_criteria_and_its_scores(tmp_path):
    with openai_server(default=ok_from_prompt(by_scene)) as server:
        kept, dropped = judge(SCENES, vlm(server, tmp_path))
        prompts = sorted(server.prompt_of(r.body) for r in server.requests)
        assert all(text_only(r) for r in server.requests)
    assert len(prompts) == 2
    template = load_template("scene_plausibility")
    assert prompts[0] == template.render(environment="a fishing harbour", conditions=["light fog", "at dawn"], feedback=None)
    assert kept["status"] == "ok" and kept["stage"] == "judge_plausibility" and kept["sample_id"] == "s0"
    assert dict(kept["scores"]) == {"plausibility_physics": 5.0, "plausibility_commonsense": 5.0, "plausibility_depictable": 4.0}
    assert kept["plausibility_reasoning"] == PLAUSIBLE["reasoning"]
    assert dropped["status"] == "dropped" and dropped["reason"] == "implausible: physics, commonsense"
    assert dict(dropped["scores"]) == {"plausibility_physics": 2.0, "plausibility_commonsense": 1.0, "plausibility_depictable": 4.0}
    assert dropped["plausibility_reasoning"] == IMPLAUSIBLE["reasoning"] and dropped["vlm_usage"]["requests"] == 1


def test_min_score_is_the_lowest_rating_kept(tmp_path):
    stage = JudgePlausibility.model_fields["min_score"].default
    edge = {**PLAUSIBLE, "depictable": stage}
    below = {**PLAUSIBLE, "depictable": stage - 1}
    with openai_server(default=ok_from_prompt(lambda p: below if "Environment: a sandy beach" in p else edge)) as server:
        kept, dropped = judge(SCENES, vlm(server, tmp_path))
    assert kept["status"] == "ok" and (dropped["status"], dropped["reason"]) == ("dropped", "implausible: depictable")
    assert [t.score for t in JudgePlausibility(vlm=vlm(server, tmp_path)).thresholds()] == [
        "plausibility_physics", "plausibility_commonsense", "plausibility_depictable"]


def test_an_unreadable_answer_is_asked_again_then_dropped_and_an_api_failure_is_an_error(tmp_path):
    with openai_server(default=raw_text('{"reasoning": "fine", "physics": 9}')) as server:
        (row,) = judge(SCENES[:1], vlm(server, tmp_path))
        assert len(server.requests) == 2  # the re-ask carries the validation error
        assert "could not be used" in server.prompt_of(server.requests[1].body)
    assert row["status"] == "dropped" and row["reason"].startswith("plausibility_unparseable: ")
    assert row["vlm_usage"]["requests"] == 2
    with openai_server(default=http_error(500)) as server:
        (row,) = judge(SCENES[1:], vlm(server, tmp_path, max_retries=0))
    assert row["status"] == "error" and row["reason"].startswith("vlm_http_500") and row["sample_id"] == "s1"


def test_scores_from_earlier_stages_are_kept(tmp_path):
    earlier = {**SCENES[0], "scores": {"aesthetic": 6.5}}
    schema = SCHEMA.append(pa.field("scores", pa.map_(pa.string(), pa.float64())))
    with openai_server(default=ok_from_prompt(by_scene)) as server:
        (row,) = JudgePlausibility(vlm=vlm(server, tmp_path))(pa.Table.from_pylist([earlier], schema=schema)).to_pylist()
    assert dict(row["scores"])["aesthetic"] == 6.5 and dict(row["scores"])["plausibility_physics"] == 5.0
