"""Judging prompts: templates and their slots, output schemas (parsing and JSON schema for every
structured-output path, xgrammar included) and the scoring maths."""

from __future__ import annotations

import json
import math

import jinja2
import pytest
from pydantic import ValidationError

from curation.backends.vlm import parse_reply
from curation.prompts.judges import (
    EDIT_SCORE,
    SUB_SCORES,
    EditJudgement,
    EditScorePQ,
    EditScoreSC,
    GroundedForeground,
    GroundedObjects,
    ReferenceScore,
    aggregate,
    editscore_overall,
    editscore_subscores,
    judgement_overall,
    judgement_subscores,
    passes,
)
from curation.prompts.templates import DEFAULT_VERSIONS, load_template, template_names

from tests.fixtures.grammars import grammar_accepts

# Every judging template with a full set of slots; the values are distinctive so a test can see
# each one in the rendered prompt.
SLOTS: dict[str, dict[str, object]] = {
    "edit_score_sc": {"instruction": "Replace the red kettle with a copper teapot.", "feedback": None},
    "edit_score_pq": {"feedback": None},
    "edit_judge": {"instruction": "Replace the red kettle with a copper teapot.", "category": "local_replace",
                   "is_video": False, "feedback": None},
    # Kiwi-Edit's prompts: v1 here; v2, the default, in test_kiwi_prompts.py.
    "ground_edit_area.v1": {"instruction": "Add a straw hat to the man.",
                            "box_hint": "absolute pixel coordinates of the image as given", "feedback": None},
    "ground_foreground.v1": {"instruction": "Put the dancer on a moonlit beach.",
                             "box_hint": "coordinates normalised to 0-1000", "feedback": None},
    "reference_score.v1": {"instruction": "Add a straw hat to the man.", "feedback": None},
    "reference_edit": {"mode": "object", "label": "straw hat", "background": "pure white"},
}
SCHEMAS = {
    "edit_score_sc": EditScoreSC,
    "edit_score_pq": EditScorePQ,
    "edit_judge": EditJudgement,
    "ground_edit_area.v1": GroundedObjects,
    "ground_foreground.v1": GroundedForeground,
    "reference_score.v1": ReferenceScore,
    "reference_edit": None,
}
# One valid answer per schema, as a model would write it.
VALID = {
    EditScoreSC: {"reasoning": "The kettle became a teapot; the counter is unchanged.", "score": [22, 24.5]},
    EditScorePQ: {"reasoning": "Natural lighting; slight blur on the spout.", "score": [21, 18]},
    EditJudgement: {"reasoning": "Done cleanly.", "edit_success": 9, "over_editing": 8.5, "naturalness": 8,
                    "artifacts": 7},
    GroundedObjects: {"objects": [{"label": "straw hat", "bbox_2d": [120, 40, 260, 130]}]},
    GroundedForeground: {"objects": [
        {"label": "dancer", "bbox_2d": [300, 100, 520, 900], "image": "source"},
        {"label": "dancer", "bbox_2d": [310, 95, 530, 905], "image": "edited"},
    ]},
    ReferenceScore: {"reasoning": "Same hat, clean white background.", "score": 9},
}


# --------------------------------------------------------------------------------------------
# templates
# --------------------------------------------------------------------------------------------


def test_every_judging_template_is_registered_with_its_schema():
    assert set(SLOTS) <= set(template_names())
    for name, schema in SCHEMAS.items():
        template = load_template(name)
        assert template.schema is schema
        assert template.file == f"{DEFAULT_VERSIONS.get(name, name)}.j2" and len(template.hash) == 16


@pytest.mark.parametrize("name", sorted(SLOTS))
def test_template_renders_every_slot(name):
    text = load_template(name).render(**SLOTS[name])
    for slot, value in SLOTS[name].items():
        if isinstance(value, str) and slot != "mode":
            assert value in text, f"{name}: slot {slot} not in the prompt"
    assert "{{" not in text and "{%" not in text and "{#" not in text


@pytest.mark.parametrize("name, slot", [(name, slot) for name in sorted(SLOTS) for slot in SLOTS[name]])
def test_template_fails_on_a_missing_slot(name, slot):
    slots = {k: v for k, v in SLOTS[name].items() if k != slot}
    with pytest.raises(jinja2.UndefinedError):
        load_template(name).render(**slots)


