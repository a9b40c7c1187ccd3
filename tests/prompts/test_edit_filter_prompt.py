"""ImVideoEdit's data filter (seed 000, §3 "Data Filtering" and App. A) against our `edit_filter`
template: each criterion the paper names, the 0-10 scale its acceptance threshold of 6 is read on,
and what the prompt must show (the instruction, the description of the edited result), mapped to
the phrase or schema field that carries it (tests/prompts/requirements.py); the format shown is
the schema's, and the map is not vacuous."""

from __future__ import annotations

import json

import pytest

from curation.backends.vlm import parse_reply
from curation.prompts.judges import EditFilterJudgement, filter_subscores
from curation.prompts.templates import DEFAULT_VERSIONS, load_template

from tests.prompts.requirements import Requirement, missing_requirements, order_of

S3 = "000 §3 Data Filtering"
A = "000 App. A"
OURS = "000 §3; ours (issue 22)"
SLOTS = {"instruction": "Turn the red car blue.", "edit_prompt": "A street with a blue car parked by the curb.",
         "category": "color_texture", "is_video": False, "feedback": None}

EDIT_FILTER: list[Requirement] = [
    Requirement("criterion: faithfulness to the instruction", S3, text='"faithfulness"', field="faithfulness"),
    Requirement("criterion: visual quality", S3, text='"visual_quality"', field="visual_quality"),
    Requirement("criterion: consistency of the regions the edit does not touch", S3, text='"preservation"', field="preservation"),
    Requirement("scores on a scale where 6 is the acceptance line", A, text="each a number from 0 to 10"),
    Requirement("the instruction is shown", OURS, text="Editing instruction: Turn the red car blue."),
    Requirement("the edited prompt (the described result) is shown", OURS,
                text="What the edited image should show: A street with a blue car parked by the curb."),
    Requirement("images: original first, then edited", OURS, text="first the original image, then the edited image"),
    Requirement("output: JSON only, reasoning first", OURS, text='{"reasoning": "...", "faithfulness"', field="reasoning"),
]


def test_registered_as_v1_with_its_schema():
    assert DEFAULT_VERSIONS["edit_filter"] == "edit_filter.v1"
    assert load_template("edit_filter").schema is EditFilterJudgement


def test_every_requirement_is_carried():
    assert missing_requirements("edit_filter", SLOTS, EDIT_FILTER) == []


def test_without_an_edited_prompt_its_line_is_left_out_and_the_images_are_introduced_in_order():
    text = load_template("edit_filter").render(**{**SLOTS, "edit_prompt": None})
    assert "What the edited image should show" not in text
    positions = order_of(text, ["Two images follow", "first the original image", "then the edited image", "Editing instruction"])
    assert positions == sorted(positions) and -1 not in positions


def test_the_format_shown_is_the_schemas():
    text = load_template("edit_filter").render(**SLOTS)
    shown = text[text.index('{"reasoning"'):].splitlines()[0]
    example = shown.replace("<0-10>", "7")
    parsed, error = parse_reply(EditFilterJudgement, example)
    assert error is None and parsed.faithfulness == 7
    assert parse_reply(EditFilterJudgement, json.dumps({"reasoning": "x", "faithfulness": 11, "visual_quality": 5,
                                                        "preservation": 5}))[0] is None


def test_min_is_the_default_combination_and_mean_the_other():
    judgement = EditFilterJudgement(reasoning="x", faithfulness=9, visual_quality=6, preservation=3)
    assert filter_subscores(judgement, "min")["edit_score"] == 3
    assert filter_subscores(judgement, "mean")["edit_score"] == pytest.approx(6.0)


def test_removing_a_mapped_line_fails_the_check(monkeypatch):
    cut = [r for r in EDIT_FILTER if r.text == '"preservation"']
    loaded = load_template("edit_filter")
    original = loaded.render

    def render(**slots):
        return original(**slots).replace('"preservation"', '"kept"')

    monkeypatch.setattr(type(loaded), "render", lambda self, **slots: render(**slots))
    assert missing_requirements("edit_filter", SLOTS, cut) != []
