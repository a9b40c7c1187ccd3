"""The `score_reference` stage against a loopback OpenAI-compatible judge (real `openai` client,
real HTTP): the >= 7 gate at its boundary, scores merged with edit_score's, malformed answers,
and quads that carry no reference. The judge answers as Kiwi-Edit's prompt 3 asks
(reference_score.v2, the default: {"score": integer 1-10}); v1's 1-10 number with reasoning is
read when v1 is selected."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from curation.backends.vlm import VLMConfig
from curation.core import media_store
from curation.core.config import build_stage
from curation.core.schema import arrow_schema
from curation.media.jpeg import encode_jpeg
from curation.sources.edit_datasets import EditSourceRow
from curation.stages.edit_score import EditScoreColumns
from curation.stages.ground_edit import GroundEditColumns
from curation.stages.reference import ReferenceColumns
from curation.stages.score_reference import ScoreReference

from tests.fixtures.media import EXAMPLES
from tests.fixtures.vlm_servers import ok, ok_from_prompt, openai_server, raw_text

# What the reference stage writes: an edit row judged, grounded and given a reference.
SCHEMA = media_store.inlined_schema(arrow_schema(EditSourceRow, EditScoreColumns, GroundEditColumns,
                                                 ReferenceColumns))  # media as bytes: no run
EDIT_SCORES = {"edit_score": 8.5, "edit_success": 9.0, "over_editing": 9.5, "naturalness": 8.5, "artifacts": 9.0}


def png(image: np.ndarray) -> bytes:
    encoded, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert encoded
    return data.tobytes()


def quad_rows(instructions: list[str]) -> list[dict]:
    """One quad per instruction: a distinct 96 px crop of the cat photo as source, the crop with a
    red disc as target, and the disc alone on white as reference."""
    cat = cv2.cvtColor(cv2.imread(str(EXAMPLES / "skimage" / "chelsea.png")), cv2.COLOR_BGR2RGB)
    rows = []
    for i, instruction in enumerate(instructions):
        source = np.ascontiguousarray(cat[24 * i:24 * i + 96, 32 * i:32 * i + 96])
        target, reference = source.copy(), np.full_like(source, 255)
        for image in (target, reference):
            cv2.circle(image, (48, 48), 16 + 4 * i, (220, 30, 30), -1)
        rows.append(dict(sample_id=f"quad{i}", parent_ids=[f"edit{i}"], kind="quad", edit_kind="pair",
                         source_uri=f"src{i}.png", target_uri=f"tgt{i}.png", instruction=instruction,
                         category="local_add", dataset="ds", status="ok", stage="reference", stage_version="1",
                         scores=EDIT_SCORES, src_frame=encode_jpeg(source, 90), tgt_frame=encode_jpeg(target, 90),
                         reference=png(reference)))
    return rows


def vlm(server, tmp_path, **overrides) -> VLMConfig:
    fields = dict(backend="openai", model="judge", base_url=server.url, max_retries=1, backoff_initial_s=0.01,
                  backoff_max_s=0.05, timeout_s=5, cache_dir=str(tmp_path / "cache"))
    return VLMConfig(**{**fields, **overrides})


def score_reference(rows: list[dict], cfg: VLMConfig, threshold: float = 7, **fields) -> list[dict]:
    stage = ScoreReference(vlm=cfg, threshold=threshold, **fields)
    return stage(pa.Table.from_pylist(rows, schema=SCHEMA)).to_pylist()


def rating(score: int) -> dict:
    """A reference_score.v2 answer: the score alone."""
    return {"score": score}


def rating_v1(score: float) -> dict:
    return {"reasoning": f"Rated {score:g}.", "score": score}


def test_references_scoring_7_are_kept_and_6_dropped(tmp_path):
    scripted = {"Add a red disc.": 6, "Add a big red disc.": 7}

    def answer(prompt: str) -> dict:
        return rating(next(score for text, score in scripted.items() if f"instruction: {text}\n" in prompt))

    with openai_server(default=ok_from_prompt(answer)) as server:
        low, high = score_reference(quad_rows(list(scripted)), vlm(server, tmp_path))
        images = [sum(p["type"] == "image_url" for p in r.body["messages"][0]["content"]) for r in server.requests]
        prompt = server.prompt_of(server.requests[0].body)
    assert images == [3, 3]  # source, edited, reference
    assert prompt.startswith("You are an expert at evaluating image edits.") and '{"score": <integer from 1 to 10>}' in prompt
    assert low["status"] == "dropped" and low["reason"] == "reference_score_below_threshold: 6 (keep >= 7)"
    assert high["status"] == "ok" and high["stage"] == "score_reference" and high["reason"] is None
    assert dict(high["scores"])["reference_score"] == 7.0
    assert high["reference_reasoning"] is None  # the paper's answer carries no reasoning
    assert high["vlm_usage"]["requests"] == 1


def test_the_v1_prompt_is_selectable_and_its_float_scores_are_gated_by_the_same_threshold(tmp_path):
    scripted = {"Add a red disc.": 6.99, "Add a big red disc.": 7.0}

    def answer(prompt: str) -> dict:
        return rating_v1(next(score for text, score in scripted.items() if f"instruction: {text}\n" in prompt))

    with openai_server(default=ok_from_prompt(answer)) as server:
        low, high = score_reference(quad_rows(list(scripted)), vlm(server, tmp_path), template="reference_score.v1")
        prompt = server.prompt_of(server.requests[0].body)
    assert prompt.startswith("You check a reference image")
    assert low["status"] == "dropped" and low["reason"] == "reference_score_below_threshold: 6.99 (keep >= 7)"
    assert high["status"] == "ok" and high["reference_reasoning"] == "Rated 7."


@pytest.mark.parametrize("answer", ['{"score": 7.5}', '{"score": 0}', '{"score": 11}', '{"reasoning": "Fine.", "score": 8}'])
def test_v2_takes_only_an_integer_1_to_10_and_nothing_else(tmp_path, answer):
    with openai_server(default=raw_text(answer)) as server:
        (row,) = score_reference(quad_rows(["Add a red disc."]), vlm(server, tmp_path))
        assert len(server.requests) == 2  # asked again once with the error
    assert row["status"] == "dropped" and row["reason"].startswith("judge_unparseable: schema_mismatch"), row["reason"]


@pytest.mark.parametrize("template, message", [("reference_score.v9", "unknown prompt template"),
                                               ("ground_edit_area.v2", "is not a reference score")])
def test_an_unknown_or_foreign_template_fails_when_the_stage_is_built(tmp_path, template, message):
    with pytest.raises(ValidationError, match=message):
        ScoreReference(vlm=VLMConfig(backend="openai", model="judge"), threshold=7, template=template)


def test_the_default_prompt_is_v2_and_the_packaged_threshold_is_7():
    stage = build_stage("score_reference", overrides=["vlm=openai", "vlm.model=judge", "vlm.api_key_env=null"])
    assert [t.file for t in stage.templates()] == ["reference_score.v2.j2"]
    assert stage.threshold == 7  # ours (Kiwi-Edit publishes no cut-off); see score_reference.yaml


def test_reference_score_is_merged_into_the_edit_scores(tmp_path):
    with openai_server(default=ok(rating(9))) as server:
        (row,) = score_reference(quad_rows(["Add a red disc."]), vlm(server, tmp_path))
    assert dict(row["scores"]) == {**EDIT_SCORES, "reference_score": 9.0}


def test_a_malformed_answer_is_asked_again_and_a_second_one_drops_the_quad(tmp_path):
    with openai_server(default=raw_text('{"score": 11}')) as server:  # above 1-10
        (row,) = score_reference(quad_rows(["Add a red disc."]), vlm(server, tmp_path))
        retry = server.prompt_of(server.requests[1].body)
        assert len(server.requests) == 2
    assert "Your previous answer could not be used: schema_mismatch" in retry
    assert row["status"] == "dropped" and row["reason"].startswith("judge_unparseable: schema_mismatch")
    assert dict(row["scores"]) == EDIT_SCORES  # nothing added


@pytest.mark.parametrize("missing", ["reference", "src_frame", "tgt_frame"])
def test_a_quad_without_its_images_is_an_error_and_sends_nothing(tmp_path, missing):
    rows = quad_rows(["Add a red disc.", "Add a big red disc."])
    rows[0][missing] = None
    with openai_server(default=ok(rating(9))) as server:
        out = score_reference(rows, vlm(server, tmp_path))
        assert len(server.requests) == 1
    assert out[0]["status"] == "error" and out[0]["reason"].startswith("no_reference")
    assert out[1]["status"] == "ok"