@pytest.mark.parametrize("name", sorted(n for n in SLOTS if "feedback" in SLOTS[n]))
def test_feedback_is_rendered_only_when_given(name):
    template = load_template(name)
    plain = template.render(**SLOTS[name])
    with_feedback = template.render(**{**SLOTS[name], "feedback": "schema_mismatch: score: List should have at least 2 items"})
    assert "could not be used" not in plain
    assert "List should have at least 2 items" in with_feedback and "could not be used" in with_feedback


def test_json_answer_templates_name_every_key_of_their_schema():
    for name, schema in SCHEMAS.items():
        if schema is None:
            continue
        text = load_template(name).render(**SLOTS[name])
        assert "JSON" in text
        for key in schema.model_fields:
            assert f'"{key}"' in text, f"{name}: key {key} not shown in the answer format"


def test_edit_judge_says_frames_for_videos_and_shows_category_only_when_given():
    template = load_template("edit_judge")
    image = template.render(**SLOTS["edit_judge"])
    video = template.render(**{**SLOTS["edit_judge"], "is_video": True, "category": None})
    assert "video" not in image and "local_replace" in image
    assert "frame of the\noriginal video" in video and "Type of edit" not in video


def test_grounding_boxes_the_edited_image_and_foreground_is_per_image():
    edit_area = load_template("ground_edit_area.v1").render(**SLOTS["ground_edit_area.v1"])
    assert "EDITED image" in edit_area and "bbox_2d" in edit_area
    foreground = load_template("ground_foreground.v1").render(**SLOTS["ground_foreground.v1"])
    assert '"image": "source"' in foreground and '"image": "edited"' in foreground


def test_reference_edit_v1_modes():
    template = load_template("reference_edit.v1")
    obj = template.render(mode="object", label="copper teapot", background="pure white")
    assert obj.startswith("Extract the copper teapot") and "pure white background" in obj
    background = template.render(mode="background", label="dancer", background="pure white")
    assert background.startswith("Remove the dancer") and "white" not in background
    with pytest.raises(jinja2.UndefinedError, match="mode_must_be_object_or_background"):
        template.render(mode="person", label="dancer", background="pure white")


def test_reference_edit_v2_names_the_plain_area_the_editor_is_shown():
    """v2 (the default) goes with the mask-built input: a cutout (object) or a blanked hole (background)."""
    template = load_template("reference_edit")
    assert template.file == "reference_edit.v2.j2"
    obj = template.render(mode="object", label="copper teapot", background="pure white")
    assert obj.startswith("This image shows a copper teapot cut out") and "plain pure white background" in obj
    background = template.render(mode="background", label="dancer", background="gray")
    assert "area painted plain gray is where a dancer was removed" in background
    with pytest.raises(jinja2.UndefinedError, match="mode_must_be_object_or_background"):
        template.render(mode="person", label="dancer", background="pure white")


# --------------------------------------------------------------------------------------------
# schemas
# --------------------------------------------------------------------------------------------


def _keywords(node: object) -> set[str]:
    """Every key used anywhere in a JSON schema."""
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keywords(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keywords(v)}
    return set()


@pytest.mark.parametrize("schema", list(VALID), ids=lambda s: s.__name__)
def test_json_schema_uses_only_keywords_every_backendgrammar_accepts(schema):
    js = schema.model_json_schema()
    keywords = _keywords(js)
    # xgrammar 0.2.8 lets control characters into length-limited strings; exclusive bounds and
    # patterns are not in Gemini's documented subset.
    assert not keywords & {"minLength", "maxLength", "exclusiveMinimum", "exclusiveMaximum", "pattern"}
    assert js["additionalProperties"] is False
    assert list(js["properties"])[0] == ("objects" if "objects" in js["properties"] else "reasoning")


