"""Kiwi-Edit's three curation prompts (seed 004, App. B, prompts 1-3; used in §3.1, Stages 2 and 4)
against our v2 templates: every rule, input, image position, output key and scale the published
prompt states is mapped to the phrase or schema field that carries it (reviewed against the paper
once; see tests/prompts/requirements.py), the schemas take the paper's answers and its scale, and
the maps are shown not to be vacuous."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError, create_model

from curation.backends.vlm import parse_reply
from curation.prompts.judges import EditAreaBoxes, ForegroundBoxes, GroundedForeground, GroundedObjects, ReferenceRating
from curation.prompts.templates import load_template

from tests.fixtures.grammars import grammar_accepts
from tests.prompts.requirements import Requirement, missing_requirements, order_of, patch_template

P1, P2, P3 = "004 App. B, Prompt 1", "004 App. B, Prompt 2", "004 App. B, Prompt 3"
EDIT = "Add a straw hat to the man."
HINT = "coordinates normalised to 0-1000 over the image's width and height"
SLOTS = {
    "ground_edit_area": {"instruction": EDIT, "box_hint": HINT, "feedback": None},
    "ground_foreground": {"box_hint": HINT, "feedback": None},
    "reference_score": {"instruction": EDIT, "feedback": None},
}

# ---- Prompt 1: editing-area grounding ----------------------------------------------------------

EDIT_AREA: list[Requirement] = [
    Requirement("input: the image edit prompt", P1, text=f"Edit prompt: {EDIT}"),
    Requirement("input: the source image", P1, text="Image 1 is the source image."),
    Requirement("input: the edited image", P1, text="Image 2 is the edited image"),
    Requirement("the edited image is the source after the edit prompt", P1,
                text="made it from image 1 by following the edit prompt"),
    Requirement("the box is found from the edit prompt and both images", P1, text="using the edit prompt together with both images"),
    Requirement("task: the bounding box of the edited area", P1, text="box the area the edit changed"),
    Requirement("the boxes are in the edited image", P1, text="those boxes in image 2, the edited image"),
    Requirement("several boxes may be given (the format's '...'), each with a label", P1,
                text="one entry per edited object, each with its box and a short label"),
    Requirement("a box is [x1, y1, x2, y2]", P1, text="Write every box as [x1, y1, x2, y2]"),
    Requirement("output: JSON in the published format", P1, text="Reply with JSON only"),
    Requirement("output key image_2: the list of boxes in the edited image", P1,
                text='{"image_2": [{"bbox": [x1, y1, x2, y2], "label": "object1"}, ...]}', field="image_2"),
    Requirement("output: each entry's bbox", P1, field="image_2.bbox"),
    Requirement("output: each entry's label", P1, field="image_2.label"),
]

# ---- Prompt 2: foreground grounding ------------------------------------------------------------

FOREGROUND: list[Requirement] = [
    Requirement("input: a first and a second image", P2, text="image 1 comes first and image 2 second"),
    Requirement("task: the foreground object or person", P2, text="find the foreground object or person that appears in both images"),
    Requirement("the same object or person between the two images", P2, text="(the same one in each)"),
    Requirement("a bounding box in each of the two images", P2,
                text="give its bounding box in image 1 and its bounding box in image 2"),
    Requirement("several objects may be given (the format's '...')", P2, text="If several such foreground"),
    Requirement("a box is [x1, y1, x2, y2]", P2, text="Write every box as [x1, y1, x2, y2]"),
    Requirement("each list's boxes are in its own image", P2, text="""A box in the "image_1" list is in image 1's coordinates"""),
    Requirement("output: JSON in the published format", P2, text="Reply with JSON only"),
    Requirement("output keys image_1 then image_2, lists of bbox and label", P2,
                text='{"image_1": [{"bbox": [x1, y1, x2, y2], "label": "object1"}, ...], '
                     '"image_2": [{"bbox": [x1, y1, x2, y2], "label": "object1"}, ...]}'),
    Requirement("output key image_1: boxes in the first image", P2, field="image_1"),
    Requirement("output: image_1 entries' bbox", P2, field="image_1.bbox"),
    Requirement("output: image_1 entries' label", P2, field="image_1.label"),
    Requirement("output key image_2: boxes in the second image", P2, field="image_2"),
    Requirement("output: image_2 entries' bbox", P2, field="image_2.bbox"),
    Requirement("output: image_2 entries' label", P2, field="image_2.label"),
]

# ---- Prompt 3: VLM reference image score -------------------------------------------------------

