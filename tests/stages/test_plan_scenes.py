"""The `plan_scenes` source stage: a plan spec expands into scene rows deterministically (a rerun
lists the same scenes, a larger plan only adds scenes), a bad spec fails with one line naming its
key, and `propose:` asks a loopback LLM once, saves its answer before expanding, and never asks again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from curation.backends.vlm import VLMConfig
from curation.core import layout, storage
from curation.core.schema import make_sample_id
from curation.prompts.synthesis import TASK_TYPES
from curation.stages import plan_scenes
from curation.stages.plan_scenes import PLAN_FILE, PlanScenes

from tests.fixtures.vlm_servers import ok, openai_server, raw_text
from tests.stages.test_annotate import vlm

PLAN = {
    "environments": ["a fishing harbour", "an old library", "a vegetable garden"],
    "conditions": ["light fog", "a cat asleep", "autumn leaves", "low sun"],
    "conditions_per_scene": 2,
    "scenes_per_environment": 1,
    "tasks": {"relighting": 1, "color_texture_change": 1},
    "seed": 7,
}
PROPOSAL = {"environments": ["a ferry deck", "a lighthouse", "a fish market"],
            "conditions": ["sleet", "gulls overhead", "at dusk", "lanterns lit"]}
OFFLINE = VLMConfig(backend="openai", model="test-model")  # never asked: these plans give their lists


def write_spec(tmp_path: Path, spec: dict, name: str = "plan.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def listed(stage: PlanScenes, spec: str, stage_dir: Path) -> list[dict]:
    """What a run lists: the stage bound to its run, its fragments persisted, all rows read back."""
    stage.bind_run(str(stage_dir.parent), str(stage_dir))
    parts = stage.input_fragments(spec, str(stage_dir))
    return [row for part in parts for row in storage.read_table(part).to_pylist()]


# ---- expansion -------------------------------------------------------------------------------


def test_three_environments_with_one_scene_each_make_three_scenes_listing_both_tasks(tmp_path):
    spec = write_spec(tmp_path, PLAN)
    rows = PlanScenes(vlm=OFFLINE).list_sources(spec, str(tmp_path / "listing")).to_pylist()
    assert len(rows) == 3 and sorted(r["environment"] for r in rows) == sorted(PLAN["environments"])
    for row in rows:
        assert row["kind"] == "scene" and row["status"] == "ok" and row["parent_ids"] == []
        assert row["tasks"] == ["color_texture_change", "relighting"]  # TASK_TYPES order, not the spec's
        assert len(row["conditions"]) == 2 and set(row["conditions"]) <= set(PLAN["conditions"])
        assert row["source_uri"] == f"plan:plan.yaml#{row['environment']}/0" and row["scene_index"] == 0
        assert row["plan_seed"] == 7
        assert row["sample_id"] == make_sample_id("scene", row["source_uri"], row["environment"], tuple(row["conditions"]), 0)


def test_a_task_count_repeats_the_task_and_a_range_draws_the_number_of_conditions(tmp_path):
    spec = write_spec(tmp_path, {**PLAN, "tasks": {"object_removal": 2, "relighting": 0, "style_transfer": 1},
                                 "conditions_per_scene": [1, 3], "scenes_per_environment": 20})
    rows = PlanScenes(vlm=OFFLINE).list_sources(spec, str(tmp_path / "listing")).to_pylist()
    assert len(rows) == 60 and {tuple(r["tasks"]) for r in rows} == {("style_transfer", "object_removal", "object_removal")}
    sizes = [len(r["conditions"]) for r in rows]
    assert set(sizes) == {1, 2, 3}  # 60 draws from three sizes: each one comes up
    assert all(len(set(r["conditions"])) == len(r["conditions"]) for r in rows)  # drawn without repeats


def test_a_rerun_lists_the_same_scenes_and_a_larger_plan_only_adds_scenes(tmp_path):
    stage_dir = tmp_path / "run" / "01-plan_scenes"
    spec = write_spec(tmp_path, PLAN)
    first = listed(PlanScenes(vlm=OFFLINE), spec, stage_dir)
    parts_before = layout.manifest_parts(layout.input_dir(str(stage_dir)))
    again = listed(PlanScenes(vlm=OFFLINE), spec, stage_dir)
    assert again == first and layout.manifest_parts(layout.input_dir(str(stage_dir))) == parts_before

    spec = write_spec(tmp_path, {**PLAN, "scenes_per_environment": 3})
    grown = listed(PlanScenes(vlm=OFFLINE), spec, stage_dir)
    by_id = {r["sample_id"]: r for r in grown}
    assert len(grown) == 9 and len(by_id) == 9
    assert all(by_id[r["sample_id"]] == r for r in first)  # old scenes: same ids, conditions and tasks
    assert sorted(r["scene_index"] for r in grown if r["sample_id"] not in {f["sample_id"] for f in first}) == [1, 1, 1, 2, 2, 2]
    parts_after = layout.manifest_parts(layout.input_dir(str(stage_dir)))
    assert parts_after[:len(parts_before)] == parts_before and len(parts_after) > len(parts_before)  # appended
    fresh = PlanScenes(vlm=OFFLINE).list_sources(spec, str(tmp_path / "elsewhere")).to_pylist()
    assert sorted(r["sample_id"] for r in fresh) == sorted(by_id)  # from scratch: the same nine


def test_the_seed_changes_the_draw(tmp_path):
    a = PlanScenes(vlm=OFFLINE).list_sources(write_spec(tmp_path, {**PLAN, "scenes_per_environment": 4}), str(tmp_path / "l"))
    b = PlanScenes(vlm=OFFLINE).list_sources(write_spec(tmp_path, {**PLAN, "scenes_per_environment": 4, "seed": 8}),
                                             str(tmp_path / "l"))
    assert a.column("conditions").to_pylist() != b.column("conditions").to_pylist()


def test_a_json_lines_spec_lists_what_the_yaml_one_does(tmp_path):
    yaml_rows = PlanScenes(vlm=OFFLINE).list_sources(write_spec(tmp_path, PLAN), str(tmp_path / "l")).to_pylist()
    jsonl = tmp_path / "plan.jsonl"
    jsonl.write_text("".join(json.dumps({key: value}) + "\n" for key, value in PLAN.items()))
    json_rows = PlanScenes(vlm=OFFLINE).list_sources(str(jsonl), str(tmp_path / "l")).to_pylist()

    def strip(rows: list[dict]) -> list[dict]:  # the file name is in source_uri, hence in the id
        return sorted(({k: v for k, v in r.items() if k not in ("sample_id", "source_uri")} for r in rows),
                      key=lambda r: r["environment"])

    assert strip(json_rows) == strip(yaml_rows)
    assert all(r["source_uri"].startswith("plan:plan.jsonl#") for r in json_rows)


def test_process_passes_each_scene_on_unchanged(tmp_path):
    table = PlanScenes(vlm=OFFLINE).list_sources(write_spec(tmp_path, PLAN), str(tmp_path / "l"))
    out = PlanScenes(vlm=OFFLINE)(table).to_pylist()
    assert [r["sample_id"] for r in out] == table.column("sample_id").to_pylist()
    assert all(r["stage"] == "plan_scenes" and r["status"] == "ok" and len(r["tasks"]) == 2 for r in out)


# ---- a bad spec ------------------------------------------------------------------------------


@pytest.mark.parametrize("change, match", [
    ({"seed": None}, r"seed: "),
    ({"tasks": {"object_removal": 1, "explode": 1}}, r"tasks: .*unknown task type\(s\) explode"),
    ({"tasks": {"object_removal": 0}}, r"tasks: .*at least one above 0"),
    ({"conditions_per_scene": 5}, r"conditions_per_scene: need 1 <= min <= max <= 4"),
    ({"conditions_per_scene": [3, 2]}, r"conditions_per_scene"),
    ({"scenes_per_environment": 0}, r"scenes_per_environment: "),
    ({"environments": ["a", "a"]}, r"environments: .*distinct"),
    ({"conditions": None}, r"environments and conditions are both needed"),
    ({"propose": {"seeds": ["x"], "environments": 2, "conditions": 4}}, r"either environments and conditions, or propose"),
    ({"scene_per_environment": 2}, r"scene_per_environment: Extra inputs are not permitted"),
])
def test_a_bad_spec_is_one_line_naming_its_key(tmp_path, change, match):
    spec = {k: v for k, v in {**PLAN, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=match) as failure:
        PlanScenes(vlm=OFFLINE).list_sources(write_spec(tmp_path, spec), str(tmp_path / "l"))
    message = str(failure.value)
    assert "\n" not in message and message.startswith("plan_scenes: input=") and "Value error" not in message
    with pytest.raises(ValueError, match=match):  # the pre-flight check: the same line, nothing listed
        PlanScenes(vlm=OFFLINE).check_input(write_spec(tmp_path, spec))


def test_unreadable_or_malformed_specs_say_so(tmp_path):
    stage = PlanScenes(vlm=OFFLINE)
    with pytest.raises(ValueError, match="unreadable"):
        stage.list_sources(str(tmp_path / "missing.yaml"), str(tmp_path / "l"))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        stage.list_sources(str(tmp_path / "list.yaml"), str(tmp_path / "l"))
    (tmp_path / "twice.jsonl").write_text('{"seed": 1}\n{"seed": 2}\n')
    with pytest.raises(ValueError, match="line 2: seed set twice"):
        stage.list_sources(str(tmp_path / "twice.jsonl"), str(tmp_path / "l"))
    with pytest.raises(ValueError, match="give input="):
        stage.list_sources(None, str(tmp_path / "l"))


# ---- propose: ---------------------------------------------------------------------------------


PROPOSE = {**{k: v for k, v in PLAN.items() if k not in ("environments", "conditions")},
           "propose": {"seeds": ["harbour", "winter"], "environments": 3, "conditions": 4}}


def test_propose_asks_once_saves_the_answer_and_a_rerun_reuses_it(tmp_path):
    stage_dir = tmp_path / "run" / "01-plan_scenes"
    spec = write_spec(tmp_path, PROPOSE)
    with openai_server(default=ok(PROPOSAL)) as server:
        rows = listed(PlanScenes(vlm=vlm(server, tmp_path)), spec, stage_dir)
        assert len(server.requests) == 1
        prompt = server.prompt_of(server.requests[0].body)
        saved = yaml.safe_load((stage_dir / "_input" / PLAN_FILE).read_text())
        again = listed(PlanScenes(vlm=vlm(server, tmp_path / "other-cache")), spec, stage_dir)
        assert len(server.requests) == 1  # the saved proposal, not a second request (nor a cached one)
    assert "harbour, winter" in prompt and "exactly 3 base environments" in prompt and "exactly 4 conditions" in prompt
    assert saved["seeds"] == ["harbour", "winter"] and saved["environments"] == PROPOSAL["environments"]
    assert saved["conditions"] == PROPOSAL["conditions"] and saved["vlm_usage"]["requests"] == 1
    assert sorted(r["environment"] for r in rows) == sorted(PROPOSAL["environments"])
    assert all(set(r["conditions"]) <= set(PROPOSAL["conditions"]) for r in rows)
    assert again == rows
    extra = PlanScenes(vlm=OFFLINE).run_extra(str(stage_dir))
    assert extra["vlm"]["usage"]["requests"] == 1


def test_the_proposal_is_saved_before_any_scene_is_expanded(tmp_path, monkeypatch):
    stage_dir = tmp_path / "run" / "01-plan_scenes"

    def fail(*args):
        raise RuntimeError("expansion crashed")

    monkeypatch.setattr(plan_scenes, "expand", fail)
    with openai_server(default=ok(PROPOSAL)) as server, pytest.raises(RuntimeError, match="expansion crashed"):
        listed(PlanScenes(vlm=vlm(server, tmp_path)), write_spec(tmp_path, PROPOSE), stage_dir)
    assert yaml.safe_load((stage_dir / "_input" / PLAN_FILE).read_text())["environments"] == PROPOSAL["environments"]


def test_a_short_proposal_is_asked_again_and_a_second_failure_stops_the_listing(tmp_path):
    short = {"environments": PROPOSAL["environments"][:2], "conditions": PROPOSAL["conditions"]}
    with openai_server(default=ok(short)) as server:
        server.enqueue(ok(short), ok(PROPOSAL))
        rows = listed(PlanScenes(vlm=vlm(server, tmp_path)), write_spec(tmp_path, PROPOSE), tmp_path / "a" / "01-plan_scenes")
        assert len(server.requests) == 2
        assert "2 environments where 3 were asked for" in server.prompt_of(server.requests[1].body)
    assert len(rows) == 3
    with openai_server(default=raw_text("not json")) as server:
        with pytest.raises(ValueError, match="proposal was unusable after 2 tries: invalid_json"):
            listed(PlanScenes(vlm=vlm(server, tmp_path)), write_spec(tmp_path, PROPOSE), tmp_path / "b" / "01-plan_scenes")
        assert len(server.requests) == 2
    assert not (tmp_path / "b" / "01-plan_scenes" / "_input" / PLAN_FILE).exists()


def test_a_saved_proposal_from_other_seeds_or_too_short_is_refused(tmp_path):
    stage_dir = tmp_path / "run" / "01-plan_scenes"
    with openai_server(default=ok(PROPOSAL)) as server:
        listed(PlanScenes(vlm=vlm(server, tmp_path)), write_spec(tmp_path, PROPOSE), stage_dir)
        other = {**PROPOSE, "propose": {**PROPOSE["propose"], "seeds": ["desert"]}}
        with pytest.raises(ValueError, match=r"proposed from seeds \['harbour', 'winter'\]"):
            listed(PlanScenes(vlm=vlm(server, tmp_path)), write_spec(tmp_path, other), stage_dir)
        more = {**PROPOSE, "propose": {**PROPOSE["propose"], "environments": 5}}
        with pytest.raises(ValueError, match=r"holds 3 environments, propose\.environments asks for 5"):
            listed(PlanScenes(vlm=vlm(server, tmp_path)), write_spec(tmp_path, more), stage_dir)
        assert len(server.requests) == 1


def test_outside_a_run_propose_asks_nothing(tmp_path):
    with openai_server(default=ok(PROPOSAL)) as server:
        assert PlanScenes(vlm=vlm(server, tmp_path)).check_input(write_spec(tmp_path, PROPOSE)).propose.environments == 3
        with pytest.raises(ValueError, match="outside a run"):
            PlanScenes(vlm=vlm(server, tmp_path)).list_sources(write_spec(tmp_path, PROPOSE), str(tmp_path / "scratch"))
        assert server.requests == []


def test_every_task_type_can_be_planned(tmp_path):
    spec = write_spec(tmp_path, {**PLAN, "tasks": dict.fromkeys(TASK_TYPES, 1)})
    (row, *_) = PlanScenes(vlm=OFFLINE).list_sources(spec, str(tmp_path / "l")).to_pylist()
    assert row["tasks"] == list(TASK_TYPES)
