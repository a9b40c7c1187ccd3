"""Prompt templates and their output schemas, versioned by content hash.

A template is a Jinja2 file `prompts/<name>.v<N>.j2` (package data of `curation.prompts`);
`TEMPLATES` pairs each name with the pydantic model its answer must validate against. The hash of
the template text, without its Jinja comments, goes into the VLM response-cache key and
`_run.json`: editing a prompt never serves stale cached answers, and editing a comment never throws
a paid cache away.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache, cached_property
from importlib.resources import files

import jinja2
from pydantic import BaseModel

from curation.prompts.erasure import ErasureInstruction, RemovalCheck, SubjectChoice
from curation.prompts.judges import (
    EditAreaBoxes,
    EditFilterJudgement,
    EditJudgement,
    EditScorePQ,
    EditScoreSC,
    ForegroundBoxes,
    GroundedForeground,
    GroundedObjects,
    ReferenceRating,
    ReferenceScore,
)
from curation.prompts.synthesis import PlausibilityJudgement, ScenePrompts, SceneProposal
from curation.prompts.transition import ClipCaption, TransitionAnnotation

# "<name>.v<N>" -> (template file inside the `curation.prompts` package, output schema; None for a
# prompt whose answer is not JSON, e.g. the instruction sent to an image-editing model). A version
# once released stays loadable, so a run can be reproduced with the prompt it used.
TEMPLATES: dict[str, tuple[str, type[BaseModel] | None]] = {
    "transition_annotation.v1": ("transition_annotation.v1.j2", TransitionAnnotation),
    "transition_annotation.v2": ("transition_annotation.v2.j2", TransitionAnnotation),
    "caption.v1": ("caption.v1.j2", ClipCaption),
    "caption.v2": ("caption.v2.j2", ClipCaption),
    "edit_score_sc.v1": ("edit_score_sc.v1.j2", EditScoreSC),
    "edit_score_pq.v1": ("edit_score_pq.v1.j2", EditScorePQ),
    "edit_judge.v1": ("edit_judge.v1.j2", EditJudgement),
    "edit_filter.v1": ("edit_filter.v1.j2", EditFilterJudgement),
    "ground_edit_area.v1": ("ground_edit_area.v1.j2", GroundedObjects),
    "ground_edit_area.v2": ("ground_edit_area.v2.j2", EditAreaBoxes),
    "ground_foreground.v1": ("ground_foreground.v1.j2", GroundedForeground),
    "ground_foreground.v2": ("ground_foreground.v2.j2", ForegroundBoxes),
    "reference_score.v1": ("reference_score.v1.j2", ReferenceScore),
    "reference_score.v2": ("reference_score.v2.j2", ReferenceRating),
    "reference_edit.v1": ("reference_edit.v1.j2", None),
    "reference_edit.v2": ("reference_edit.v2.j2", None),
    "subject_choice.v1": ("subject_choice.v1.j2", SubjectChoice),
    "removal_check.v1": ("removal_check.v1.j2", RemovalCheck),
    "erasure_instruction.v1": ("erasure_instruction.v1.j2", ErasureInstruction),
    "scene_proposal.v1": ("scene_proposal.v1.j2", SceneProposal),
    "scene_plausibility.v1": ("scene_plausibility.v1.j2", PlausibilityJudgement),
    "synthesis_prompts.v1": ("synthesis_prompts.v1.j2", ScenePrompts),
}
# A bare name ("transition_annotation") means its default version.
DEFAULT_VERSIONS: dict[str, str] = {
    "transition_annotation": "transition_annotation.v2",
    "caption": "caption.v2",
    "edit_score_sc": "edit_score_sc.v1",
    "edit_score_pq": "edit_score_pq.v1",
    "edit_judge": "edit_judge.v1",
    "edit_filter": "edit_filter.v1",
    "ground_edit_area": "ground_edit_area.v2",
    "ground_foreground": "ground_foreground.v2",
    "reference_score": "reference_score.v2",
    "reference_edit": "reference_edit.v2",
    "subject_choice": "subject_choice.v1",
    "removal_check": "removal_check.v1",
    "erasure_instruction": "erasure_instruction.v1",
    "scene_proposal": "scene_proposal.v1",
    "scene_plausibility": "scene_plausibility.v1",
    "synthesis_prompts": "synthesis_prompts.v1",
}


# `{# ... #}` (with or without whitespace control): documentation, never part of a rendered prompt.
_JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)
# StrictUndefined: a slot the caller forgot is an error, not an empty string in the prompt.
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    file: str
    text: str
    schema: type[BaseModel] | None  # None: the answer is not JSON (an image from an editing model)

    @property
    def hash(self) -> str:
        return hashlib.sha256(_JINJA_COMMENT.sub("", self.text).encode()).hexdigest()[:16]

    @property
    def version(self) -> str:
        """`<file>@<hash>`: what `_run.json` records."""
        return f"{self.file}@{self.hash}"

    @cached_property
    def compiled(self) -> jinja2.Template:
        """Compiled once per template: compiling costs ~1 ms, rendering ~0.01 ms, and a judge
        renders one prompt per request (bench/judge_throughput.py)."""
        return _ENV.from_string(self.text)

    def render(self, **slots: object) -> str:
        return self.compiled.render(**slots).strip() + "\n"


def template_names() -> list[str]:
    """Every name `load_template` takes: each bare name (its default version) and each version."""
    return [*DEFAULT_VERSIONS, *TEMPLATES]


def answering_template(name: str, schemas: tuple[type[BaseModel], ...], what: str) -> str:
    """`name` if it loads and its answer schema is one of `schemas`; else a ValueError naming it.
    For a stage's template field validator: a typo, or a prompt whose answer the stage cannot read,
    fails when the config is built, not on the first batch."""
    try:
        template = load_template(name)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    if template.schema not in schemas:
        raise ValueError(f"{name}: its answer schema {template.schema} is not {what}")
    return name


@cache
def load_template(name: str) -> PromptTemplate:
    """The template `name`: "<name>" (its default version) or "<name>.v<N>" (that version)."""
    versioned = DEFAULT_VERSIONS.get(name, name)
    if versioned not in TEMPLATES:
        raise KeyError(f"unknown prompt template {name!r}; known: {', '.join(template_names())}")
    file, schema = TEMPLATES[versioned]
    text = (files("curation.prompts") / file).read_text(encoding="utf-8")
    return PromptTemplate(name=name, file=file, text=text, schema=schema)