REFERENCE: list[Requirement] = [
    Requirement("role: an expert image-editing evaluator", P3, text="You are an expert at evaluating image edits."),
    Requirement("input: an edit instruction, of the add or replace kind", P3, text="edit instruction that adds or replaces"),
    Requirement("input: the instruction text itself", P3, text=f"Edit instruction: {EDIT}"),
    Requirement("input 1: the input image", P3, text="1. the input image, before the edit;"),
    Requirement("input 2: the edited image", P3, text="2. the edited image, the input after the instruction was carried out;"),
    Requirement("input 3: a reference image representing the edited region", P3,
                text="3. a reference image that is meant to show the edited region by itself."),
    Requirement("task: whether the reference image is qualified", P3, text="Decide whether the reference image is qualified"),
    Requirement("criterion 1: instruction-follow consistency", P3, text="Criterion 1, instruction-follow consistency"),
    Requirement("1: the reference represents the instruction's result", P3,
                text="The reference must faithfully depict what the edit instruction produced"),
    Requirement("1: ... as the edited image shows it", P3, text="as it looks in the edited image"),
    Requirement("1: object identity consistent", P3, text="The object's identity"),
    Requirement("1: attributes (color, shape, material, style) consistent", P3, text="attributes (color, shape, material, style)"),
    Requirement("1: edit type consistent", P3, text="and the type of edit must all match"),
    Requirement("1: no contradictions with the edited result", P3, text="Nothing in the reference may contradict the edited result."),
    Requirement("criterion 2: image quality and focus", P3, text="Criterion 2, image quality and focus"),
    Requirement("2: clear, realistic and artifact-free", P3, text="The reference is clear, realistic and free of artifacts."),
    Requirement("2: coherent structure", P3, text="Its structure is coherent"),
    Requirement("2: plausible lighting and texture", P3, text="its lighting and texture are plausible"),
    Requirement("2: the main subject is clear", P3, text="Its main subject stands out clearly"),
    Requirement("2: ... not overwhelmed by distracting elements", P3, text="distracting elements do not overwhelm it"),
    Requirement("scoring: one overall score", P3, text="one overall score"),
    Requirement("scale: an integer from 1 to 10", P3, text="an integer from 1 to 10", field="score"),
    Requirement("output: JSON only", P3, text="Reply with JSON only"),
    Requirement('output: {"score": 1-10 integer}', P3, text='{"score": <integer from 1 to 10>}'),
]

MAPS = {"ground_edit_area": EDIT_AREA, "ground_foreground": FOREGROUND, "reference_score": REFERENCE}
SCHEMAS = {"ground_edit_area": EditAreaBoxes, "ground_foreground": ForegroundBoxes, "reference_score": ReferenceRating}
PROMPT_NUMBER = {"ground_edit_area": 1, "ground_foreground": 2, "reference_score": 3}


def _rendered(name: str) -> str:
    return load_template(name).render(**SLOTS[name])


# ---- every published requirement is carried ---------------------------------------------------


@pytest.mark.parametrize("name", list(MAPS))
def test_the_default_is_v2_and_carries_every_published_requirement(name):
    template = load_template(name)
    assert template.file == f"{name}.v2.j2" and template.schema is SCHEMAS[name]
    assert missing_requirements(name, SLOTS[name], MAPS[name]) == []


@pytest.mark.parametrize("name", list(MAPS))
def test_each_map_cites_its_own_prompt(name):
    assert {r.section for r in MAPS[name]} == {f"004 App. B, Prompt {PROMPT_NUMBER[name]}"}


@pytest.mark.parametrize("name", list(MAPS))
def test_v1_stays_loadable_with_its_own_schema(name):
    v1 = load_template(f"{name}.v1")
    assert v1.file == f"{name}.v1.j2" and v1.hash != load_template(name).hash
    assert v1.schema is not SCHEMAS[name]


# ---- inputs and their order ---------------------------------------------------------------------


def test_edit_area_introduces_source_then_edited_and_ends_with_the_edit_prompt():
    text = _rendered("ground_edit_area")
    positions = order_of(text, ["Image 1 is the source image", "Image 2 is the edited image", '{"image_2"', f"Edit prompt: {EDIT}"])
    assert -1 not in positions and positions == sorted(positions)  # the paper puts the edit prompt last


def test_foreground_takes_two_images_in_order_and_no_instruction():
    """Kiwi-Edit's prompt 2 has no edit-prompt input; the stage passes one, the template ignores it."""
    template = load_template("ground_foreground")
    text = template.render(**SLOTS["ground_foreground"])
    positions = order_of(text, ["image 1 comes first", "image 2 second", '{"image_1": [', '], "image_2": ['])
    assert -1 not in positions and positions == sorted(positions)
    assert template.render(**SLOTS["ground_foreground"], instruction=EDIT) == text


