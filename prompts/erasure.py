"""Answer schemas of the erasure prompts: InstructX's video add/remove pairs (seed 002, App. A.2).

A.2 makes add and remove pairs in four steps: an MLLM looks at a clip and names a subject to take
out, a detector and a segmenter mask it, a video eraser removes it, an MLLM filter throws away
erasures with inpainting artifacts, and finally the MLLM writes a "remove" instruction for
(original -> erased) and an "add" instruction for the same two clips with their roles swapped.
The three MLLM steps are these schemas:

  subject_choice        clip frames                          -> SubjectChoice
  removal_check         (original, erased) frame pairs       -> RemovalCheck
  erasure_instruction   source frames, then target frames    -> ErasureInstruction

Like prompts/judges.py, the JSON schemas use only what OpenAI, Gemini and xgrammar all accept
(no string length limits); blank strings are refused by validators, and the refusal goes back to
the model as feedback. Keys come in the order the model should write them: reasoning before the
scores it justifies.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_SUBJECTS = 5  # candidates one answer may list: a clip has a handful of removable things at most
# The removal check's scale. Ours: A.2 publishes the filter but not its scale; 1-5 is the scale
# InstructX's own user study rates edits on (App. A.3), coarse enough for a VLM to be consistent.
REMOVAL_SCALE = (1, 5)
REMOVAL_SCORE = "removal_score"  # the `scores` key: min(subject_removed, artifact_free)
SUBJECT_REMOVED = "subject_removed"
ARTIFACT_FREE = "artifact_free"
DIRECTIONS = ("remove", "add")  # erasure_instruction's `direction` slot


def _text(value: str, what: str) -> str:
    text = value.strip()
    if not text:
        raise ValueError(f"{what} must not be blank")
    return text


class SubjectCandidate(BaseModel):
    """One object the clip could lose: the name the pipeline calls it by, and the phrase an
    open-vocabulary detector (Grounding DINO in A.2) is prompted with to find it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the object's category as a short noun phrase, e.g. 'dog'")
    phrase: str = Field(description="a short visual description that singles it out for a detector, e.g. 'brown dog on the sofa'")

    @field_validator("name", "phrase")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return _text(value, "name and phrase")


class SubjectChoice(BaseModel):
    """`subject_choice`: removable subjects, best first; an empty list says the clip has none."""

    model_config = ConfigDict(extra="forbid")

    subjects: list[SubjectCandidate] = Field(max_length=MAX_SUBJECTS,
                                             description="removable objects, the best candidate first; [] when there is none")


class RemovalCheck(BaseModel):
    """`removal_check`: is the subject gone, and is the filled-in area clean? Integers on REMOVAL_SCALE."""

    model_config = ConfigDict(extra="forbid")

    reasoning: str = Field(description="what the frame pairs show: traces of the subject, and any artifacts")
    subject_removed: int = Field(ge=REMOVAL_SCALE[0], le=REMOVAL_SCALE[1],
                                 description="1-5: 5 the subject is entirely gone from every erased frame, 1 it is still there")
    artifact_free: int = Field(ge=REMOVAL_SCALE[0], le=REMOVAL_SCALE[1],
                               description="1-5: 5 the erased frames show no trace of inpainting, 1 obvious artifacts")

    @field_validator("reasoning")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return _text(value, "reasoning")

    @property
    def overall(self) -> float:
        """The removal score (ours): the weaker of the two, so a clean fill that left the subject
        behind fails as surely as a removal full of smears."""
        return float(min(self.subject_removed, self.artifact_free))


class ErasureInstruction(BaseModel):
    """`erasure_instruction`: the one instruction that turns the source clip into the target clip."""

    model_config = ConfigDict(extra="forbid")

    instruction: str = Field(description="an imperative editing instruction, one or two sentences")

    @field_validator("instruction")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return _text(value, "instruction")
