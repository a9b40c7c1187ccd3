"""VINCIE's visual-transition annotation prompt (seed 003, App. C.2) against our
`transition_annotation` template: every rule, input, image position and output key the published
prompt states is mapped to the phrase or schema field that carries it (reviewed against the paper
once; see tests/prompts/requirements.py), and the map is shown not to be vacuous."""

from __future__ import annotations

import json

import pytest
from pydantic import create_model

from curation.prompts.templates import PromptTemplate, load_template
from curation.prompts.transition import TransitionAnnotation

from tests.prompts import requirements
from tests.prompts.requirements import Requirement, missing_requirements, order_of

TEMPLATE = "transition_annotation"  # the default version (v2)
C2 = "003 App. C.2"
CAPTION = "A chef in a white apron plates pasta in a small kitchen."
SLOTS = {"caption": CAPTION, "feedback": None}
# C.2's JSON answer, key by key, in its order.
C2_KEYS = ["frame1_caption", "frame2_caption", "character_change", "object_change", "global_change", "camera_change",
           "other_change", "summary_change"]

VINCIE_C2: list[Requirement] = [
    # ---- role, inputs and their order ----
    Requirement("the model acts as an editing assistant changing the first image into the second", C2,
                text="image-editing assistant whose job is to change a source picture into a target picture"),
    Requirement("input: two frames of one video clip", C2, text="two frames of one video clip are attached"),
    Requirement("input order: the first image is the source", C2, text="the source picture, attached first"),
    Requirement("input order: the second image is the target", C2, text="the target picture, attached second"),
    Requirement("input: the caption of the raw video clip, as context", C2, text="caption of the whole video clip"),
    Requirement("input: the caption text itself is in the prompt", C2, text=CAPTION),
    Requirement("task: say how to achieve the edit in detailed but brief instructions", C2,
                text="as instructions that are detailed yet brief"),
    Requirement("chain of thought: describe, then compare, then summarise (also 003 §3.1)", C2, text="reason step by step"),
    # ---- guidelines 1-5 ----
    Requirement("1: describe both frames in detail and coherently", C2, text="describe each one thoroughly and consistently"),
    Requirement("1: include environment, main subjects, appearances, main features", C2,
                text="the environment and setting, the main subjects, what they look like, their distinguishing features"),
    Requirement("2: describe main characters and objects and their appearance", C2,
                text="describe the main characters and objects and their appearance"),
    Requirement("2: charN / objN id format", C2, text="(char1, char2, ...)"),
    Requirement("2: charN / objN id format for objects", C2, text="(obj1, obj2, ...)"),
    Requirement("2: no real names of entities", C2, text="never give the real name of a person"),
    Requirement("3: highlight semantic and visual differences in detail", C2,
                text="every difference between the two pictures, in meaning"),
    Requirement("4: only factual differences from observable content", C2,
                text="only differences that can be observed in the pictures, stated as facts"),
    Requirement("4: no speculative words such as likely / possibly / appear to", C2,
                text='no guessing or hedging words such as "likely", "possibly"'),
    Requirement("4: 'appear to' named among the speculative words", C2, text='"appears to"'),
    Requirement("5: no elliptical references such as frame 1 / frame 2", C2, text='do not write "frame 1", "frame 2"'),
    Requirement("5: no 'the first image' / 'the second image' / 'the same'", C2,
                text='"the first image", "the second image",'),
    # ---- what an instruction covers (change types 1-7) ----
    Requirement("change 1: main character (appearance, disappearance, position, action, expression, pose, orientation)", C2,
                text="main characters -> character_change: appearing or leaving, position, action, facial expression, pose"),
    Requirement("change 2: object (appearance, disappearance, position, count, relationship, layout)", C2,
                text="objects -> object_change: appearing or leaving, position, how many there are, how they relate to one another"),
    Requirement("change 3: attributes go into the changed entity's entry (C.2: 'character and attribute change')", C2,
                text="attributes -> the changed entity's entry in character_change or object_change"),
    Requirement("change 3: attribute (colour, texture, material, shape, size, depth, dynamics)", C2,
                text="colour, texture, material, shape, size, depth, motion"),
    Requirement("change 4: interaction between characters, objects and the environment", C2,
                text="interactions between characters, objects and their surroundings"),
    Requirement("change 5: global (background, atmosphere, environment, style, weather, season, lighting)", C2,
                text="global -> global_change: background, atmosphere, surroundings, style, weather, season, lighting"),
    Requirement("change 6: camera (orbiting, dolly-in/out, pan-left/right, tilt-up/down)", C2,
                text="orbit, dolly-in, dolly-out, pan-left, pan-right, tilt-up, tilt-down"),
    Requirement("change 7: others", C2, text="anything else -> other_change"),
    Requirement("summary: a comprehensive but brief user editing instruction", C2,
                text="one complete but short editing instruction, worded as a user would type it into an image editor"),
    # ---- output: one-row JSON with C.2's keys ----
    Requirement("output: JSON in one row, without formatting", C2, text="one json object on a single line, with no code fence"),
    Requirement("output: frame1_caption describes the first (source) frame", C2,
                text="frame1_caption describes the source picture", field="frame1_caption"),
    Requirement("output: frame2_caption describes the second (target) frame", C2,
                text="frame2_caption describes the target", field="frame2_caption"),
    Requirement("output: captions hold scene, charN and objN entries", C2, text="the scene plus one entry per character and object id"),
    Requirement("output: character_change per charN", C2, text='"character_change": {"char1"', field="character_change"),
    Requirement("output: object_change per objN", C2, text='"object_change": {"obj1"', field="object_change"),
    Requirement("output: global_change", C2, text='"global_change"', field="global_change"),
    Requirement("output: camera_change", C2, text='"camera_change"', field="camera_change"),
    Requirement("output: other_change", C2, text='"other_change"', field="other_change"),
    Requirement("output: summary_change", C2, text='"summary_change"', field="summary_change"),
]


