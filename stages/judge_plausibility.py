"""judge_plausibility: an LLM drops sampled scenes that could not exist or could not be drawn (ImVideoEdit §3).

Conditions drawn at random (plan_scenes) often combine into scenes that are implausible or
incoherent. ImVideoEdit (seed 000, §3) has an LLM remove the descriptions that break physical
principles, go against common sense, or cannot be depicted clearly. One text-only request per
scene (prompts/scene_plausibility.v1.j2) rates the three criteria 1-5 after writing its reasoning;
a scene with any rating below `min_score` is dropped as `implausible: <criteria below it>`. The
ratings are kept in `scores` (plausibility_physics, plausibility_commonsense,
plausibility_depictable) and the reasoning in `plausibility_reasoning`, on kept and dropped rows.

Failures: a request that failed after retries (API error, exhausted budget) makes the scene
`status=error` (retry_errors=true asks again); an answer that fails the schema after the re-ask
drops it as `plausibility_unparseable`, since an unjudged scene must not pass a filter.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field, field_validator

from curation.backends.vlm import VLMError, VLMReply, VLMRequest, VLMUsage
from curation.core.schema import scores_of
from curation.core.stage import Row, Threshold
from curation.prompts.synthesis import PLAUSIBILITY_SCALE, PLAUSIBILITY_SCORES, PlausibilityJudgement
from curation.prompts.templates import PromptTemplate, answering_template, load_template
from curation.stages.base.vlm import VLMStage


class JudgePlausibilityColumns(BaseModel):
    scores: dict[str, float] | None = Field(None, description="plausibility_physics, plausibility_commonsense and "
                                                              "plausibility_depictable: the LLM's 1-5 ratings")
    plausibility_reasoning: str | None = Field(None, description="the LLM's reasoning, written before its ratings")
    vlm_usage: VLMUsage | None = Field(None, description="the request: tokens, cache hits and estimated USD")


class JudgePlausibility(VLMStage):
    """An LLM rates each scene on physics, common sense and depictability; any rating below min_score drops it."""

    name: ClassVar[str] = "judge_plausibility"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = JudgePlausibilityColumns

    template: str = Field("scene_plausibility", description="prompt template name (prompts/); its hash is in the cache key")
    min_score: int = Field(4, ge=PLAUSIBILITY_SCALE[0], le=PLAUSIBILITY_SCALE[1],
                           description="keep a scene only when all three ratings reach this (ours: §3 publishes no scale)")

    @field_validator("template")
    @classmethod
    def _judgement_template(cls, name: str) -> str:
        return answering_template(name, (PlausibilityJudgement,), "a plausibility judgement")

    def templates(self) -> list[PromptTemplate]:
        return [load_template(self.template)]

    def thresholds(self) -> list[Threshold]:
        return [Threshold(score=key, value=self.min_score, setting="judge_plausibility.min_score")
                for key in PLAUSIBILITY_SCORES.values()]

    def process_batch(self, rows: list[Row]) -> list[Row]:
        template = self.templates()[0]

        def request(r: int, feedback: str | None) -> VLMRequest:
            text = template.render(environment=rows[r]["environment"], conditions=rows[r]["conditions"], feedback=feedback)
            return VLMRequest(prompt=text, images=[], schema=template.schema, cache_salt=template.hash)

        replies, usage = self.ask([request(r, None) for r in range(len(rows))], request)
        return [self._judged(row, reply, spent) for row, reply, spent in zip(rows, replies, usage)]

    def _judged(self, row: Row, reply: VLMReply | VLMError, usage: VLMUsage) -> Row:
        spent = {"vlm_usage": usage.model_dump()}
        if isinstance(reply, VLMError):
            return self.error_row(row, reply.reason, **spent)
        if reply.parsed is None:
            return self.error_row(row, f"plausibility_unparseable: {reply.error}", "dropped", **spent)
        judgement: PlausibilityJudgement = reply.parsed
        columns = {"scores": {**scores_of(row), **judgement.scores()}, "plausibility_reasoning": judgement.reasoning, **spent}
        failed = [criterion for criterion in PLAUSIBILITY_SCORES if getattr(judgement, criterion) < self.min_score]
        if failed:
            return self.error_row(row, f"implausible: {', '.join(failed)}", "dropped", **columns)
        return self.enrich(row, **columns)