def test_json_schema_carries_the_bounds():
    sc = EditScoreSC.model_json_schema()["properties"]["score"]
    assert (sc["minItems"], sc["maxItems"], sc["items"]["minimum"], sc["items"]["maximum"]) == (2, 2, 0, 25)
    judge = EditJudgement.model_json_schema()["properties"]
    assert all((judge[k]["minimum"], judge[k]["maximum"]) == (0, 10) for k in SUB_SCORES)
    ref = ReferenceScore.model_json_schema()["properties"]["score"]
    assert (ref["minimum"], ref["maximum"]) == (1, 10)
    box = GroundedObjects.model_json_schema()["$defs"]["GroundedBox"]["properties"]["bbox_2d"]
    assert (box["minItems"], box["maxItems"]) == (4, 4)
    image = GroundedForeground.model_json_schema()["$defs"]["ForegroundBox"]["properties"]["image"]
    assert image["enum"] == ["source", "edited"]


@pytest.mark.parametrize("schema", list(VALID), ids=lambda s: s.__name__)
def test_valid_answers_parse(schema):
    parsed, error = parse_reply(schema, json.dumps(VALID[schema]))
    assert error is None and isinstance(parsed, schema)


def test_empty_grounding_is_a_valid_answer_and_foreground_splits_by_image():
    assert GroundedObjects.model_validate({"objects": []}).objects == []
    foreground = GroundedForeground.model_validate(VALID[GroundedForeground])
    assert [b.bbox_2d for b in foreground.in_image("edited")] == [[310, 95, 530, 905]]


@pytest.mark.parametrize(
    "schema, patch",
    [
        (EditScoreSC, {"score": [22]}),
        (EditScoreSC, {"score": [22, 20, 18]}),
        (EditScoreSC, {"score": [26, 20]}),
        (EditScoreSC, {"score": [-1, 20]}),
        (EditScoreSC, {"verdict": "good"}),
        (EditScorePQ, {"score": [25.5, 3]}),
        (EditJudgement, {"edit_success": 11}),
        (EditJudgement, {"artifacts": -0.5}),
        (EditJudgement, {"reasoning": None}),
        (GroundedObjects, {"objects": [{"label": "hat", "bbox_2d": [1, 2, 3]}]}),
        (GroundedObjects, {"objects": [{"label": "  ", "bbox_2d": [120, 40, 260, 130]}]}),
        (GroundedObjects, {"objects": [{"label": "hat", "bbox_2d": [1, 2, 3, 4], "image": "edited"}]}),
        (GroundedObjects, {"objects": [{"label": "hat", "bbox_2d": [1, 2, 3, 4]}] * 9}),
        (GroundedForeground, {"objects": [{"label": "dancer", "bbox_2d": [1, 2, 3, 4], "image": "target"}]}),
        (GroundedForeground, {"objects": [{"label": "dancer", "bbox_2d": [1, 2, 3, 4]}]}),
        (ReferenceScore, {"score": 0}),
        (ReferenceScore, {"score": 10.5}),
    ],
)
def test_invalid_answers_are_rejected(schema, patch):
    with pytest.raises(ValidationError):
        schema.model_validate({**VALID[schema], **patch})


# --------------------------------------------------------------------------------------------
# xgrammar (local constrained decoding)
# --------------------------------------------------------------------------------------------




@pytest.mark.parametrize("schema", list(VALID), ids=lambda s: s.__name__)
def test_xgrammar_compiles_each_schema_and_accepts_a_valid_answer(grammars, schema):
    compiled = grammars.get(schema)
    # Compact separators, as the local backend decodes (any_whitespace=False).
    assert grammar_accepts(compiled, json.dumps(VALID[schema]))


@pytest.mark.parametrize(
    "schema, patch",
    [
        (EditScoreSC, {"score": [26, 20]}),
        (EditScoreSC, {"score": [22]}),
        (EditJudgement, {"naturalness": 10.5}),
        (ReferenceScore, {"score": 0}),
        (GroundedObjects, {"objects": [{"label": "hat", "bbox_2d": [1, 2, 3]}]}),
        (GroundedForeground, {"objects": [{"label": "dancer", "bbox_2d": [1, 2, 3, 4], "image": "target"}]}),
    ],
)
def test_xgrammar_enforces_bounds_and_lengths(grammars, schema, patch):
    assert not grammar_accepts(grammars.get(schema), json.dumps({**VALID[schema], **patch}))


