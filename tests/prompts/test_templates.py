"""Prompt templates: rendering, strict slots, versioning by content hash, and their schemas."""

import jinja2
import pytest
from pydantic import BaseModel, ValidationError

from curation.prompts.templates import TEMPLATES, PromptTemplate, load_template
from curation.prompts.transition import TransitionAnnotation, Turn

VALID = {
    "frame1_caption": {"scene": "a kitchen", "char1": "a man in a red apron", "obj1": "a white cup on the table"},
    "frame2_caption": {"scene": "a kitchen", "char1": "a man in a red apron"},
    "character_change": {"char1": "raises his right hand"},
    "object_change": {"obj1": "disappears"},
    "global_change": "",
    "camera_change": "pan left",
    "other_change": "",
    "summary_change": "Make the man raise his right hand and remove the cup.",
}


def test_every_template_loads_and_names_a_schema_or_none():
    for name, (file, schema) in TEMPLATES.items():
        template = load_template(name)
        assert template.file == file and template.schema is schema
        assert len(template.hash) == 16 and template.version.endswith(template.hash)
        assert schema is None or issubclass(schema, BaseModel)


def test_transition_annotation_renders_and_names_its_schema():
    template = load_template("transition_annotation")
    assert "summary_change" in template.render(caption=None, feedback=None)
    assert template.schema is TransitionAnnotation


def test_caption_and_feedback_slots_change_the_prompt_and_missing_slots_fail():
    template = load_template("transition_annotation")
    plain = template.render(caption=None, feedback=None)
    with_caption = template.render(caption="A chef cooks pasta.", feedback=None)
    with_feedback = template.render(caption=None, feedback="schema_mismatch: summary_change missing")
    assert "A chef cooks pasta." in with_caption and "A chef cooks pasta." not in plain
    assert "summary_change missing" in with_feedback and "could not be used" not in plain
    with pytest.raises(jinja2.UndefinedError):
        template.render(caption=None)  # `feedback` forgotten


def test_schema_accepts_vincie_shape_and_finds_changed_entities():
    annotation = TransitionAnnotation.model_validate(VALID)
    assert annotation.changed_entities() == [
        ("char1", "a man in a red apron", "a man in a red apron"),
        ("obj1", "a white cup on the table", None),
    ]


@pytest.mark.parametrize(
    "patch",
    [
        {"frame1_caption": {"char1": "no scene entry"}},
        {"frame2_caption": {"scene": "x", "person": "not a charN/objN key"}},
        {"object_change": {"cup": "moved"}},
        {"summary_change": ""},
        {"extra_key": "not in the schema"},
    ],
)
def test_schema_rejects_malformed_annotations(patch):
    with pytest.raises(ValidationError):
        TransitionAnnotation.model_validate({**VALID, **patch})


def test_turn_round_trips_its_annotation():
    annotation = TransitionAnnotation.model_validate(VALID)
    turn = Turn(index=0, instruction=annotation.summary_change, annotation=annotation.model_dump_json())
    assert turn.parsed() == annotation
    assert Turn(index=1, error="schema_mismatch: x").parsed() is None


def test_the_hash_follows_the_prompt_text_not_its_comments():
    """Editing a template's documentation must not throw a paid response cache away; editing its text must."""
    original = load_template("edit_judge")
    recommented = PromptTemplate(original.name, original.file, "{# a new note\n   on two lines #}" +
                                 original.text.replace("{#", "{# edited:", 1), original.schema)
    reworded = PromptTemplate(original.name, original.file, original.text + "Answer briefly.\n", original.schema)
    slots = {"instruction": "make it red", "category": None, "is_video": False, "feedback": None}
    assert "{#" in original.text and recommented.text != original.text
    assert recommented.hash == original.hash and recommented.render(**slots) == \
        original.render(**slots)
    assert reworded.hash != original.hash
