"""InstructX's three MLLM steps for video add/remove pairs (seed 002, App. A.2) against our
templates subject_choice, removal_check and erasure_instruction: each step A.2 describes, and each
requirement issue 21 adds to make the step usable by the next stage (marked "ours"), is mapped to
the phrase or schema field that carries it (tests/prompts/requirements.py); the schemas take the
answers the prompts show and refuse others; and the maps are shown not to be vacuous."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ValidationError

from curation.backends.vlm import parse_reply
from curation.prompts.erasure import MAX_SUBJECTS, ErasureInstruction, RemovalCheck, SubjectChoice
from curation.prompts.templates import DEFAULT_VERSIONS, load_template

from tests.prompts.requirements import Requirement, missing_requirements, order_of, patch_template

A2 = "002 App. A.2"
OURS = "002 App. A.2; ours (issue 21)"
SUBJECT = "red kite"
SLOTS = {
    "subject_choice": {"num_frames": 4, "max_subjects": 3, "feedback": None},
    "removal_check": {"subject": SUBJECT, "num_pairs": 4, "feedback": None},
    "erasure_instruction/remove": {"direction": "remove", "subject": SUBJECT, "num_frames": 4, "feedback": None},
    "erasure_instruction/add": {"direction": "add", "subject": SUBJECT, "num_frames": 4, "feedback": None},
}

SUBJECT_CHOICE: list[Requirement] = [
    Requirement("input: the video, as frames of one clip", A2, text="frames of one short video clip"),
    Requirement("task: identify a target subject category", A2, text="pick the category of one subject to take out"),
    Requirement("the subject is then detected (Grounding DINO) and erased", A2, text="open-vocabulary object detector"),
    Requirement("removable without breaking the scene", OURS, text="still makes sense"),
    Requirement("... nothing else depends on it", OURS, text="removing it must not break the scene"),
    Requirement("not the whole background", OURS, text="not the background itself"),
    Requirement("not something that fills the frame", OURS, text="not something that fills most of the frame"),
    Requirement("visible through most of the clip", OURS, text="visible in most of the frames"),
    Requirement("several candidates, best first", OURS, text="the best candidate first", field="subjects"),
    Requirement("each candidate's name", OURS, text='"name": its category as a short noun phrase', field="subjects.name"),
    Requirement("each candidate's grounding phrase for an open-vocabulary detector", OURS,
                text='"phrase": a short visual description that an open-vocabulary detector can use', field="subjects.phrase"),
    Requirement("none removable: an empty list", OURS, text="give an empty list"),
    Requirement("output: JSON only, in the format shown", OURS, text='{"subjects": [{"name": "...", "phrase": "..."}]}'),
]

REMOVAL_CHECK: list[Requirement] = [
    Requirement("the checked clips come from a video eraser", A2, text="video object-removal tool"),
    Requirement("input: original and erased frames, matched", A2, text="the first picture is a frame of the original clip"),
    Requirement("... the erased frame at the same moment second", A2, text="and the second is the same frame of the"),
    Requirement("pairs are in time order", OURS, text="pairs of frames, in time order"),
    Requirement("image positions stated", OURS, text="pictures 1 and 2 are the first pair"),
    Requirement("filter: inpainting artifacts", A2, text="Look for inpainting artifacts"),
    Requirement("artifact: blur or smears", OURS, text="blur or smears"),
    Requirement("artifact: ghosting", OURS, text="ghosting"),
    Requirement("artifact: flicker between frames", OURS, text="flicker"),
    Requirement("artifact: leftover parts", OURS, text="leftover parts of the object"),
    Requirement("artifact: the removed object's shadow", OURS, text="its shadow or reflection"),
    Requirement("question: is the subject gone", OURS, text='"subject_removed": is the', field="subject_removed"),
    Requirement("question: are the erased frames clean", OURS, text='"artifact_free": do the erased frames look like untouched video',
                field="artifact_free"),
    Requirement("scale: integers 1-5 (ours)", OURS, text="each with an integer from 1 to 5"),
    Requirement("scale anchors: subject", OURS, text="5 = gone from every erased frame"),
    Requirement("scale anchors: artifacts", OURS, text="5 = no visible artifact"),
    Requirement("reasoning before the scores", OURS, text="First write your reasoning", field="reasoning"),
    Requirement("output: JSON only, in the format shown", OURS,
                text='{"reasoning": "...", "subject_removed": <integer from 1 to 5>, "artifact_free": <integer from 1 to 5>}'),
]

INSTRUCTION_COMMON: list[Requirement] = [
    Requirement("the answer is an editing instruction", A2, text="You write instructions for a video editing model"),
    Requirement("input: the source video's frames first", A2, text="attached pictures are frames of the source video"),
    Requirement("input: then the target video's frames at the same moments", A2, text="pictures are frames of the target video"),
    Requirement("the target is the source after the edit", A2, text="is what the source video should look like"),
    Requirement("one imperative instruction", OURS, text="Write one imperative instruction", field="instruction"),
    Requirement("no mention of the pipeline", OURS, text="Do not mention frames, images, the source or target video"),
    Requirement("output: JSON only, in the format shown", OURS, text='{"instruction": "..."}'),
]
REMOVE: list[Requirement] = [*INSTRUCTION_COMMON,
    Requirement("original -> erased: a remove instruction", A2,
                text='Write the "remove" instruction that turns the source video into the target video'),
    Requirement("the object is in the source and gone from the target", A2, text="is in the source video and is gone from the target"),
    Requirement("the removed object is named unambiguously", OURS, text="say what it is and where it is"),
]
ADD: list[Requirement] = [*INSTRUCTION_COMMON,
    Requirement("roles swapped, erased -> original: an add instruction", A2,
                text='Write the "add" instruction that turns the source video into the target video'),
    Requirement("the object is missing from the source and in the target", A2, text="is not in the source video and appears in the target"),
    Requirement("the add instruction describes the object's appearance", OURS, text="the object as it looks in the target video"),
    Requirement("... its colour, size and material", OURS, text="its colour, size, material"),
    Requirement("... where it goes", OURS, text="Say where in the scene it goes"),
    Requirement("... how it moves over the clip", OURS, text="moves or what it does over the clip"),
]
MAPS = {"subject_choice": SUBJECT_CHOICE, "removal_check": REMOVAL_CHECK, "erasure_instruction/remove": REMOVE,
        "erasure_instruction/add": ADD}
SCHEMAS = {"subject_choice": SubjectChoice, "removal_check": RemovalCheck, "erasure_instruction": ErasureInstruction}


def template_of(key: str) -> str:
    return key.split("/")[0]


def rendered(key: str) -> str:
    return load_template(template_of(key)).render(**SLOTS[key])


# ---- registered, and every requirement carried -------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_each_template_is_registered_as_v1_with_its_schema(name):
    template = load_template(name)
    assert DEFAULT_VERSIONS[name] == f"{name}.v1" and template.file == f"{name}.v1.j2" and template.schema is SCHEMAS[name]


@pytest.mark.parametrize("key", list(MAPS))
def test_every_requirement_is_carried(key):
    assert missing_requirements(template_of(key), SLOTS[key], MAPS[key]) == []


@pytest.mark.parametrize("key", list(MAPS))
def test_every_map_cites_instructx_appendix_a2(key):
    assert {r.section for r in MAPS[key]} <= {A2, OURS} and any(r.section == A2 for r in MAPS[key])


# ---- slots and image order ---------------------------------------------------------------------


def test_the_removal_check_names_the_subject_and_introduces_original_before_erased():
    text = rendered("removal_check")
    assert f"erase the {SUBJECT}" in text and f'"subject_removed": is the {SUBJECT} gone' in text
    positions = order_of(text, ["8 attached pictures are 4 pairs", "frame of the original clip", "same frame of the",
                                '"subject_removed"', '"artifact_free"', '{"reasoning"'])
    assert -1 not in positions and positions == sorted(positions)


def test_the_direction_picks_one_task_and_the_source_frames_come_first():
    remove, add = rendered("erasure_instruction/remove"), rendered("erasure_instruction/add")
    assert '"add"' not in remove and '"remove"' not in add
    assert f"the {SUBJECT} is in the source video" in remove and f"the {SUBJECT} is not in the source video" in add
    for text in (remove, add):
        positions = order_of(text, ["The first 4 attached pictures are frames of the source video",
                                    "next 4 pictures are frames of the target video", '{"instruction"'])
        assert -1 not in positions and positions == sorted(positions)


# ---- the answers shown parse, and the schemas refuse other shapes ------------------------------------


def _format_line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


@pytest.mark.parametrize("key, start, filled", [
    ("subject_choice", '{"subjects"', lambda s: s.replace("...", "kite")),
    ("removal_check", '{"reasoning"', lambda s: s.replace("<integer from 1 to 5>", "4").replace("...", "gone")),
    ("erasure_instruction/add", '{"instruction"', lambda s: s.replace("...", "Add a red kite.")),
])
def test_the_format_shown_is_the_schemas(key, start, filled):
    schema = SCHEMAS[template_of(key)]
    example = json.loads(filled(_format_line(rendered(key), start)))
    assert list(example) == list(schema.model_fields)
    parsed, error = parse_reply(schema, json.dumps(example))
    assert error is None and isinstance(parsed, schema)


def test_the_removal_score_is_the_weaker_of_the_two():
    answer = RemovalCheck(reasoning="gone, slight smear", subject_removed=5, artifact_free=3)
    assert answer.overall == 3.0 and RemovalCheck(reasoning="x", subject_removed=2, artifact_free=5).overall == 2.0


@pytest.mark.parametrize("schema, answer", [
    (SubjectChoice, {"subjects": [{"name": " ", "phrase": "a kite"}]}),
    (SubjectChoice, {"subjects": [{"name": "kite"}]}),
    (SubjectChoice, {"subjects": [{"name": "kite", "phrase": "red kite"}] * (MAX_SUBJECTS + 1)}),
    (RemovalCheck, {"reasoning": "ok", "subject_removed": 6, "artifact_free": 5}),
    (RemovalCheck, {"reasoning": "ok", "subject_removed": 0, "artifact_free": 5}),
    (RemovalCheck, {"reasoning": "ok", "subject_removed": 4.5, "artifact_free": 5}),
    (RemovalCheck, {"reasoning": "", "subject_removed": 4, "artifact_free": 5}),
    (ErasureInstruction, {"instruction": "  "}),
    (ErasureInstruction, {"instruction": "Add a kite.", "object": "kite"}),
])
def test_the_schemas_refuse_other_answers(schema, answer):
    with pytest.raises(ValidationError):
        schema.model_validate(answer)


# ---- the check is not vacuous ------------------------------------------------------------------


@pytest.mark.parametrize("key, req", [(key, r) for key, reqs in MAPS.items() for r in reqs if r.text],
                         ids=lambda v: v if isinstance(v, str) else v.rule[:40])
def test_removing_a_mapped_line_fails_the_check(monkeypatch, key, req):
    name = template_of(key)
    source = load_template(name).text
    kept = [line for line in source.splitlines() if req.text.lower() not in line.lower()]
    assert len(kept) < len(source.splitlines()), f"{req.rule}: no single template line holds {req.text!r}"
    patch_template(monkeypatch, name, "\n".join(kept), load_template(name).schema)
    assert any(req.rule in m for m in missing_requirements(name, SLOTS[key], MAPS[key]))


@pytest.mark.parametrize("key", list(MAPS))
def test_a_schema_without_the_mapped_fields_fails_the_check(monkeypatch, key):
    name = template_of(key)
    patch_template(monkeypatch, name, load_template(name).text, BaseModel)
    assert len(missing_requirements(name, SLOTS[key], MAPS[key])) == sum(1 for r in MAPS[key] if r.field)