def test_reference_score_introduces_input_edited_reference_in_that_order():
    text = _rendered("reference_score")
    positions = order_of(text, ["1. the input image", "2. the edited image", "3. a reference image", "Edit instruction:",
                                "Criterion 1", "Criterion 2", '{"score"'])
    assert -1 not in positions and positions == sorted(positions)


@pytest.mark.parametrize("name", ["ground_edit_area", "ground_foreground"])
def test_the_coordinate_convention_is_stated_in_the_prompt(name):
    assert f"[x1, y1, x2, y2], the top-left corner followed by the bottom-right corner, in\n{HINT}." in _rendered(name)


# ---- output keys: the format shown is the schema's --------------------------------------------------


def _format_line(text: str, key: str) -> dict:
    return json.loads(next(line for line in text.splitlines() if line.startswith(key)).replace(", ...]", "]").replace(
        "[x1, y1, x2, y2]", "[10, 20, 300, 400]").replace("<integer from 1 to 10>", "7"))


@pytest.mark.parametrize("name, start, keys", [
    ("ground_edit_area", '{"image_2"', ["image_2"]),
    ("ground_foreground", '{"image_1"', ["image_1", "image_2"]),
    ("reference_score", '{"score"', ["score"]),
])
def test_the_answer_format_shown_has_the_papers_keys_and_parses(name, start, keys):
    example = _format_line(_rendered(name), start)
    assert list(example) == keys == list(SCHEMAS[name].model_fields)
    parsed, error = parse_reply(SCHEMAS[name], json.dumps(example))
    assert error is None and isinstance(parsed, SCHEMAS[name])
    for boxes in (example[k] for k in keys if k.startswith("image_")):
        assert [list(b) for b in boxes] == [["bbox", "label"]]


def test_grounding_answers_list_boxes_per_image():
    edit_area = EditAreaBoxes.model_validate({"image_2": [{"bbox": [1, 2, 30, 40], "label": "hat"},
                                                          {"bbox": [5, 6, 70, 80], "label": "scarf"}]})
    assert [(b.image, b.label, b.coords) for b in edit_area.boxes()] == [("edited", "hat", [1, 2, 30, 40]),
                                                                         ("edited", "scarf", [5, 6, 70, 80])]
    foreground = ForegroundBoxes.model_validate({"image_1": [{"bbox": [1, 2, 30, 40], "label": "dancer"}],
                                                 "image_2": [{"bbox": [3, 4, 50, 60], "label": "dancer"}]})
    assert [(b.image, b.coords) for b in foreground.boxes()] == [("source", [1, 2, 30, 40]), ("edited", [3, 4, 50, 60])]
    assert EditAreaBoxes.model_validate({"image_2": []}).boxes() == []


def test_v1_answers_list_their_boxes_the_same_way():
    objects = GroundedObjects.model_validate({"objects": [{"label": "hat", "bbox_2d": [1, 2, 30, 40]}]})
    assert [tuple(b) for b in objects.boxes()] == [("edited", "hat", [1, 2, 30, 40])]
    foreground = GroundedForeground.model_validate({"objects": [{"label": "dancer", "bbox_2d": [1, 2, 3, 4], "image": "source"}]})
    assert [b.image for b in foreground.boxes()] == ["source"]


@pytest.mark.parametrize("schema, answer", [
    (EditAreaBoxes, {"objects": [{"label": "hat", "bbox_2d": [1, 2, 3, 4]}]}),  # v1's shape
    (EditAreaBoxes, {"image_2": [{"bbox_2d": [1, 2, 3, 4], "label": "hat"}]}),  # Qwen's own key, not the paper's
    (EditAreaBoxes, {"image_2": [{"bbox": [1, 2, 3], "label": "hat"}]}),
    (EditAreaBoxes, {"image_2": [{"bbox": [1, 2, 3, 4], "label": " "}]}),
    (EditAreaBoxes, {"image_1": [], "image_2": []}),  # prompt 1 boxes the edited image only
    (ForegroundBoxes, {"image_2": [{"bbox": [1, 2, 3, 4], "label": "dancer"}]}),  # image_1 missing
    (ForegroundBoxes, {"image_1": [{"bbox": [1, 2, 3, 4]}], "image_2": []}),  # no label
])
def test_grounding_schemas_reject_other_shapes(schema, answer):
    with pytest.raises(ValidationError):
        schema.model_validate(answer)


# ---- scale: an integer 1-10 ---------------------------------------------------------------------