def _rendered() -> str:
    return load_template(TEMPLATE).render(**SLOTS)


def test_the_default_template_carries_every_c2_requirement():
    assert load_template(TEMPLATE).file == "transition_annotation.v2.j2"
    assert missing_requirements(TEMPLATE, SLOTS, VINCIE_C2) == []


def test_every_c2_output_key_is_in_the_rendered_prompt_and_the_schema_in_c2_order():
    text = _rendered()
    assert list(TransitionAnnotation.model_fields) == C2_KEYS
    example = json.loads(next(line for line in text.splitlines() if line.startswith('{"frame1_caption"')))
    assert list(example) == C2_KEYS
    TransitionAnnotation.model_validate(example)  # the format shown is one the schema accepts
    assert {r.field for r in VINCIE_C2 if r.field} == set(C2_KEYS)


def test_images_are_introduced_source_first_and_captions_follow_that_order():
    text = _rendered()
    positions = order_of(text, ["the source picture, attached first", "the target picture, attached second"])
    assert -1 not in positions and positions == sorted(positions)
    positions = order_of(text, ["frame1_caption describes the source picture", "frame2_caption describes the target"])
    assert -1 not in positions and positions == sorted(positions)


def test_the_prompt_names_frames_by_number_only_where_it_forbids_doing_so():
    """v1 told the model to 'turn Frame 1 into Frame 2'; C.2 rule 5 forbids such references in the
    answer, so the prompt itself must not teach them."""
    text = _rendered().lower()
    assert text.count("frame 1") == 1 and text.count("the first image") == 1
    assert "turn frame 1" not in text


def test_caption_is_optional_and_v1_stays_loadable():
    without = load_template(TEMPLATE).render(caption=None, feedback=None)
    assert CAPTION not in without and "caption of the whole video clip" not in without.lower()
    v1 = load_template("transition_annotation.v1")
    assert v1.schema is TransitionAnnotation and v1.hash != load_template(TEMPLATE).hash


# ---- the check is not vacuous ---------------------------------------------------------------


def _with_text(monkeypatch: pytest.MonkeyPatch, text: str, schema=TransitionAnnotation) -> None:
    original = load_template(TEMPLATE)
    patched = PromptTemplate(original.name, original.file, text, schema)
    monkeypatch.setattr(requirements, "load_template", lambda name: patched)


@pytest.mark.parametrize("req", [r for r in VINCIE_C2 if r.text and r.text != CAPTION], ids=lambda r: r.rule[:40])
def test_removing_a_mapped_line_fails_the_check(monkeypatch, req):
    source = load_template(TEMPLATE).text
    kept = [line for line in source.splitlines() if req.text.lower() not in line.lower()]
    assert len(kept) < len(source.splitlines()), f"{req.rule}: no single template line holds {req.text!r}"
    _with_text(monkeypatch, "\n".join(kept))
    missing = missing_requirements(TEMPLATE, SLOTS, VINCIE_C2)
    assert any(req.rule in m for m in missing)


def test_removing_the_caption_slot_fails_the_check(monkeypatch):
    source = load_template(TEMPLATE).text
    _with_text(monkeypatch, source.replace('"{{ caption }}"', ""))
    assert any(CAPTION in m for m in missing_requirements(TEMPLATE, SLOTS, VINCIE_C2))


@pytest.mark.parametrize("key", C2_KEYS)
def test_a_schema_without_a_c2_key_fails_the_check(monkeypatch, key):
    fields = {name: (f.annotation, f) for name, f in TransitionAnnotation.model_fields.items() if name != key}
    _with_text(monkeypatch, load_template(TEMPLATE).text, create_model("WithoutKey", **fields))
    missing = missing_requirements(TEMPLATE, SLOTS, VINCIE_C2)
    assert any(f"field {key!r}" in m for m in missing)
