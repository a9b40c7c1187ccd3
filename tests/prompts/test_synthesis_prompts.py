"""ImVideoEdit's three LLM steps for generated pairs (seed 000, §3 and App. B) against our templates
scene_proposal, scene_plausibility and synthesis_prompts: each requirement §3 states, and each one
issue 22 adds (marked "ours"), is mapped to the phrase or schema field that carries it
(tests/prompts/requirements.py); the answer formats shown parse; the schemas refuse other answers;
and the maps are shown not to be vacuous."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ValidationError

from curation.backends.vlm import parse_reply
from curation.prompts.synthesis import TASK_TYPES, PlausibilityJudgement, ScenePrompts, SceneProposal
from curation.prompts.templates import DEFAULT_VERSIONS, load_template

from tests.prompts.requirements import Requirement, missing_requirements, patch_template

S3 = "000 §3"
APPB = "000 App. B"
OURS = "000 §3; ours (issue 22)"
SCENE = {"environment": "an old library", "conditions": ["low sun", "a cat asleep"]}
SLOTS = {
    "scene_proposal": {"seeds": ["harbour", "winter"], "num_environments": 20, "num_conditions": 30, "feedback": None},
    "scene_plausibility": {**SCENE, "feedback": None},
    "synthesis_prompts": {**SCENE, "task": "object_removal", "task_description": TASK_TYPES["object_removal"],
                          "variant": 2, "variants": 3, "feedback": None},
}

SCENE_PROPOSAL: list[Requirement] = [
    Requirement("scenes combine a base environment with conditions", S3, text="environment or entity combined with a few conditions"),
    Requirement("conditions are sampled at random from one set", S3, text="drawn at random from a shared list"),
    Requirement("the lists grow from seed words (ours)", OURS, text="Use the seed words as the theme"),
    Requirement("the environments asked for", S3, text="base environments or entities, each a short noun phrase",
                field="environments"),
    Requirement("the conditions asked for", S3, text="conditions, each a short phrase that changes how a scene looks",
                field="conditions"),
    Requirement("conditions combine with most environments", OURS, text="Each condition must fit most of the environments"),
    Requirement("items must be depictable", OURS, text="a single photograph or illustration can show"),
    Requirement("lists varied", OURS, text="no two items that mean nearly the same thing"),
    Requirement("output: JSON only, in the format shown", OURS, text='{"environments": ["..."], "conditions": ["..."]}'),
]

SCENE_PLAUSIBILITY: list[Requirement] = [
    Requirement("random combinations are often implausible", S3, text="with conditions picked at random, so some"),
    Requirement("criterion: physical principles", S3, text='"physics": does it obey physical principles?', field="physics"),
    Requirement("criterion: commonsense", S3, text='"commonsense": does it agree with common sense?', field="commonsense"),
    Requirement("criterion: clear visual depictability", S3, text='"depictable": can one still image show it clearly?',
                field="depictable"),
    Requirement("scale: integers 1-5 (ours)", OURS, text="Rate each criterion with an integer from 1 to 5"),
    Requirement("scale anchors (ours)", OURS, text="5 = no problem at all"),
    Requirement("reasoning before the ratings (ours)", OURS, text="First write your reasoning", field="reasoning"),
    Requirement("output: JSON only, in the format shown", OURS,
                text='{"reasoning": "...", "physics": <integer from 1 to 5>, "commonsense": <integer from 1 to 5>, '
                     '"depictable": <integer from 1 to 5>}'),
]

SYNTHESIS_PROMPTS: list[Requirement] = [
    Requirement("the pair is a source image and its edited version", S3, text="source image made by a text-to-image model"),
    Requirement("one (scene, task) pair per request", S3, text="The edit task: object removal"),
    Requirement("the task's meaning (App. B, our words)", APPB, text=TASK_TYPES["object_removal"]),
    Requirement("a source prompt describing the original scene", S3, text='"source_prompt": a text-to-image prompt for the source',
                field="source_prompt"),
    Requirement("... with every condition of the scene", S3, text="Describe the scene with all its"),
    Requirement("an edited prompt for the transformation", S3, text='"edit_prompt": a complete description of the edited image',
                field="edit_prompt"),
    Requirement("the edited prompt states the post-edit visual state", S3, text="Describe the whole image as it looks after the edit"),
    Requirement("... not only the edit instruction", S3, text="as it looks after the edit, not just the"),
    Requirement("... nor phrased as an instruction", S3, text="not as an instruction"),
    Requirement("unchanged parts repeated so the editor keeps them (ours)", OURS,
                text="repeat every part of the scene that the edit leaves"),
    Requirement("an imperative instruction (ours)", OURS, text='"instruction": one imperative sentence', field="instruction"),
    Requirement("the two images differ only by the task", OURS, text="the two images must differ only"),
    Requirement("the edited object is in the source prompt (ours)", OURS, text="that object must appear in this prompt"),
    Requirement("several edits of one task differ (ours)", OURS, text="This is edit 2 of 3"),
    Requirement("output: JSON only, in the format shown", OURS,
                text='{"source_prompt": "...", "edit_prompt": "...", "instruction": "..."}'),
]
# Phrases that slots fill in, and the template line that renders each.
SLOT_LINES = {
    "The edit task: object removal": "The edit task: {{ task",
    TASK_TYPES["object_removal"]: "which means: {{ task_description }}",
    "This is edit 2 of 3": "This is edit {{ variant }} of {{ variants }}",
}
MAPS = {"scene_proposal": SCENE_PROPOSAL, "scene_plausibility": SCENE_PLAUSIBILITY, "synthesis_prompts": SYNTHESIS_PROMPTS}
SCHEMAS = {"scene_proposal": SceneProposal, "scene_plausibility": PlausibilityJudgement, "synthesis_prompts": ScenePrompts}


def rendered(name: str, **changes: object) -> str:
    return load_template(name).render(**{**SLOTS[name], **changes})


# ---- registered, and every requirement carried -------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_each_template_is_registered_as_v1_with_its_schema(name):
    template = load_template(name)
    assert DEFAULT_VERSIONS[name] == f"{name}.v1" and template.file == f"{name}.v1.j2" and template.schema is SCHEMAS[name]


@pytest.mark.parametrize("name", list(MAPS))
def test_every_requirement_is_carried(name):
    assert missing_requirements(name, SLOTS[name], MAPS[name]) == []


@pytest.mark.parametrize("name", list(MAPS))
def test_every_map_cites_imvideoedit(name):
    assert {r.section for r in MAPS[name]} <= {S3, APPB, OURS} and any(r.section in (S3, APPB) for r in MAPS[name])


# ---- slots -------------------------------------------------------------------------------------


def test_the_scene_and_every_task_description_reach_the_prompt():
    for task, description in TASK_TYPES.items():
        text = rendered("synthesis_prompts", task=task, task_description=description)
        assert f"The edit task: {task.replace('_', ' ')}, which means: {description}." in text
        assert "Environment: an old library" in text and "- low sun\n- a cat asleep" in text
    assert "This is edit" not in rendered("synthesis_prompts", variant=1, variants=1)  # a task asked once: no numbering
    text = rendered("scene_plausibility")
    assert "Environment: an old library" in text and "- low sun\n- a cat asleep" in text
    text = rendered("scene_proposal")
    assert "Seed words: harbour, winter" in text and "exactly 20 base environments" in text and "exactly 30 conditions" in text


def test_feedback_is_sent_back_only_on_a_re_ask():
    for name in SLOTS:
        assert "could not be used" not in rendered(name)
        assert "could not be used: schema_mismatch: x" in rendered(name, feedback="schema_mismatch: x")


# ---- the answers shown parse, and the schemas refuse other shapes ------------------------------


def _format_line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


@pytest.mark.parametrize("name, start, filled", [
    ("scene_proposal", '{"environments"', lambda s: s.replace("...", "a pier")),
    ("scene_plausibility", '{"reasoning"', lambda s: s.replace("<integer from 1 to 5>", "4").replace("...", "fine")),
    ("synthesis_prompts", '{"source_prompt"', lambda s: s.replace("...", "A cat on a desk.")),
])
def test_the_format_shown_is_the_schemas(name, start, filled):
    schema = SCHEMAS[name]
    example = json.loads(filled(_format_line(rendered(name), start)))
    assert list(example) == list(schema.model_fields)
    parsed, error = parse_reply(schema, json.dumps(example))
    assert error is None and isinstance(parsed, schema)


def test_a_judgement_files_its_ratings_under_the_scores_keys():
    judgement = PlausibilityJudgement(reasoning="ok", physics=5, commonsense=3, depictable=4)
    assert judgement.scores() == {"plausibility_physics": 5.0, "plausibility_commonsense": 3.0, "plausibility_depictable": 4.0}


@pytest.mark.parametrize("schema, answer", [
    (SceneProposal, {"environments": ["a pier", "A pier"], "conditions": ["fog"]}),
    (SceneProposal, {"environments": ["a pier"], "conditions": [" "]}),
    (SceneProposal, {"environments": ["a pier"]}),
    (PlausibilityJudgement, {"reasoning": "ok", "physics": 6, "commonsense": 5, "depictable": 5}),
    (PlausibilityJudgement, {"reasoning": "ok", "physics": 0, "commonsense": 5, "depictable": 5}),
    (PlausibilityJudgement, {"reasoning": "ok", "physics": 4.5, "commonsense": 5, "depictable": 5}),
    (PlausibilityJudgement, {"reasoning": " ", "physics": 4, "commonsense": 5, "depictable": 5}),
    (ScenePrompts, {"source_prompt": "a", "edit_prompt": "", "instruction": "c"}),
    (ScenePrompts, {"source_prompt": "a", "edit_prompt": "b"}),
    (ScenePrompts, {"source_prompt": "a", "edit_prompt": "b", "instruction": "c", "task": "x"}),
])
def test_the_schemas_refuse_other_answers(schema, answer):
    with pytest.raises(ValidationError):
        schema.model_validate(answer)


# ---- the check is not vacuous ------------------------------------------------------------------


@pytest.mark.parametrize("name, req", [(name, r) for name, reqs in MAPS.items() for r in reqs if r.text],
                         ids=lambda v: v if isinstance(v, str) else v.rule[:40])
def test_removing_a_mapped_line_fails_the_check(monkeypatch, name, req):
    source = load_template(name).text
    line = SLOT_LINES.get(req.text, req.text)
    kept = [text for text in source.splitlines() if line.lower() not in text.lower()]
    assert len(kept) < len(source.splitlines()), f"{req.rule}: no template line holds {line!r}"
    patch_template(monkeypatch, name, "\n".join(kept), load_template(name).schema)
    assert any(req.rule in m for m in missing_requirements(name, SLOTS[name], MAPS[name]))


@pytest.mark.parametrize("name", list(MAPS))
def test_a_schema_without_the_mapped_fields_fails_the_check(monkeypatch, name):
    patch_template(monkeypatch, name, load_template(name).text, BaseModel)
    assert len(missing_requirements(name, SLOTS[name], MAPS[name])) == sum(1 for r in MAPS[name] if r.field)
