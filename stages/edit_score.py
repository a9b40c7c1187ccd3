"""edit_score: a judge scores each edit 0-10 from source, target and instruction, and the
thresholds keep the good ones (Kiwi-Edit: >= 6 for instruction tuning, > 8 for references).

Judges (`judge=`):
- `editscore`: EditScore (Luo et al. 2025), VIEScore-style: a semantic-consistency prompt sees
  source and edited image ([success, over-editing]), a perceptual-quality prompt sees the edited
  image ([naturalness, artifacts]); overall = sqrt(min(SC) * min(PQ)) on 0-10. The two prompts are
  EditScore's own text, read from the pinned `editscore` package (prompts/editscore.py), and
  `sampling` sets EditScore's decoding (temperature 0.7, top_p 0.9, top_k 20, 512 tokens) on the
  judge. Serve it with vLLM behind `vlm=openai vlm.base_url=...`, or run it with `vlm=local`.
- `vlm`: any VLM with the `edit_judge` prompt, one answer holding the four sub-scores.
- `imvideoedit`: ImVideoEdit's data filter (`edit_filter` prompt): faithfulness to the instruction,
  visual quality and preservation of what the instruction does not touch, each 0-10, combined by
  `criteria_combine` (min by default, ours: the paper does not say) and kept at 6 or more.

A video is judged on frame pairs sampled at `fps` per second of the source clip (Kiwi-Edit: 2),
at most `max_frames` of them, aggregated by `aggregate`. `passes` > 1 asks each question several
times and averages (EditScore's Avg@N; needs a temperature > 0). An answer that is not the JSON
asked for is dropped as `judge_unparseable`: never a made-up score (EditScore's own parser falls
back to a random or a mid-range score).
Categories outside `categories` are dropped before any request is paid for. `per_group_cap`
keeps at most N samples per (category, dataset) after scoring (RVEDiT's 10,000 clips per
category per dataset), chosen by a seeded hash so reruns pick the same ones.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.backends.vlm import VLMConfig, VLMReply, VLMRequest, VLMUsage
from curation.core import layout, storage
from curation.core.schema import scores_of
from curation.core.stage import Row, Threshold, failure_reason
from curation.media.edit_media import image_pair_as_is, pair_frame_indices, read_edit_frames
from curation.media.jpeg import encode_jpeg
from curation.prompts.editscore import EditScorePrompt, editscore_prompts
from curation.prompts.judges import (
    EDIT_SCORE,
    EditFilterJudgement,
    EditJudgement,
    EditScorePQ,
    EditScoreSC,
    aggregate,
    editscore_subscores,
    filter_subscores,
    judgement_subscores,
    passes,
)
from curation.prompts.templates import PromptTemplate, load_template
from curation.stages.base.vlm import VLMStage, first_failure

CAP_REASON = "stratified_cap"


def rate_frame_indices(n_frames: int, video_fps: float, rate: float, cap: int) -> list[int]:
    """Frame indices sampled `rate` times per second over `n_frames` frames of a `video_fps` clip:
    the frame shown at t = 0, 1/rate, 2/rate, ... (so frame 0 is always in). More than `cap` of
    them: `cap` spread evenly over the clip instead (a lower rate, still uniform)."""
    if video_fps <= 0 or rate <= 0:
        raise ValueError(f"fps must be positive: video {video_fps}, sampling {rate}")
    indices = []
    while (index := int(len(indices) * video_fps / rate)) < n_frames:
        indices.append(index)
    return indices if len(indices) <= cap else pair_frame_indices(n_frames, n_frames, cap)


class JudgeSampling(BaseModel):
    """The judge's decoding for `judge=editscore`, set on `vlm` (None keeps the vlm's value)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, description="EditScore: 0.7")
    top_p: float | None = Field(None, gt=0, le=1, description="EditScore: 0.9")
    top_k: int | None = Field(None, ge=1, description="EditScore: 20 (not an api.openai.com field: null it for GPT judges)")
    max_tokens: int | None = Field(None, ge=1, description="EditScore: 512")


