"""Reviewed maps from a paper's published prompt requirements to the template text or schema field
that carries each one, and the check that fails when a mapped line or field is gone.

Why: a prompt is rewritten in our own words, so nothing mechanical says it still asks for what the
paper asked. Each template's test holds a list of `Requirement`s (one per rule, output key, scale,
input and image position the published prompt states), each citing its seed section; a reviewer
reads the list against the paper once, and from then on any edit that drops a carried line fails.
"""

from __future__ import annotations

import sys
import typing
from dataclasses import dataclass

from pydantic import BaseModel

from curation.prompts.templates import PromptTemplate, load_template

SEEDS = {
    "000": "ImVideoEdit", "001": "RVEDiT", "002": "InstructX", "003": "VINCIE", "004": "Kiwi-Edit",
}


@dataclass(frozen=True)
class Requirement:
    """One thing the published prompt requires.

    rule: the requirement, in our words; section: the seed and section it comes from, e.g.
    "004 App. B, Prompt 3" (the seed's number prefix: 000 ImVideoEdit ... 004 Kiwi-Edit, as SEEDS lists);
    text: a phrase the rendered prompt must contain (case-insensitive), or None;
    field: a dotted path into the output schema that must exist (e.g. "image_2.bbox"), or None.
    At least one of text and field is set."""

    rule: str
    section: str
    text: str | None = None
    field: str | None = None

    def __post_init__(self) -> None:
        assert self.text or self.field, f"{self.rule}: map it to a prompt phrase or a schema field"
        assert self.section[:3] in SEEDS, f"{self.rule}: cite the seed, e.g. '004 App. B, Prompt 1'"


def schema_has_field(schema: type[BaseModel], path: str) -> bool:
    """Whether `a.b.c` names nested fields of `schema` (through lists, dicts and optionals)."""
    current: object = schema
    for part in path.split("."):
        model = _model_in(current)
        if model is None or part not in model.model_fields:
            return False
        current = model.model_fields[part].annotation
    return True


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def missing_requirements(template: str, slots: dict, requirements: list[Requirement]) -> list[str]:
    """The requirements whose phrase is not in the prompt rendered with `slots`, or whose field is
    not in the template's schema; empty when the template carries them all."""
    loaded = load_template(template)
    text = loaded.render(**slots).lower()
    missing = []
    for req in requirements:
        if req.text is not None and req.text.lower() not in text:
            missing.append(f"[{req.section}] {req.rule}: phrase {req.text!r} not in {loaded.file}")
        if req.field is not None and (loaded.schema is None or not schema_has_field(loaded.schema, req.field)):
            missing.append(f"[{req.section}] {req.rule}: field {req.field!r} not in the schema of {loaded.file}")
    return missing


def order_of(text: str, phrases: list[str]) -> list[int]:
    """Positions of `phrases` in `text` (case-insensitive); -1 for one that is absent. A test
    asserts they rise to check the order in which a prompt introduces its images."""
    lowered = text.lower()
    return [lowered.find(p.lower()) for p in phrases]


_KEEP_SCHEMA = object()


def patch_template(monkeypatch, name: str, text: str, schema: typing.Any = _KEEP_SCHEMA) -> None:
    """Make `missing_requirements` see template `name` with `text` (and `schema`, when given; None:
    no schema) instead of its file: how a test shows a requirement map is not vacuous."""
    original = load_template(name)
    patched = PromptTemplate(original.name, original.file, text, original.schema if schema is _KEEP_SCHEMA else schema)
    monkeypatch.setattr(sys.modules[__name__], "load_template", lambda _: patched)