@pytest.mark.parametrize("score", [0, 11, 7.5, -1, "high"])
def test_the_reference_score_rejects_what_is_not_an_integer_1_to_10(score):
    with pytest.raises(ValidationError):
        ReferenceRating.model_validate({"score": score})


@pytest.mark.parametrize("score", [1, 7, 10, 7.0])
def test_the_reference_score_takes_integers_1_to_10(score):
    parsed, error = parse_reply(ReferenceRating, json.dumps({"score": score}))  # 7.0 is the integer 7
    assert error is None and parsed.score == score and isinstance(parsed.score, int)


def test_the_reference_score_schema_declares_the_scale_and_nothing_else():
    schema = ReferenceRating.model_json_schema()
    score = schema["properties"]["score"]
    assert (score["type"], score["minimum"], score["maximum"]) == ("integer", 1, 10)
    assert schema["required"] == ["score"] and schema["additionalProperties"] is False
    with pytest.raises(ValidationError):
        ReferenceRating.model_validate({"reasoning": "fine", "score": 8})


@pytest.mark.parametrize("schema", [EditAreaBoxes, ForegroundBoxes, ReferenceRating], ids=lambda s: s.__name__)
def test_json_schema_uses_only_keywords_every_backendgrammar_accepts(schema):
    text = json.dumps(schema.model_json_schema())
    for keyword in ("minLength", "maxLength", "exclusiveMinimum", "exclusiveMaximum", "pattern"):
        assert f'"{keyword}"' not in text


# ---- the check is not vacuous ------------------------------------------------------------------


@pytest.mark.parametrize("name, req", [(name, r) for name, reqs in MAPS.items() for r in reqs if r.text],
                         ids=lambda v: v if isinstance(v, str) else v.rule[:40])
def test_removing_a_mapped_line_fails_the_check(monkeypatch, name, req):
    source = load_template(name).text
    phrase = req.text.replace(EDIT, "{{")  # the instruction's value is carried by its slot's line
    kept = [line for line in source.splitlines() if phrase.lower() not in line.lower()]
    assert len(kept) < len(source.splitlines()), f"{req.rule}: no single template line holds {phrase!r}"
    patch_template(monkeypatch, name, "\n".join(kept))
    missing = missing_requirements(name, SLOTS[name], MAPS[name])
    assert any(req.rule in m for m in missing)


@pytest.mark.parametrize("name", ["ground_edit_area", "ground_foreground"])
def test_v1s_objects_schema_lacks_every_mapped_key(monkeypatch, name):
    patch_template(monkeypatch, name, load_template(name).text, load_template(f"{name}.v1").schema)
    missing = missing_requirements(name, SLOTS[name], MAPS[name])
    assert len(missing) == sum(1 for r in MAPS[name] if r.field)


@pytest.mark.parametrize("key", ["image_2", "bbox", "label"])
def test_a_box_schema_missing_one_key_fails_the_check(monkeypatch, key):
    box = create_model("Box", **{k: (list[float] if k == "bbox" else str, ...) for k in ("bbox", "label") if k != key})
    answer = create_model("Answer", **({} if key == "image_2" else {"image_2": (list[box], ...)}))
    patch_template(monkeypatch, "ground_edit_area", load_template("ground_edit_area").text, answer)
    missing = missing_requirements("ground_edit_area", SLOTS["ground_edit_area"], EDIT_AREA)
    assert missing and all(key in m for m in missing)


# ---- local constrained decoding (xgrammar) ------------------------------------------------------




@pytest.mark.parametrize("schema, answer, accepted", [
    (EditAreaBoxes, {"image_2": [{"bbox": [120, 40, 260, 130], "label": "straw hat"}]}, True),
    (EditAreaBoxes, {"image_2": [{"bbox": [120, 40, 260], "label": "straw hat"}]}, False),
    (ForegroundBoxes, {"image_1": [{"bbox": [300, 100, 520, 900], "label": "dancer"}],
                       "image_2": [{"bbox": [310, 95, 530, 905], "label": "dancer"}]}, True),
    (ForegroundBoxes, {"image_2": [{"bbox": [310, 95, 530, 905], "label": "dancer"}]}, False),
    (ReferenceRating, {"score": 7}, True),
    (ReferenceRating, {"score": 7.5}, False),
    (ReferenceRating, {"score": 0}, False),
    (ReferenceRating, {"score": 11}, False),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_xgrammar_decodes_the_papers_answers_and_only_them(grammars, schema, answer, accepted):
    # json.dumps' default separators: the local backend decodes without free whitespace (any_whitespace=False).
    assert grammar_accepts(grammars.get(schema), json.dumps(answer)) is accepted