class FrameJudgement(BaseModel):
    frame: int = Field(description="frame index judged (0 for images)")
    scores: dict[str, float] = Field(description="sub-scores and overall (edit_score) on 0-10, mean over passes")
    reasoning: str | None = Field(None, description="the judge's reasoning (first pass; SC then PQ for EditScore)")


class EditScoreColumns(BaseModel):
    scores: dict[str, float] | None = Field(None, description="name -> score; edit_score adds edit_score, edit_success, "
                                                              "over_editing, naturalness, artifacts (0-10)")
    edit_judgements: list[FrameJudgement] | None = Field(None, description="per judged frame pair: sub-scores and reasoning")
    vlm_usage: VLMUsage | None = Field(None, description="judge requests, cache hits, tokens and estimated USD spent on this sample")


class EditScore(VLMStage):
    """Judge each edit 0-10 (EditScore or a VLM judge) and keep those above the threshold."""

    name: ClassVar[str] = "edit_score"
    version: ClassVar[str] = "2"  # 2: EditScore's own prompts and decoding, frames sampled at `fps`
    Columns: ClassVar[type[BaseModel]] = EditScoreColumns

    judge: Literal["editscore", "vlm", "imvideoedit"] = Field(
        description="editscore: EditScore's SC + PQ prompts; vlm: the edit_judge prompt; imvideoedit: ImVideoEdit's three "
        "filter criteria (the edit_filter prompt)")
    criteria_combine: Literal["min", "mean"] = Field(
        "min", description="judge=imvideoedit: how its three criteria make the overall edit_score (min: every one must pass)")
    sampling: JudgeSampling = Field(default_factory=JudgeSampling,
                                    description="judge=editscore: EditScore's decoding, set on `vlm` (null keys keep the vlm's)")
    fps: float = Field(gt=0, description="videos: frame pairs judged per second of the clip (Kiwi-Edit: 2)")
    max_frames: int = Field(ge=1, description="videos: at most this many frame pairs per edit, spread evenly when the rate gives more")
    aggregate: Literal["mean", "min"] = Field(description="how the frame pairs' scores combine into the edit's")
    passes: int = Field(ge=1, description="times each question is asked; scores are averaged (EditScore Avg@N)")
    threshold: float = Field(ge=0, le=10, description="keep edits scoring at least (inclusive) / above (not inclusive) this")
    inclusive: bool = Field(description="true: keep score >= threshold; false: keep score > threshold")
    categories: list[str] | None = Field(description="keep only these taxonomy categories (null: all); others are dropped unjudged")
    per_group_cap: int | None = Field(None, ge=1, description="keep at most this many per (category, dataset) after scoring; null: no cap")
    seed: int = Field(0, description="seed of the per-group choice (a hash of seed and sample id)")
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG quality of the frames sent to the judge")
    max_pixels: int = Field(1 << 26, gt=0, description="image-bomb guard for source/target images")

    def required_modules(self) -> dict[str, str]:
        return {"editscore": "pip install --no-deps 'editscore==0.2'"} if self.judge == "editscore" else {}

    @model_validator(mode="after")
    def _judge_sampling(self) -> EditScore:
        """judge=editscore decodes as EditScore does: `sampling` goes onto `vlm` here, once, so
        the requests, the cache key, `models()` and `_run.json` all see the same settings."""
        update = {k: v for k, v in self.sampling.model_dump().items() if v is not None}
        if self.judge == "editscore" and update:
            # model_validate, not model_copy: the merged settings are checked (e.g. extra_body's backend).
            self.vlm = VLMConfig.model_validate({**self.vlm.model_dump(), **update})
        return self

    def templates(self) -> list[PromptTemplate | EditScorePrompt]:
        if self.judge == "editscore":
            return list(editscore_prompts())
        return [load_template("edit_filter" if self.judge == "imvideoedit" else "edit_judge")]

    def thresholds(self) -> list[Threshold]:
        return [Threshold(score=EDIT_SCORE, value=self.threshold, setting="threshold")]

    # ---- work ------------------------------------------------------------------------------
    def process_batch(self, rows: list[Row]) -> list[Row]:
        out: dict[int, dict[str, Any]] = {}
        judged: dict[int, list[tuple[int, bytes, bytes]]] = {}  # row -> (frame, source JPEG, target JPEG)
        for r, row in enumerate(rows):
            category = row.get("category") or "other"
            if self.categories is not None and category not in self.categories:
                out[r] = self.error_row(row, f"category_excluded: {category}", "dropped")
                continue
            try:
                judged[r] = self._frames(row)
            except Exception as e:  # noqa: BLE001 - a bad sample must not stop the run
                out[r] = self.error_row(row, failure_reason(e))

        # Every question of every sample in the batch goes out at once.
        questions = [(r, f, p, q) for r, pairs in judged.items() for f in range(len(pairs))
                     for p in range(self.passes) for q in range(len(self.templates()))]
        replies, usage = self.ask([self._request(rows[r], judged[r][f], p, q, None) for r, f, p, q in questions],
                                  lambda i, error: self._request(rows[questions[i][0]], judged[questions[i][0]][questions[i][1]],
                                                                 questions[i][2], questions[i][3], error))
        by_row: dict[int, list[int]] = defaultdict(list)
        for i, (r, *_rest) in enumerate(questions):
            by_row[r].append(i)
        for r in judged:
            idx = by_row[r]
            spent = sum((usage[i] for i in idx), VLMUsage())
            out[r] = self._judged_row(rows[r], judged[r], [questions[i] for i in idx], [replies[i] for i in idx], spent)
        ordered = [out[r] for r in range(len(rows))]
        return ordered

    def _frames(self, row: dict[str, Any]) -> list[tuple[int, bytes, bytes]]:
        is_video = row.get("edit_kind", row["kind"]) == "triplet"
        indices = [0]
        if is_video:
            if not row.get("fps"):
                raise ValueError("video_fps_unknown: the source has no fps to sample frames at (run ingest)")
            n = min(row.get("num_frames") or 1, row.get("target_num_frames") or 1)
            indices = rate_frame_indices(n, row["fps"], self.fps, self.max_frames)
        as_is = None if is_video else image_pair_as_is(row["source_uri"], row["target_uri"], self.vlm.image_max_side,
                                                       self.max_pixels)
        if as_is is not None:
            return [(0, *as_is)]  # no decode and re-encode: the files go as they are
        pairs = read_edit_frames(row["source_uri"], row["target_uri"], indices, is_video=is_video, max_pixels=self.max_pixels)
        return [(i, encode_jpeg(src, self.jpeg_quality), encode_jpeg(tgt, self.jpeg_quality))
                for i, (src, tgt) in zip(indices, pairs)]

    def _request(self, row: dict[str, Any], pair: tuple[int, bytes, bytes], pass_index: int, question: int,
                 feedback: str | None) -> VLMRequest:
        template = self.templates()[question]
        _, source, target = pair
        images = [target] if template.schema is EditScorePQ else [source, target]  # PQ: the edited image alone
        text = template.render(instruction=row.get("instruction") or "", category=row.get("category"),
                               is_video=row.get("edit_kind", row["kind"]) == "triplet", feedback=feedback,
                               edit_prompt=row.get("edit_prompt"))
        # The pass number is part of the cache key: repeated passes must not replay one answer.
        salt = f"{template.hash}:pass{pass_index}" if self.passes > 1 else template.hash
        # EditScore's models answer with JSON they were trained to write, which may come with text
        # around it: take the object out (its parser's first step; none of its fallbacks).
        editscore = self.judge == "editscore"
        return VLMRequest(prompt=text, images=images, schema=template.schema, cache_salt=salt,
                          json_in_text=editscore, images_first=editscore)

    def _judged_row(self, row: dict[str, Any], pairs: list[tuple[int, bytes, bytes]], questions: list[tuple[int, int, int, int]],
                    replies: list[Any], usage: VLMUsage) -> dict[str, Any]:
        columns: dict[str, Any] = {"vlm_usage": usage.model_dump()}
        failure = first_failure(replies)
        if failure:  # transport or budget: retryable, so an error, not a drop
            return self.error_row(row, failure, **columns)
        invalid = next((r.error for r in replies if isinstance(r, VLMReply) and r.parsed is None), None)
        if invalid:
            return self.error_row(row, f"judge_unparseable: {invalid}", "dropped", **columns)
        answers = {(f, p, q): reply.parsed for (_, f, p, q), reply in zip(questions, replies)}
        judgements = []
        for f, (frame, _, _) in enumerate(pairs):
            per_pass = [self._subscores([answers[(f, p, q)] for q in range(len(self.templates()))]) for p in range(self.passes)]
            scores = {name: aggregate([s[name] for s in per_pass], "mean") for name in per_pass[0]}
            reasoning = " | ".join(answers[(f, 0, q)].reasoning for q in range(len(self.templates())))
            judgements.append(FrameJudgement(frame=frame, scores=scores, reasoning=reasoning))
        combined = {name: aggregate([j.scores[name] for j in judgements], self.aggregate) for name in judgements[0].scores}
        columns.update(scores={**scores_of(row), **combined}, edit_judgements=[j.model_dump() for j in judgements])
        score = combined[EDIT_SCORE]
        if not passes(score, self.threshold, self.inclusive):
            keep = ">=" if self.inclusive else ">"
            return self.error_row(row, f"edit_score_below_threshold: {score:.2f} (keep {keep} {self.threshold:g})", "dropped", **columns)
        return self.enrich(row, **columns)

    def _subscores(self, answers: list[BaseModel]) -> dict[str, float]:
        match answers:
            case [EditScoreSC() as sc, EditScorePQ() as pq]:
                return editscore_subscores(sc, pq)
            case [EditJudgement() as judgement]:
                return judgement_subscores(judgement)
            case [EditFilterJudgement() as judgement]:
                return filter_subscores(judgement, self.criteria_combine)
        raise TypeError(f"judge {self.judge}: unexpected answers {[type(a).__name__ for a in answers]}")

    # ---- stratified cap (needs every row: runs on the driver) ------------------------------
    def finalize(self, stage_dir: str) -> None:
        """Keep at most `per_group_cap` kept samples per (category, dataset): the ones with the
        smallest hash of (seed, sample id), a uniform choice that reruns repeat exactly. Rows the
        cap dropped earlier are candidates again, so the choice never depends on run history (a
        rerun without a cap keeps them all)."""
        parts = layout.manifest_parts(stage_dir)
        groups: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        capped_before = False
        for part in parts:
            t = storage.read_table(part, columns=["sample_id", "status", "reason", "category", "dataset"])
            for sid, status, reason, category, dataset in zip(*(t.column(c).to_pylist() if c in t.column_names
                                                                else [None] * t.num_rows for c in
                                                                ("sample_id", "status", "reason", "category", "dataset"))):
                capped = status == "dropped" and (reason or "").startswith(CAP_REASON)
                capped_before |= capped
                if status == "ok" or capped:
                    groups[(category or "other", dataset or "")].append((self._rank(sid), sid))
        if self.per_group_cap is None and not capped_before:
            return
        over: dict[str, str] = {}
        if self.per_group_cap is not None:
            for (category, dataset), members in groups.items():
                for _, sid in sorted(members)[self.per_group_cap:]:
                    over[sid] = f"{CAP_REASON}: more than {self.per_group_cap} in category {category} of dataset {dataset or '?'}"
        for part in parts:
            table = storage.read_table(part)
            ids = table.column("sample_id").to_pylist()
            status, reason = table.column("status").to_pylist(), table.column("reason").to_pylist()
            changed = False
            for i, sid in enumerate(ids):
                capped = (reason[i] or "").startswith(CAP_REASON)
                if sid in over and status[i] == "ok":
                    status[i], reason[i], changed = "dropped", over[sid], True
                elif capped and sid not in over:
                    status[i], reason[i], changed = "ok", None, True
            if changed:
                table = table.set_column(table.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
                table = table.set_column(table.schema.get_field_index("reason"), "reason", pa.array(reason, pa.string()))
                storage.write_table_atomic(table, part)

    def _rank(self, sample_id: str) -> str:
        return hashlib.sha1(f"{self.seed}:{sample_id}".encode()).hexdigest()

