"""Output schema of the `transition_annotation` prompt (VINCIE appendix C.2), the per-turn
record that `annotate` stores on a session and `ground` reads, and the clip caption (`caption`
prompt) that fills the annotation prompt's caption slot.

A frame caption is VINCIE's `{scene, char1.., obj1..}` mapping: `scene` plus one entry per
character (`charN`) and object (`objN`), each a short description. `character_change` and
`object_change` map the same ids to how that entity changed (empty when it did not), which is
what `ground` looks up in both frames.
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

ENTITY_ID = re.compile(r"^(char|obj)[1-9][0-9]*$")
MAX_ENTITIES = 12  # per caption / change map: a frame pair worth annotating has a handful


class FrameCaption(RootModel[dict[str, str]]):
    """`{"scene": ..., "char1": ..., "obj1": ...}`: the scene plus each entity's description."""

    @model_validator(mode="after")
    def _check_keys(self) -> FrameCaption:
        keys = self.root
        if "scene" not in keys:
            raise ValueError("caption needs a 'scene' entry")
        bad = [k for k in keys if k != "scene" and not ENTITY_ID.match(k)]
        if bad:
            raise ValueError(f"caption keys must be 'scene', 'charN' or 'objN'; got {bad}")
        if len(keys) > MAX_ENTITIES + 1:
            raise ValueError(f"caption has {len(keys) - 1} entities; at most {MAX_ENTITIES}")
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        # Explicit so every backend (OpenAI json_schema, Gemini, xgrammar) gets the same shape.
        # `propertyNames` lets grammar-constrained decoders (xgrammar locally, vLLM/SGLang) enforce
        # the key pattern instead of leaving it to validation and a retry.
        return {
            "type": "object",
            "properties": {"scene": {"type": "string"}},
            "required": ["scene"],
            "additionalProperties": {"type": "string"},
            "propertyNames": {"pattern": "^(scene|(char|obj)[1-9][0-9]*)$"},
            "maxProperties": MAX_ENTITIES + 1,
            "description": "scene plus one entry per character (char1, char2, ...) and object (obj1, ...)",
        }


class TransitionAnnotation(BaseModel):
    """What the VLM returns for one adjacent frame pair."""

    model_config = ConfigDict(extra="forbid")

    frame1_caption: FrameCaption
    frame2_caption: FrameCaption
    character_change: dict[str, str] = Field(
        description="charN -> how that character changed; empty string if it did not",
        max_length=MAX_ENTITIES,
        json_schema_extra={"propertyNames": {"pattern": ENTITY_ID.pattern}},
    )
    object_change: dict[str, str] = Field(
        description="objN -> how that object changed; empty string if it did not",
        max_length=MAX_ENTITIES,
        json_schema_extra={"propertyNames": {"pattern": ENTITY_ID.pattern}},
    )
    global_change: str = Field(description="scene-wide change (lighting, weather, style), or empty")
    camera_change: str = Field(description="camera motion between the frames, or 'none'")
    other_change: str = Field(description="any other change, or empty")
    summary_change: str = Field(min_length=1, description="one imperative editing instruction covering all changes")

    @field_validator("character_change", "object_change")
    @classmethod
    def _entity_keys(cls, changes: dict[str, str]) -> dict[str, str]:
        bad = [k for k in changes if not ENTITY_ID.match(k)]
        if bad:
            raise ValueError(f"change keys must be 'charN' or 'objN'; got {bad}")
        return changes

    @field_validator("summary_change")
    @classmethod
    def _instruction_has_text(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("summary_change is blank")
        return text

    def changed_entities(self) -> list[tuple[str, str | None, str | None]]:
        """(entity id, description in frame 1, description in frame 2) for every entity whose
        change entry is non-empty: the grounding queries. A description is None when the entity
        is absent from that frame (appeared or disappeared)."""
        out = []
        for changes in (self.character_change, self.object_change):
            for entity, change in changes.items():
                if change and change.strip() and change.strip().lower() not in {"none", "no change", "n/a"}:
                    out.append((entity, self.frame1_caption.root.get(entity), self.frame2_caption.root.get(entity)))
        return out


class Turn(BaseModel):
    """One transition of a session (frame `index` -> frame `index + 1`), as stored in the `turns` column."""

    index: int = Field(description="transition k goes from frame k to frame k+1")
    instruction: str | None = Field(None, description="summary_change: the editing instruction for this turn")
    camera: str | None = Field(None, description="camera change normalised to "
                                                 "none|orbit|dolly-in|dolly-out|pan-left|pan-right|tilt-up|tilt-down")
    camera_raw: str | None = Field(None, description="camera change as the VLM wrote it")
    annotation: str | None = Field(None, description="TransitionAnnotation as JSON text")
    error: str | None = Field(None, description="why this turn has no annotation (validation failed twice, API error)")

    def parsed(self) -> TransitionAnnotation | None:
        return TransitionAnnotation.model_validate_json(self.annotation) if self.annotation else None


class ClipCaption(BaseModel):
    """What the `caption` prompt returns for one clip: VINCIE C.2 gives the annotator "the caption
    of the raw video clip" as context; `annotate` puts this text in its caption slot."""

    model_config = ConfigDict(extra="forbid")

    caption: str = Field(min_length=1, max_length=1000, description="what the clip shows, in two to four plain sentences")

    @field_validator("caption")
    @classmethod
    def _caption_has_text(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("caption is blank")
        return text.strip()


def annotation_json_schema() -> dict:
    return TransitionAnnotation.model_json_schema()


def dumps(annotation: TransitionAnnotation) -> str:
    return json.dumps(annotation.model_dump(mode="json"), ensure_ascii=False, sort_keys=False)
