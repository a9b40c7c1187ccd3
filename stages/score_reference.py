"""score_reference: a VLM rates each synthesized reference 1-10 (Kiwi-Edit prompt 3).

It sees the instruction, the input (source) frame, the edited (target) frame and the reference,
and judges whether the reference shows what the edit introduced (instruction-follow
consistency) and whether it is a clean, complete image. References scoring below `threshold`
are dropped.

`template` picks the prompt version: reference_score.v2 (the default) asks for the paper's answer,
an integer 1-10 alone; reference_score.v1 asked for a 1-10 number with reasoning. Both are on the
same 1-10 scale, so one threshold serves both and is compared to the score as given (an integer
score passes `threshold: 7` exactly when it is 7 or more).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator

from curation.backends.vlm import VLMError, VLMReply, VLMRequest, VLMUsage
from curation.core.schema import scores_of
from curation.core.stage import Row, Threshold
from curation.prompts.judges import REFERENCE_ANSWERS, REFERENCE_SCORE, ReferenceScore, passes
from curation.prompts.templates import PromptTemplate, answering_template, load_template
from curation.stages.base.scope import CategoryScope
from curation.stages.base.vlm import VLMStage


class ScoreReferenceColumns(BaseModel):
    scores: dict[str, float] | None = Field(None, description="name -> score; score_reference adds reference_score (1-10)")
    reference_reasoning: str | None = Field(None, description="the VLM's reasoning for reference_score (reference_score.v1 only: "
                                                            "the paper's prompt, v2, asks for the score alone)")
    vlm_usage: VLMUsage | None = Field(None, description="requests, cache hits, tokens and USD spent rating this reference")


class ScoreReference(VLMStage, CategoryScope):
    """A VLM rates the reference 1-10 against instruction, source and edited frame; keep >= threshold."""

    name: ClassVar[str] = "score_reference"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = ScoreReferenceColumns
    reads_media: ClassVar[tuple[str, ...]] = ("src_frame", "tgt_frame", "reference")

    template: str = Field("reference_score", description="prompt (Kiwi-Edit prompt 3): reference_score (its default version), "
                                                         "reference_score.v2 (integer 1-10) or .v1 (1-10 with reasoning)")
    threshold: float = Field(ge=1, le=10, description="keep references scoring at least this, on the prompt's 1-10 scale. Ours: "
                                                      "Kiwi-Edit filters low-fidelity references with an MLLM (§3.1, Stage 4; "
                                                      "App. B, Prompt 3) but publishes no cut-off")

    @field_validator("template")
    @classmethod
    def _reference_template(cls, name: str) -> str:
        return answering_template(name, REFERENCE_ANSWERS, "a reference score")

    def templates(self) -> list[PromptTemplate]:
        return [load_template(self.template)]

    def thresholds(self) -> list[Threshold]:
        return [Threshold(score=REFERENCE_SCORE, value=self.threshold, setting="threshold")]

    def process_batch(self, rows: list[Row]) -> list[Row]:
        return self.in_scope(rows, self._process_in_scope)

    def _process_in_scope(self, rows: list[Row]) -> list[Row]:
        template = self.templates()[0]
        out: dict[int, dict[str, Any]] = {}
        todo = []
        for r, row in enumerate(rows):
            if not (row.get("reference") and row.get("src_frame") and row.get("tgt_frame")):
                out[r] = self.error_row(row, "no_reference: run ground_edit and reference first")
            else:
                todo.append(r)

        def request(r: int, feedback: str | None) -> VLMRequest:
            row = rows[r]
            text = template.render(instruction=row.get("instruction") or "", feedback=feedback)
            return VLMRequest(prompt=text, images=[row["src_frame"], row["tgt_frame"], row["reference"]],
                              schema=template.schema, cache_salt=template.hash)

        replies, usage = self.ask([request(r, None) for r in todo], lambda i, error: request(todo[i], error))
        for r, reply, spent in zip(todo, replies, usage):
            out[r] = self._scored_row(rows[r], reply, spent)
        return [out[r] for r in range(len(rows))]

    def _scored_row(self, row: dict[str, Any], reply: VLMReply | VLMError, usage: VLMUsage) -> dict[str, Any]:
        columns: dict[str, Any] = {"vlm_usage": usage.model_dump()}
        if isinstance(reply, VLMError):
            return self.error_row(row, reply.reason, **columns)
        if reply.parsed is None:
            return self.error_row(row, f"judge_unparseable: {reply.error}", "dropped", **columns)
        answer = reply.parsed
        if not isinstance(answer, REFERENCE_ANSWERS):
            raise TypeError(f"reference score answer parsed as {type(answer).__name__}")
        reasoning = answer.reasoning if isinstance(answer, ReferenceScore) else None
        columns.update(scores={**scores_of(row), REFERENCE_SCORE: float(answer.score)}, reference_reasoning=reasoning)
        if not passes(answer.score, self.threshold, inclusive=True):
            return self.error_row(row, f"reference_score_below_threshold: {answer.score:g} (keep >= {self.threshold:g})",
                                     "dropped", **columns)
        return self.enrich(row, **columns)
