"""Output schemas and scoring maths of the judging prompts: EditScore, the generic VLM edit judge,
grounding and reference scoring (the `references` and `pairs` pipelines, DESIGN.md §2).

Schemas. Each is the answer of one template in `prompts/` (see prompts/templates.py: TEMPLATES).
Their JSON schemas go unchanged to OpenAI `json_schema` (strict: false), Gemini
`response_json_schema` and xgrammar (local decoding), so they use only what all three accept:
`minimum`/`maximum` on numbers, `minItems`/`maxItems` on arrays, `enum`, `$defs`/`$ref`. No
`minLength`/`maxLength` on strings (xgrammar 0.2.8 lets control characters into length-limited
strings); blank strings are rejected by validators instead, and the rejection goes back to the
model as feedback. Keys come in the order the model should write them: reasoning first, then the
scores it justifies.

Images go to the VLM in the order the template names them:
  edit_score_sc     source, edited         -> EditScoreSC
  edit_score_pq     edited                 -> EditScorePQ
  edit_judge        source, edited         -> EditJudgement (a video: one frame pair per request)
  ground_edit_area  source, edited         -> v2 EditAreaBoxes, v1 GroundedObjects (boxes in the edited image)
  ground_foreground source, edited         -> v2 ForegroundBoxes, v1 GroundedForeground (boxes in each image)
  reference_score   source, edited, reference -> v2 ReferenceRating (integer), v1 ReferenceScore
  reference_edit    the frame to edit      -> an image (no schema; sent to an image editor)

Maths. EditScore and the generic judge both use VIEScore's form on a 0-10 scale:
overall = sqrt(min(semantic-consistency scores) * min(perceptual-quality scores)).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

EDITSCORE_RANGE = 25.0  # the 0-25 scale edit_score_sc / edit_score_pq ask for (EditScore's score_range)
MAX_OBJECTS = 8  # boxes per grounding answer: an edit touches a handful of objects at most
REFERENCE_MODES = ("object", "background")  # reference_edit's `mode` slot

# Sub-score names: the keys stages write on a row, so every stage stores them the same way.
# All are on the 0-10 scale.
EDIT_SCORE = "edit_score"  # overall: sqrt(min(success, over_editing) * min(naturalness, artifacts))
EDIT_SUCCESS = "edit_success"  # how fully the instruction was carried out
OVER_EDITING = "over_editing"  # 10 = nothing changed beyond the instruction
NATURALNESS = "naturalness"  # 10 = looks like a real, coherent photo / frame
ARTIFACTS = "artifacts"  # 10 = no artifacts
# ImVideoEdit's filter criteria (judge=imvideoedit): the overall is their combination (min by default).
FAITHFULNESS = "faithfulness"  # the instruction carried out
VISUAL_QUALITY = "visual_quality"  # clean and believable
PRESERVATION = "preservation"  # what the instruction does not touch is unchanged
REFERENCE_SCORE = "reference_score"  # 1-10 rating of a synthesized reference image
SUB_SCORES: tuple[str, ...] = (EDIT_SUCCESS, OVER_EDITING, NATURALNESS, ARTIFACTS)


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be blank")
    return text


# --------------------------------------------------------------------------------------------
# EditScore (VIEScore-style): two prompts, each {"reasoning", "score": [a, b]} on 0-25
# --------------------------------------------------------------------------------------------

EditScoreValue = Annotated[float, Field(ge=0, le=EDITSCORE_RANGE)]


class EditScoreSC(BaseModel):
    """Semantic consistency: source + edited image + instruction."""

    model_config = ConfigDict(extra="forbid")

    reasoning: str = Field(description="a short justification of the two scores")
    score: list[EditScoreValue] = Field(
        min_length=2, max_length=2,
        description="[editing success, over-editing], each 0-25; over-editing 25 = only the instructed change was made",
    )


class EditScorePQ(BaseModel):
    """Perceptual quality: the edited image alone."""

    model_config = ConfigDict(extra="forbid")

    reasoning: str = Field(description="a short justification of the two scores")
    score: list[EditScoreValue] = Field(
        min_length=2, max_length=2,
        description="[naturalness, artifacts], each 0-25; artifacts 25 = no artifacts at all",
    )


# --------------------------------------------------------------------------------------------
# Generic VLM judge: one answer with all four sub-scores on 0-10
# --------------------------------------------------------------------------------------------

JudgeValue = Annotated[float, Field(ge=0, le=10)]


class EditJudgement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reasoning: str = Field(description="a short justification of the scores")
    edit_success: JudgeValue = Field(description="0-10: how fully the instruction was carried out")
    over_editing: JudgeValue = Field(description="0-10: 10 = nothing changed beyond what the instruction asks")
    naturalness: JudgeValue = Field(description="0-10: 10 = the edited image looks natural (lighting, shadows, scale)")
    artifacts: JudgeValue = Field(description="0-10: 10 = no artifacts (distortion, blur, seams, malformed parts)")


class EditFilterJudgement(BaseModel):
    """`edit_filter` (ImVideoEdit's data filter): its three criteria, each 0-10."""

    model_config = ConfigDict(extra="forbid")

    reasoning: str = Field(description="a short justification of the scores")
    faithfulness: JudgeValue = Field(description="0-10: the instruction carried out, fully and correctly")
    visual_quality: JudgeValue = Field(description="0-10: the edited image is clean and believable")
    preservation: JudgeValue = Field(description="0-10: 10 = nothing changed that the instruction does not touch")


# --------------------------------------------------------------------------------------------
# Grounding (Kiwi-Edit prompts 1 and 2). v2 answers in the paper's shape (004 App. B):
# {"image_2": [{"bbox", "label"}, ...]} and {"image_1": [...], "image_2": [...]}; v1 answered
# Qwen-style {"objects": [{"label", "bbox_2d"}]}. Every grounding answer lists its boxes the same
# way (`boxes()`), so the stage reads any version without knowing which one it asked.
# --------------------------------------------------------------------------------------------

GroundedImage = Literal["source", "edited"]  # image_1 of the grounding prompts is the source, image_2 the edited


class AnswerBox(NamedTuple):
    image: GroundedImage
    label: str
    coords: list[float]  # [x1, y1, x2, y2] as the model wrote it, in the convention the prompt named


class GroundedBox(BaseModel):
    """One box. The coordinate convention (pixels or 0-1000) is whatever the prompt's `box_hint`
    asked for; the stage that sent the prompt converts it to frame pixels. Corner order and size
    are not checked here: `curation.regions.boxes` swaps reversed corners and drops degenerate boxes with
    a stable reason (`degenerate_box`), which a schema rejection would hide as unparseable."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(description="a short noun phrase naming the object")
    bbox_2d: list[float] = Field(
        min_length=4, max_length=4, description="[x1, y1, x2, y2]: top-left and bottom-right corners"
    )

    _label = field_validator("label")(_not_blank)


class GroundedObjects(BaseModel):
    """`ground_edit_area`: the edited object(s), boxed in the edited image. Empty when the model
    finds nothing to box (the stage drops the sample with a reason)."""

    model_config = ConfigDict(extra="forbid")

    objects: list[GroundedBox] = Field(max_length=MAX_OBJECTS, description="one entry per edited object; [] if none")

    def boxes(self) -> list[AnswerBox]:
        return [AnswerBox("edited", b.label, b.bbox_2d) for b in self.objects]


class ForegroundBox(GroundedBox):
    image: Literal["source", "edited"] = Field(description="which image the box is in")


class GroundedForeground(BaseModel):
    """`ground_foreground` (background changes): the kept foreground object(s), boxed in each
    image. A separate schema rather than an optional `image` field on GroundedBox, so the
    edit-area answer cannot carry a meaningless `image` and this one cannot omit it."""

    model_config = ConfigDict(extra="forbid")

    objects: list[ForegroundBox] = Field(
        max_length=2 * MAX_OBJECTS, description="each kept foreground object, once per image it is visible in; [] if none"
    )

    def in_image(self, image: Literal["source", "edited"]) -> list[ForegroundBox]:
        return [box for box in self.objects if box.image == image]

    def boxes(self) -> list[AnswerBox]:
        return [AnswerBox(b.image, b.label, b.bbox_2d) for b in self.objects]


class KiwiBox(BaseModel):
    """One box of a v2 grounding answer, keys as in Kiwi-Edit's output format (004 App. B,
    prompts 1-2). Geometry is not checked here, as for GroundedBox."""

    model_config = ConfigDict(extra="forbid")

    bbox: list[float] = Field(min_length=4, max_length=4, description="[x1, y1, x2, y2]: top-left and bottom-right corners")
    label: str = Field(description="a short name of the object")

    _label = field_validator("label")(_not_blank)


class EditAreaBoxes(BaseModel):
    """`ground_edit_area.v2` (Kiwi-Edit prompt 1): the edited area, boxed in image 2 (the edited
    image). Empty when the model finds nothing (the stage drops the sample with a reason)."""

    model_config = ConfigDict(extra="forbid")

    image_2: list[KiwiBox] = Field(max_length=MAX_OBJECTS, description="boxes of the edited area in the edited image; [] if none")

    def boxes(self) -> list[AnswerBox]:
        return [AnswerBox("edited", b.label, b.bbox) for b in self.image_2]


class ForegroundBoxes(BaseModel):
    """`ground_foreground.v2` (Kiwi-Edit prompt 2): the same foreground object(s) or person boxed
    in image 1 (the source) and in image 2 (the edited image), each list in its own image's
    coordinates."""

    model_config = ConfigDict(extra="forbid")

    image_1: list[KiwiBox] = Field(max_length=MAX_OBJECTS, description="the foreground in the first (source) image; [] if none")
    image_2: list[KiwiBox] = Field(max_length=MAX_OBJECTS, description="the same foreground in the second (edited) image; [] if none")

    def boxes(self) -> list[AnswerBox]:
        return ([AnswerBox("source", b.label, b.bbox) for b in self.image_1]
                + [AnswerBox("edited", b.label, b.bbox) for b in self.image_2])


# The schemas the ground_edit stage reads, every version.
GROUNDING_ANSWERS: tuple[type[BaseModel], ...] = (EditAreaBoxes, ForegroundBoxes, GroundedObjects, GroundedForeground)


# --------------------------------------------------------------------------------------------
# Reference scoring (Kiwi-Edit prompt 3)
# --------------------------------------------------------------------------------------------


class ReferenceScore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reasoning: str = Field(description="a short justification of the score")
    score: Annotated[float, Field(ge=1, le=10)] = Field(
        description="1-10: how well the reference shows what the edit introduced, and how clean and complete it is"
    )


class ReferenceRating(BaseModel):
    """`reference_score.v2` (Kiwi-Edit prompt 3): the paper's answer is the score alone, an
    integer 1-10. Lax int: 7 and 7.0 parse, 7.5 does not."""

    model_config = ConfigDict(extra="forbid")

    score: int = Field(ge=1, le=10, description="1-10 integer: one overall score of the reference image")


# The schemas the score_reference stage reads, every version.
REFERENCE_ANSWERS: tuple[type[BaseModel], ...] = (ReferenceRating, ReferenceScore)


# --------------------------------------------------------------------------------------------
# Maths
# --------------------------------------------------------------------------------------------


def _to_ten(values: Iterable[float], score_range: float, what: str) -> list[float]:
    values = list(values)
    if not values:
        raise ValueError(f"{what}: no scores")
    if score_range <= 0:
        raise ValueError(f"score_range must be positive, got {score_range}")
    bad = [v for v in values if not 0 <= v <= score_range]
    if bad:
        raise ValueError(f"{what}: scores {bad} outside 0..{score_range:g}")
    return [v / (score_range / 10) for v in values]


def editscore_overall(sc: list[float], pq: list[float], score_range: float = EDITSCORE_RANGE) -> float:
    """EditScore's overall score on 0-10: sqrt(min(SC) * min(PQ)), each divided by score_range/10
    (2.5 for the default 25). Checked against VectorSpaceLab/EditScore `editscore/__init__.py`
    (`EditScore.evaluate` and `batch_evaluate`, commit 35ddc1a9): `min(score) / (score_range / 10)`
    per prompt, then `math.sqrt(SC_score * PQ_score)`; VIEScore (TIGER-AI-Lab/VIEScore
    `viescore/__init__.py`) is the same on a native 0-10 scale."""
    return math.sqrt(min(_to_ten(sc, score_range, "SC")) * min(_to_ten(pq, score_range, "PQ")))


def editscore_subscores(sc: EditScoreSC, pq: EditScorePQ, score_range: float = EDITSCORE_RANGE) -> dict[str, float]:
    """The four sub-scores and the overall, all on 0-10, under the shared names."""
    success, over = _to_ten(sc.score, score_range, "SC")
    natural, artifacts = _to_ten(pq.score, score_range, "PQ")
    return {EDIT_SUCCESS: success, OVER_EDITING: over, NATURALNESS: natural, ARTIFACTS: artifacts,
            EDIT_SCORE: editscore_overall(sc.score, pq.score, score_range)}


def judgement_overall(j: EditJudgement) -> float:
    """The generic judge's overall on 0-10, in EditScore's form:
    sqrt(min(edit_success, over_editing) * min(naturalness, artifacts))."""
    return math.sqrt(min(j.edit_success, j.over_editing) * min(j.naturalness, j.artifacts))


def judgement_subscores(j: EditJudgement) -> dict[str, float]:
    return {EDIT_SUCCESS: j.edit_success, OVER_EDITING: j.over_editing, NATURALNESS: j.naturalness,
            ARTIFACTS: j.artifacts, EDIT_SCORE: judgement_overall(j)}


def filter_subscores(j: EditFilterJudgement, combine: Literal["mean", "min"]) -> dict[str, float]:
    """ImVideoEdit's three criteria and their combination as the overall (the paper keeps a pair
    at 6 or more without saying how the criteria combine: `min` by default, ours)."""
    criteria = {FAITHFULNESS: j.faithfulness, VISUAL_QUALITY: j.visual_quality, PRESERVATION: j.preservation}
    return {**criteria, EDIT_SCORE: aggregate(criteria.values(), combine)}


def aggregate(values: Iterable[float], how: Literal["mean", "min"]) -> float:
    """Combine several scores of one sample (the frame pairs of a video, or repeated passes:
    EditScore's Avg@N is the mean of per-pass overall scores)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("aggregate: no values")
    if how == "mean":
        return math.fsum(values) / len(values)
    if how == "min":
        return min(values)
    raise ValueError(f"aggregate: how must be 'mean' or 'min', got {how!r}")


def passes(score: float, threshold: float, inclusive: bool) -> bool:
    """score >= threshold (inclusive) or score > threshold (not inclusive). A score within 1e-9
    of the threshold counts as equal to it, so float noise from the maths (sqrt(8 * 8.000000000000002))
    neither passes a strict threshold nor fails an inclusive one; NaN never passes."""
    if math.isclose(score, threshold, rel_tol=0.0, abs_tol=1e-9):
        return inclusive
    return score > threshold
