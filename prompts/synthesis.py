"""Task types and answer schemas of `pipeline=synthesis`: ImVideoEdit's generated image pairs (seed 000, §3).

ImVideoEdit builds its training pairs from text alone. Base environments are combined with randomly
sampled conditions into scene descriptions; an LLM throws out combinations that could not exist or
could not be drawn; each surviving scene is given several editing tasks; and for every (scene,
task) an LLM writes a prompt for the original image and a prompt for the edited one. The LLM steps
are these schemas:

  scene_proposal        seed words                      -> SceneProposal (plan_scenes, `propose:`)
  scene_plausibility    one environment + conditions    -> PlausibilityJudgement (judge_plausibility)
  synthesis_prompts     one scene + one task type       -> ScenePrompts (write_prompts)

`TASK_TYPES` are the ten subtasks of App. B as snake_case ids, each described in our words, and
`TASK_CATEGORY` files each under curate's edit taxonomy (curation/labels/categories.py), so the
generated pairs stratify and filter like every ingested dataset's.

As in prompts/erasure.py the JSON schemas use only what OpenAI, Gemini and xgrammar all accept;
blank strings are refused by validators (the refusal goes back to the model as feedback), and keys
come in the order the model should write them: reasoning before the scores it justifies.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

# id -> what the edit does (App. B, in our words). The order is App. B's.
TASK_TYPES: dict[str, str] = {
    "style_transfer": "re-render the whole scene in one artistic style (e.g. watercolour, pixel art), keeping its layout and content",
    "color_texture_change": "change the colour or material of one object or region (e.g. wood to marble), keeping its shape and place",
    "object_addition": "put a new object into the scene, fitting its lighting, scale and perspective",
    "object_removal": "take an object out of the scene and fill the uncovered area so that nothing looks missing",
    "rigid_replacement": "swap a rigid object (furniture, a vehicle, a building) for a different one of about the same size and shape",
    "nonrigid_replacement": "swap a deformable subject (a person, an animal) for a different one in the same pose and place",
    "camera_viewpoint_change": "show the same scene from another camera position, angle or framing (aerial, low angle, zoomed out)",
    "local_attribute_change": "change a state or attribute of one object (an expression, wet, broken) while it stays the same object",
    "relighting": "change the scene's lighting (time of day, light direction, colour temperature) with shadows and reflections to match",
    "background_replacement": "replace the whole background with another setting while the foreground subjects stay as they are",
}
# id -> curate category. Both replacements and attribute changes alter one thing in place: local_change.
TASK_CATEGORY: dict[str, str] = {
    "style_transfer": "global_style",
    "color_texture_change": "color_texture",
    "object_addition": "local_add",
    "object_removal": "local_remove",
    "rigid_replacement": "local_change",
    "nonrigid_replacement": "local_change",
    "camera_viewpoint_change": "camera",
    "local_attribute_change": "local_change",
    "relighting": "relight",
    "background_replacement": "background_change",
}

# The plausibility scale. Ours: §3 names the three criteria but publishes no scale; 1-5 is coarse
# enough for an LLM to be consistent and is the scale our other text judges use (prompts/erasure.py).
PLAUSIBILITY_SCALE = (1, 5)
# criterion -> the `scores` key it is recorded under
PLAUSIBILITY_SCORES: dict[str, str] = {
    "physics": "plausibility_physics",
    "commonsense": "plausibility_commonsense",
    "depictable": "plausibility_depictable",
}


def _text(value: str, what: str) -> str:
    text = value.strip()
    if not text:
        raise ValueError(f"{what} must not be blank")
    return text


def _distinct(values: list[str], what: str) -> list[str]:
    cleaned = [_text(v, what) for v in values]
    seen = {v.lower() for v in cleaned}
    if len(seen) != len(cleaned):
        raise ValueError(f"{what} must be distinct")
    return cleaned


class SceneProposal(BaseModel):
    """`scene_proposal`: base environments and the conditions to combine them with."""

    model_config = ConfigDict(extra="forbid")

    environments: list[str] = Field(description="base environments or entities, each a short noun phrase")
    conditions: list[str] = Field(description="conditions that can be combined with many of the environments")

    @field_validator("environments")
    @classmethod
    def _environments(cls, values: list[str]) -> list[str]:
        return _distinct(values, "environments")

    @field_validator("conditions")
    @classmethod
    def _conditions(cls, values: list[str]) -> list[str]:
        return _distinct(values, "conditions")


class PlausibilityJudgement(BaseModel):
    """`scene_plausibility`: one scene rated on §3's three criteria, integers on PLAUSIBILITY_SCALE."""

    model_config = ConfigDict(extra="forbid")

    reasoning: str = Field(description="what could or could not exist, and what an image could show")
    physics: int = Field(ge=PLAUSIBILITY_SCALE[0], le=PLAUSIBILITY_SCALE[1],
                         description="1-5: 5 nothing breaks physical laws, 1 it could not physically exist")
    commonsense: int = Field(ge=PLAUSIBILITY_SCALE[0], le=PLAUSIBILITY_SCALE[1],
                             description="1-5: 5 an ordinary, coherent combination, 1 absurd or contradictory")
    depictable: int = Field(ge=PLAUSIBILITY_SCALE[0], le=PLAUSIBILITY_SCALE[1],
                            description="1-5: 5 one image shows it clearly, 1 nothing in a picture could show it")

    @field_validator("reasoning")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return _text(value, "reasoning")

    def scores(self) -> dict[str, float]:
        """The three ratings under their `scores` keys."""
        return {key: float(getattr(self, criterion)) for criterion, key in PLAUSIBILITY_SCORES.items()}


class ScenePrompts(BaseModel):
    """`synthesis_prompts`: the prompts of one (scene, task) pair."""

    model_config = ConfigDict(extra="forbid")

    source_prompt: str = Field(description="a text-to-image prompt for the scene before the edit")
    edit_prompt: str = Field(description="a full description of the image after the edit, not only of the change")
    instruction: str = Field(description="one imperative instruction that turns the source image into the edited one")

    @field_validator("source_prompt", "edit_prompt", "instruction")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return _text(value, "source_prompt, edit_prompt and instruction")