# --------------------------------------------------------------------------------------------
# maths
# --------------------------------------------------------------------------------------------


def test_editscore_overall_is_sqrt_of_min_sc_times_min_pq_on_ten():
    # min SC = 20 -> 8.0, min PQ = 15 -> 6.0 on 0-10; sqrt(8 * 6)
    assert editscore_overall([25, 20], [15, 22.5]) == pytest.approx(math.sqrt(48))
    assert editscore_overall([25, 25], [25, 25]) == pytest.approx(10)
    assert editscore_overall([0, 25], [25, 25]) == 0
    assert editscore_overall([8, 10], [6, 9], score_range=10) == pytest.approx(math.sqrt(48))


@pytest.mark.parametrize("sc, pq, score_range", [([], [20], 25), ([20, 26], [20], 25), ([20], [-1], 25), ([5], [5], 0)])
def test_editscore_overall_rejects_bad_input(sc, pq, score_range):
    with pytest.raises(ValueError):
        editscore_overall(sc, pq, score_range)


def test_subscores_use_the_shared_names():
    sc = EditScoreSC.model_validate(VALID[EditScoreSC])
    pq = EditScorePQ.model_validate(VALID[EditScorePQ])
    scores = editscore_subscores(sc, pq)
    assert set(scores) == {*SUB_SCORES, EDIT_SCORE}
    assert scores["edit_success"] == pytest.approx(8.8) and scores["artifacts"] == pytest.approx(7.2)
    assert scores[EDIT_SCORE] == pytest.approx(math.sqrt(8.8 * 7.2))
    judgement = EditJudgement.model_validate(VALID[EditJudgement])
    assert set(judgement_subscores(judgement)) == {*SUB_SCORES, EDIT_SCORE}


def test_judgement_overall_is_the_same_form_on_ten():
    judgement = EditJudgement.model_validate(VALID[EditJudgement])  # min(9, 8.5) = 8.5, min(8, 7) = 7
    assert judgement_overall(judgement) == pytest.approx(math.sqrt(8.5 * 7))
    perfect = EditJudgement(reasoning="", edit_success=10, over_editing=10, naturalness=10, artifacts=10)
    assert judgement_overall(perfect) == 10


def test_aggregate():
    assert aggregate([6, 8, 7], "mean") == pytest.approx(7)
    assert aggregate((v for v in [6, 8, 7]), "min") == 6
    with pytest.raises(ValueError):
        aggregate([], "mean")
    with pytest.raises(ValueError):
        aggregate([1.0], "median")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "score, threshold, inclusive, expected",
    [
        (6, 6, True, True),
        (5.99, 6, True, False),
        (6.0000000000001, 6, True, True),
        (5.9999999999999, 6, True, True),  # float noise around the threshold counts as equal
        (8, 8, False, False),
        (8.01, 8, False, True),
        (8.0000000000001, 8, False, False),
        (7.99, 8, False, False),
        (10, 8, False, True),
        (float("nan"), 6, True, False),
    ],
)
def test_passes_boundaries(score, threshold, inclusive, expected):
    assert passes(score, threshold, inclusive) is expected


def test_passes_on_computed_scores():
    # EditScore 20/25 on every axis is exactly 8 on the 0-10 scale: kept for training (>= 6) but
    # not for references (> 8).
    overall = editscore_overall([20, 24], [20, 25])
    assert passes(overall, 6, inclusive=True) and not passes(overall, 8, inclusive=False)
    # Float arithmetic a hair off the threshold counts as the threshold itself.
    noisy = 0.1 * 3 * 20
    assert noisy != 6 and passes(noisy, 6, inclusive=True) and not passes(noisy, 6, inclusive=False)


@pytest.mark.parametrize("box", [[200, 40, 120, 130], [120, 40, 260, 40], [-5, 40, 260, 130]])
def test_reversed_empty_and_out_of_frame_boxes_reach_the_stage(box):
    """Box geometry is curation.regions.boxes' job (stable drop reasons), not the schema's."""
    answer = GroundedObjects.model_validate({"objects": [{"label": "hat", "bbox_2d": box}]})
    assert answer.objects[0].bbox_2d == box
