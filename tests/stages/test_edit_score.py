"""The `edit_score` stage against a loopback OpenAI-compatible judge (real `openai` client, real
HTTP), on real photo pairs and H.264 clip triplets: both judges' scores, the threshold at its
boundaries, category gating, malformed answers, HTTP failures, video frame aggregation, repeated
passes and, through the Ray runner, the stratified per-(category, dataset) cap."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

from curation.backends.vlm import VLMConfig
from curation.core import storage
from curation.core.config import compose
from curation.core.runner import run
from curation.core.schema import arrow_schema
from curation.media.edit_media import encode_h264
from curation.media.probe import probe_video
from curation.prompts.judges import EDIT_SCORE, SUB_SCORES
from curation.sources.edit_datasets import EditSourceRow
from curation.stages.edit_score import EditScore
from curation.stages.ingest import IngestColumns

from tests.fixtures.media import EXAMPLES, video_path
from tests.fixtures.vlm_servers import OpenAIServer, http_error, ok, ok_from_prompt, openai_server, raw_text

SCHEMA = arrow_schema(EditSourceRow, IngestColumns)  # what ingest writes for an edit dataset
STAGE = dict(judge="vlm", fps=2.0, max_frames=16, aggregate="mean", passes=1, threshold=6.0, inclusive=True, categories=None)
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
CROP = 96
CLIP_FRAMES = 12
CLIP_FPS = 12.5


# --------------------------------------------------------------------------------------------
# Media and rows
# --------------------------------------------------------------------------------------------


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def edit_row(index: int, kind: str, source: Path, target: Path, instruction: str, *, category: str = "local_change",
             dataset: str = "ds", frames: int = 1, fps: float | None = None) -> dict:
    return dict(sample_id=f"edit{index}", parent_ids=[f"source{index}"], kind=kind, edit_kind=kind,
                source_uri=str(source), target_uri=str(target), instruction=instruction, category=category,
                dataset=dataset, licence="unknown", num_frames=frames, target_num_frames=frames, fps=fps, target_fps=fps, status="ok",
                stage="ingest", stage_version="1")


def pair_rows(tmp_path: Path, instructions: list[str], **fields) -> list[dict]:
    """One image pair per instruction: a distinct 96 px crop of a bundled photo, and the same crop
    with a red disc painted on it (so no two samples share a request or a cache entry)."""
    photos = [_rgb(EXAMPLES / "skimage" / name) for name in PHOTOS]
    rows = []
    for i, instruction in enumerate(instructions):
        offset = 24 * (i // len(photos))
        source = np.ascontiguousarray(photos[i % len(photos)][offset:offset + CROP, offset:offset + CROP])
        target = source.copy()
        cv2.circle(target, (CROP // 2, CROP // 2), CROP // 4, (220, 30, 30), -1)
        _save(tmp_path / "media" / f"src{i}.png", source)
        _save(tmp_path / "media" / f"tgt{i}.png", target)
        rows.append(edit_row(i, "pair", tmp_path / "media" / f"src{i}.png", tmp_path / "media" / f"tgt{i}.png",
                             instruction, **fields))
    return rows


def marker_level(frame: int) -> int:
    """Grey level of the corner block that tells the scripted judge which source frame it sees."""
    return 20 * frame


def triplet_row(tmp_path: Path, instruction: str) -> dict:
    """A 12-frame clip of the bundled car video and the same clip with a region tinted red. Each
    source frame carries its index as the grey level of a corner block (consecutive frames of the
    car clip are nearly identical, and the judge must tell them apart)."""
    cap = cv2.VideoCapture(str(EXAMPLES / "intel-sample-videos" / "car-detection.mp4"))
    source = []
    for index in range(CLIP_FRAMES):
        read, frame = cap.read()
        assert read
        frame = cv2.cvtColor(cv2.resize(frame, (160, 96), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        frame[:32, :32] = marker_level(index)
        source.append(frame)
    cap.release()
    target = [f.copy() for f in source]
    for f in target:
        f[40:90, 60:140, 0] = 230
    (tmp_path / "media").mkdir(parents=True, exist_ok=True)
    (tmp_path / "media" / "clip_src.mp4").write_bytes(encode_h264(source, CLIP_FPS))
    (tmp_path / "media" / "clip_tgt.mp4").write_bytes(encode_h264(target, CLIP_FPS))
    return edit_row(0, "triplet", tmp_path / "media" / "clip_src.mp4", tmp_path / "media" / "clip_tgt.mp4",
                    instruction, frames=CLIP_FRAMES, fps=CLIP_FPS)


# --------------------------------------------------------------------------------------------
# The judge and the stage
# --------------------------------------------------------------------------------------------


def judgement(value: float, reasoning: str = "Scripted.") -> dict:
    """An EditJudgement with all four sub-scores at `value`: its overall is exactly `value`."""
    return {"reasoning": reasoning, "edit_success": value, "over_editing": value, "naturalness": value,
            "artifacts": value}


def judge_by_instruction(overall: dict[str, float]):
    """Answer each edit_judge prompt with the overall scripted for the instruction it names."""
    def answer(prompt: str) -> dict:
        return judgement(next(value for text, value in overall.items() if text in prompt))
    return answer


def vlm(server, tmp_path: Path, **overrides) -> VLMConfig:
    fields = dict(backend="openai", model="judge", base_url=server.url, max_retries=2, backoff_initial_s=0.01,
                  backoff_max_s=0.05, timeout_s=5, cache_dir=str(tmp_path / "cache"))
    return VLMConfig(**{**fields, **overrides})


def edit_score(rows: list[dict], cfg: VLMConfig, **fields) -> list[dict]:
    stage = EditScore(vlm=cfg, **{**STAGE, **fields})
    return stage(pa.Table.from_pylist(rows, schema=SCHEMA)).to_pylist()


def prompts(server) -> list[str]:
    return [server.prompt_of(r.body) for r in server.requests]


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def test_editscore_judge_stores_its_four_subscores_and_the_overall(tmp_path):
    def answer(prompt: str) -> dict:
        if "image naturalness" in prompt:  # perceptual quality: the edited image alone
            return {"reasoning": "Slight seam.", "score": [25, 17.5]}
        return {"reasoning": "Disc added.", "score": [20, 22.5]}

    with openai_server(default=ok_from_prompt(answer)) as server:
        (row,) = edit_score(pair_rows(tmp_path, ["Add a red disc."]), vlm(server, tmp_path), judge="editscore")
        assert len(server.requests) == 2  # SC and PQ
        sc, pq = server.requests[0].body["messages"][0]["content"], server.requests[1].body["messages"][0]["content"]
    images = sorted(sum(p["type"] == "image_url" for p in content) for content in (sc, pq))
    assert images == [1, 2]  # PQ sees the edited image only
    assert row["status"] == "ok" and row["stage"] == "edit_score"
    # SC 20, 22.5 and PQ 25, 17.5 on 0-25 -> 8, 9, 10, 7 on 0-10; overall sqrt(min(8, 9) * min(10, 7)).
    assert dict(row["scores"]) == pytest.approx(
        {"edit_success": 8, "over_editing": 9, "naturalness": 10, "artifacts": 7, "edit_score": np.sqrt(8 * 7)})
    (frame,) = row["edit_judgements"]
    assert frame["frame"] == 0 and dict(frame["scores"]) == pytest.approx(dict(row["scores"]))
    assert frame["reasoning"] == "Disc added. | Slight seam."
    assert row["vlm_usage"]["requests"] == 2 and row["vlm_usage"]["prompt_tokens"] == 20


def test_vlm_judge_stores_its_subscores_and_the_overall(tmp_path):
    answer = {"reasoning": "Good disc.", "edit_success": 9, "over_editing": 8, "naturalness": 6.5, "artifacts": 8}
    with openai_server(default=ok(answer)) as server:
        (row,) = edit_score(pair_rows(tmp_path, ["Add a red disc."]), vlm(server, tmp_path), judge="vlm")
        (prompt,) = prompts(server)
    assert "Add a red disc." in prompt and "local_change" in prompt  # instruction and category slots
    assert row["status"] == "ok"
    assert dict(row["scores"]) == pytest.approx(
        {"edit_success": 9, "over_editing": 8, "naturalness": 6.5, "artifacts": 8, "edit_score": np.sqrt(8 * 6.5)})
    assert row["edit_judgements"][0]["reasoning"] == "Good disc."
    assert row["vlm_usage"]["requests"] == 1 and row["vlm_usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("combine, overall, status", [("min", 5.0, "dropped"), ("mean", 7.0, "ok")])
def test_imvideoedit_judge_scores_its_three_criteria_and_combines_them(tmp_path, combine, overall, status):
    # ImVideoEdit's filter: faithfulness, visual quality, preservation; kept at >= 6 (STAGE's threshold).
    answer = {"reasoning": "Disc added; the table edge moved.", "faithfulness": 9, "visual_quality": 7, "preservation": 5}
    rows = [dict(pair_rows(tmp_path, ["Add a red disc."])[0], edit_prompt="A grey table with a red disc in its middle.")]
    with openai_server(default=ok(answer)) as server:
        stage = EditScore(vlm=vlm(server, tmp_path), **{**STAGE, "judge": "imvideoedit", "criteria_combine": combine})
        table = pa.Table.from_pylist(rows, schema=SCHEMA.append(pa.field("edit_prompt", pa.string())))  # synthesis rows carry it
        (row,) = stage(table).to_pylist()
        (prompt,) = prompts(server)
        (request,) = server.requests
    assert "Add a red disc." in prompt and "A grey table with a red disc in its middle." in prompt  # instruction, result
    assert len([p for p in request.body["messages"][0]["content"] if p["type"] == "image_url"]) == 2  # source, edited
    assert dict(row["scores"]) == pytest.approx(
        {"faithfulness": 9, "visual_quality": 7, "preservation": 5, "edit_score": overall})
    assert row["status"] == status
    if status == "dropped":
        assert row["reason"] == "edit_score_below_threshold: 5.00 (keep >= 6)"


# --------------------------------------------------------------------------------------------
# Threshold
# --------------------------------------------------------------------------------------------

BOUNDARY = {f"Add a red disc (the judge says {score:g}).": score for score in (5.99, 6.0, 8.0, 8.01)}


@pytest.mark.parametrize("threshold, inclusive, kept, reason", [
    (6.0, True, {6.0, 8.0, 8.01}, {5.99: "edit_score_below_threshold: 5.99 (keep >= 6)"}),
    (8.0, False, {8.01}, {8.0: "edit_score_below_threshold: 8.00 (keep > 8)"}),
])
def test_threshold_boundaries(tmp_path, threshold, inclusive, kept, reason):
    with openai_server(default=ok_from_prompt(judge_by_instruction(BOUNDARY))) as server:
        out = edit_score(pair_rows(tmp_path, list(BOUNDARY)), vlm(server, tmp_path), threshold=threshold,
                         inclusive=inclusive)
    by_score = {BOUNDARY[r["instruction"]]: r for r in out}
    assert {s for s, r in by_score.items() if r["status"] == "ok"} == kept
    for score, row in by_score.items():
        assert dict(row["scores"])["edit_score"] == pytest.approx(score)  # dropped rows keep their scores
        if score in reason:
            assert row["status"] == "dropped" and row["reason"] == reason[score]


@pytest.mark.parametrize("inclusive, status", [(True, "ok"), (False, "dropped")])
def test_editscore_15_of_25_everywhere_is_exactly_6(tmp_path, inclusive, status):
    with openai_server(default=ok({"reasoning": "Middling.", "score": [15, 15]})) as server:
        (row,) = edit_score(pair_rows(tmp_path, ["Add a red disc."]), vlm(server, tmp_path), judge="editscore",
                            threshold=6.0, inclusive=inclusive)
    assert dict(row["scores"])["edit_score"] == 6.0
    assert row["status"] == status


# --------------------------------------------------------------------------------------------
# Categories
# --------------------------------------------------------------------------------------------


def test_out_of_category_edits_are_dropped_without_a_request(tmp_path):
    rows = pair_rows(tmp_path, ["Add a red disc.", "Make it sepia.", "Do something odd."])
    rows[1]["category"], rows[2]["category"] = "global_style", None
    with openai_server(default=ok(judgement(8))) as server:
        out = edit_score(rows, vlm(server, tmp_path), categories=["local_change", "local_add"])
        sent = prompts(server)
    assert len(sent) == 1 and "Add a red disc." in sent[0]
    assert out[0]["status"] == "ok"
    assert out[1]["status"] == "dropped" and out[1]["reason"] == "category_excluded: global_style"
    assert out[2]["status"] == "dropped" and out[2]["reason"] == "category_excluded: other"
    assert out[1]["scores"] is None and out[1]["vlm_usage"] is None


def test_unreadable_media_is_an_error_without_a_request(tmp_path):
    rows = pair_rows(tmp_path, ["Add a red disc.", "Add a blue disc."])
    rows[1]["target_uri"] = str(tmp_path / "media" / "missing.png")
    with openai_server(default=ok(judgement(8))) as server:
        out = edit_score(rows, vlm(server, tmp_path))
        assert len(server.requests) == 1
    assert out[0]["status"] == "ok"
    assert out[1]["status"] == "error" and "target" in out[1]["reason"]


# --------------------------------------------------------------------------------------------
# Malformed answers and HTTP failures
# --------------------------------------------------------------------------------------------


def test_a_schema_breaking_answer_is_asked_again_with_the_error(tmp_path):
    with openai_server(default=ok(judgement(7))) as server:
        server.enqueue(raw_text(json.dumps(judgement(11))))  # above the 0-10 range
        (row,) = edit_score(pair_rows(tmp_path, ["Add a red disc."]), vlm(server, tmp_path))
        first, retry = prompts(server)
    assert "previous answer could not be used" not in first
    assert "Your previous answer could not be used: schema_mismatch" in retry and "edit_success" in retry
    assert row["status"] == "ok" and dict(row["scores"])["edit_score"] == 7
    assert row["vlm_usage"]["requests"] == 2  # both answers are paid for


def test_two_unparseable_answers_drop_the_edit(tmp_path):
    with openai_server(default=raw_text("The edit looks fine to me.")) as server:
        (row,) = edit_score(pair_rows(tmp_path, ["Add a red disc."]), vlm(server, tmp_path))
        _first, retry = prompts(server)
    assert "Your previous answer could not be used: invalid_json" in retry
    assert row["status"] == "dropped" and row["reason"].startswith("judge_unparseable: invalid_json")


def test_429_with_retry_after_then_success_is_judged_normally(tmp_path):
    with openai_server(default=ok(judgement(7))) as server:
        server.enqueue(http_error(429, retry_after=0.1))
        (row,) = edit_score(pair_rows(tmp_path, ["Add a red disc."]), vlm(server, tmp_path))
        assert len(server.requests) == 2
    assert row["status"] == "ok" and dict(row["scores"])["edit_score"] == 7
    assert row["vlm_usage"]["retries"] == 1 and row["vlm_usage"]["requests"] == 2


def test_500_until_retries_run_out_is_an_error(tmp_path):
    with openai_server(default=http_error(500)) as server:
        (row,) = edit_score(pair_rows(tmp_path, ["Add a red disc."]), vlm(server, tmp_path, max_retries=1))
        assert len(server.requests) == 2  # first try + one retry
    assert row["status"] == "error" and row["reason"].startswith("vlm_http_500")
    assert row["scores"] is None and row["vlm_usage"]["requests"] == 2


# --------------------------------------------------------------------------------------------
# Videos and passes
# --------------------------------------------------------------------------------------------

FRAME_SCORES = {0: 9.0, 4: 7.0, 8: 5.0}  # max_frames=3 over 12 frames judges frames 0, 4 and 8


def judge_by_frame(body_json: str) -> dict:
    """Read the source frame's corner block and answer with that frame's scripted score."""
    first_image = OpenAIServer.image_of(json.loads(body_json))
    grey = cv2.imdecode(np.frombuffer(first_image, np.uint8), cv2.IMREAD_GRAYSCALE)[4:28, 4:28].mean()
    frame = round(grey / marker_level(1))
    return judgement(FRAME_SCORES[frame], reasoning=f"frame {frame}")


@pytest.mark.parametrize("how, overall, status", [("mean", 7.0, "ok"), ("min", 5.0, "dropped")])
def test_video_frame_pairs_are_judged_and_aggregated(tmp_path, how, overall, status):
    with openai_server(default=ok_from_prompt(judge_by_frame)) as server:
        server.prompt_of = json.dumps  # hand the whole request body to the judge
        # 12.5 frames a second sampled 12.5 times a second is every frame: more than 3, so 3 spread evenly.
        (row,) = edit_score([triplet_row(tmp_path, "Paint the car red.")], vlm(server, tmp_path), fps=CLIP_FPS,
                            max_frames=3, aggregate=how)
        assert len(server.requests) == 3
    assert [(j["frame"], dict(j["scores"])["edit_score"], j["reasoning"]) for j in row["edit_judgements"]] == [
        (0, 9.0, "frame 0"), (4, 7.0, "frame 4"), (8, 5.0, "frame 8")]
    assert dict(row["scores"]) == pytest.approx(dict.fromkeys(SUB_SCORES + (EDIT_SCORE,), overall))
    assert row["status"] == status


def test_video_prompt_says_it_is_a_frame_pair(tmp_path):
    with openai_server(default=ok(judgement(8))) as server:
        edit_score([triplet_row(tmp_path, "Paint the car red.")], vlm(server, tmp_path), max_frames=2)
        sent = prompts(server)
    assert len(sent) == 2 and all("frame of the edited video" in p for p in sent)


def test_two_passes_ask_twice_under_different_cache_keys_and_average(tmp_path):
    rows = pair_rows(tmp_path, ["Add a red disc."])
    with openai_server(default=ok(judgement(6))) as server:
        server.enqueue(ok(judgement(8)))  # the two passes get different answers, whichever comes first
        (first,) = edit_score(rows, vlm(server, tmp_path), passes=2)
        assert len(server.requests) == 2
        (again,) = edit_score(rows, vlm(server, tmp_path), passes=2)  # each pass replays its own answer
        assert len(server.requests) == 2
    assert dict(first["scores"])["edit_score"] == dict(again["scores"])["edit_score"] == 7.0
    assert first["vlm_usage"]["requests"] == 2 and again["vlm_usage"]["cache_hits"] == 2


def test_a_real_clip_is_judged_at_two_frames_a_second(tmp_path):
    """The bundled car clip as it is (12.5 fps, 377 frames, 30.16 s), as source and as target: at
    2 fps the judge sees the frame shown at every half second, 0.0 s to 30.0 s."""
    path = video_path("intel-sample-videos/car-detection.mp4")
    info = probe_video(str(path), 1 << 26, scan_packets=100_000)
    row = edit_row(0, "triplet", path, path, "Keep the cars.", frames=info.num_frames, fps=info.fps)
    with openai_server(default=ok(judgement(8))) as server:
        (judged,) = edit_score([row], vlm(server, tmp_path), fps=2.0, max_frames=100)
        assert len(server.requests) == 61  # judge=vlm: one request per frame pair
    frames = [j["frame"] for j in judged["edit_judgements"]]
    times = [frame / info.fps for frame in frames]
    assert len(frames) == math.ceil(info.num_frames / info.fps * 2) == 61
    # Each judged frame is the one on screen at its half second: shown at or before it, less than a frame before.
    assert all(0 <= k / 2 - t < 1 / info.fps for k, t in enumerate(times))
    assert judged["status"] == "ok"


def test_more_frames_than_max_frames_are_spread_evenly_over_the_clip(tmp_path):
    path = video_path("intel-sample-videos/car-detection.mp4")
    info = probe_video(str(path), 1 << 26, scan_packets=100_000)
    row = edit_row(0, "triplet", path, path, "Keep the cars.", frames=info.num_frames, fps=info.fps)
    with openai_server(default=ok(judgement(8))) as server:
        (judged,) = edit_score([row], vlm(server, tmp_path), fps=2.0, max_frames=4)
    assert [j["frame"] for j in judged["edit_judgements"]] == [0, 94, 188, 282]  # 377 // 4 apart


def test_a_video_without_fps_is_an_error_without_a_request(tmp_path):
    row = triplet_row(tmp_path, "Paint the car red.")
    row["fps"] = None
    with openai_server(default=ok(judgement(8))) as server:
        (judged,) = edit_score([row], vlm(server, tmp_path))
        assert not server.requests
    assert judged["status"] == "error" and judged["reason"].startswith("ValueError: video_fps_unknown")


# --------------------------------------------------------------------------------------------
# EditScore's own prompts and decoding (the installed `editscore` package)
# --------------------------------------------------------------------------------------------

EDITSCORE_SAMPLING = dict(temperature=0.7, top_p=0.9, top_k=20, max_tokens=512)


def editscore_prompts_from_the_package() -> tuple[str, str]:
    """EditScore's (SC, PQ) built the way `EditScore.__init__` builds them, from the installed
    package's own `vie_prompts` module (executed alone from its file: importing the package would
    run `editscore/__init__.py`, whose requirements are not installed)."""
    dist = importlib.metadata.distribution("editscore")
    spec = importlib.util.spec_from_file_location("vie_prompts_under_test", dist.locate_file("editscore/vie_prompts.py"))
    vie = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vie)
    score_range = 25
    sc = "\n".join([vie._context_no_delimit_reasoning_first, vie._prompts_0shot_two_image_edit_rule,
                    vie._prompts_0shot_tie_rule_SC.replace("10", str(score_range))])
    pq = "\n".join([vie._context_no_delimit_reasoning_first, vie._prompts_0shot_rule_PQ.replace("10", str(score_range))])
    return sc, pq


def test_editscore_requests_carry_the_package_prompts_and_its_decoding(tmp_path):
    sc_text, pq_text = editscore_prompts_from_the_package()
    extra_body = {"chat_template_kwargs": {"enable_thinking": False}}
    with openai_server(default=ok({"reasoning": "Fine.", "score": [20, 20]})) as server:
        (row,) = edit_score(pair_rows(tmp_path, ["Add a red disc."]), vlm(server, tmp_path, extra_body=extra_body),
                            judge="editscore", sampling=EDITSCORE_SAMPLING)
        bodies = [r.body for r in server.requests]
    assert row["status"] == "ok"
    by_images = {sum(p["type"] == "image_url" for p in b["messages"][0]["content"]): b for b in bodies}
    assert server.prompt_of(by_images[2]) == sc_text.replace("<instruction>", "Add a red disc.")
    assert server.prompt_of(by_images[1]) == pq_text
    assert "From scale 0 to 25" in pq_text and "10" not in pq_text  # the scale really is EditScore's 25
    for body in bodies:
        kinds = [p["type"] for p in body["messages"][0]["content"]]
        assert kinds[-1] == "text" and set(kinds[:-1]) == {"image_url"}  # images first, as EditScore's prepare_input
        assert (body["temperature"], body["top_p"], body["top_k"], body["max_completion_tokens"]) == (0.7, 0.9, 20, 512)
        assert body["chat_template_kwargs"] == {"enable_thinking": False}  # extra_body goes to the top level


def test_editscore_sampling_does_not_touch_the_vlm_judge(tmp_path):
    with openai_server(default=ok(judgement(8))) as server:
        edit_score(pair_rows(tmp_path, ["Add a red disc."]), vlm(server, tmp_path), judge="vlm", sampling=EDITSCORE_SAMPLING)
        (body,) = [r.body for r in server.requests]
    assert body["temperature"] == 0.0 and "top_p" not in body and "top_k" not in body
    assert body["messages"][0]["content"][0]["type"] == "text"  # our judge's prompt leads


def test_editscore_passes_are_averaged(tmp_path):
    """Two passes: SC always 20/25 (8), PQ 25/25 (10) once and 10/25 (4) once. Whichever pass gets
    which PQ answer, the overall is the mean of sqrt(8 * 10) and sqrt(8 * 4) (Avg@2)."""
    pq_answers = iter([[25, 25], [10, 10]])

    def answer(prompt: str) -> dict:
        if "image naturalness" in prompt:
            return {"reasoning": "PQ.", "score": next(pq_answers)}
        return {"reasoning": "SC.", "score": [20, 20]}

    with openai_server(default=ok_from_prompt(answer)) as server:
        (row,) = edit_score(pair_rows(tmp_path, ["Add a red disc."]), vlm(server, tmp_path), judge="editscore",
                            sampling=EDITSCORE_SAMPLING, passes=2)
        assert len(server.requests) == 4  # (SC + PQ) x 2 passes
    scores = dict(row["scores"])
    assert scores["edit_score"] == pytest.approx((math.sqrt(80) + math.sqrt(32)) / 2)
    assert scores["naturalness"] == pytest.approx(7.0) and scores["edit_success"] == pytest.approx(8.0)


def test_editscore_json_inside_prose_is_read(tmp_path):
    answer = 'My evaluation follows.\n{\n"reasoning" : "Disc added.",\n"score" : [20, 20]\n}\nThat is all.'
    with openai_server(default=raw_text(answer)) as server:
        (row,) = edit_score(pair_rows(tmp_path, ["Add a red disc."]), vlm(server, tmp_path), judge="editscore")
    assert row["status"] == "ok" and dict(row["scores"])["edit_score"] == pytest.approx(8.0)


@pytest.mark.parametrize("answer, error", [
    ("The edit is good, I would say 20 and 20.", "invalid_json"),  # EditScore's parser would take these numbers
    ('{"reasoning": "Too good.", "score": [30, 20]}', "schema_mismatch"),  # EditScore would put in half the range
    ('{"reasoning": "One number.", "score": [20]}', "schema_mismatch"),
])
def test_an_unparseable_editscore_answer_is_dropped_never_scored(tmp_path, answer, error):
    with openai_server(default=raw_text(answer)) as server:
        (row,) = edit_score(pair_rows(tmp_path, ["Add a red disc."]), vlm(server, tmp_path), judge="editscore")
        retries = [p for p in prompts(server) if "previous answer could not be used" in p]
    assert len(retries) == 2  # SC and PQ each asked once more, with the error
    assert row["status"] == "dropped" and row["reason"].startswith(f"judge_unparseable: {error}")
    assert row["scores"] is None and row["edit_judgements"] is None


# --------------------------------------------------------------------------------------------
# Stratified cap (through Ray: it needs every row, so it runs in the driver's finalize)
# --------------------------------------------------------------------------------------------

# (category, dataset, overall) per edit: three groups above the threshold, one failed edit.
CAP_EDITS = ([("local_change", "ds_a", 8.0)] * 4 + [("local_change", "ds_a", 3.0)]
             + [("local_change", "ds_b", 8.0)] * 3 + [("global_style", "ds_a", 8.0)])


def write_cap_input(tmp_path: Path) -> tuple[str, dict[str, float]]:
    instructions = [f"Cap test edit {i}." for i in range(len(CAP_EDITS))]
    rows = pair_rows(tmp_path, instructions)
    for row, (category, dataset, _) in zip(rows, CAP_EDITS):
        row.update(category=category, dataset=dataset)
    # Two fragments, each group split across them: the cap must count over the whole manifest.
    for part, chunk in enumerate((rows[0::2], rows[1::2])):
        part_uri = str(tmp_path / "in" / f"part-{part:05d}.parquet")
        storage.write_table_atomic(pa.Table.from_pylist(chunk, schema=SCHEMA), part_uri)
    return str(tmp_path / "in"), {text: score for text, (_, _, score) in zip(instructions, CAP_EDITS)}


@pytest.mark.slow
def test_through_ray_the_per_group_cap_keeps_n_per_category_and_dataset_and_a_rerun_keeps_the_same(tmp_path, ray_local):
    input_dir, scores = write_cap_input(tmp_path)

    def outcome() -> dict[str, tuple[str, str | None]]:
        table = storage.read_table(str(tmp_path / "run" / "01-edit_score"))
        return {r["sample_id"]: (r["status"], r["reason"]) for r in table.to_pylist()}

    with openai_server(default=ok_from_prompt(judge_by_instruction(scores))) as server:
        cfg = compose(["stage=edit_score", f"input={input_dir}", f"output={tmp_path / 'run'}", "vlm=openai",
                       f"vlm.base_url={server.url}", "vlm.model=judge", "vlm.api_key_env=null", "vlm.max_retries=1",
                       "vlm.backoff_initial_s=0.01", f"vlm.cache_dir={tmp_path / 'cache'}", "progress=false",
                       "edit_score.judge=vlm", "edit_score.per_group_cap=2"])
        (first,) = run(cfg)
        sent = len(server.requests)
        before = outcome()
        (second,) = run(cfg)
        assert len(server.requests) == sent == len(CAP_EDITS)  # the rerun found every fragment done
    assert outcome() == before
    assert first.counts["dropped"] == second.counts["dropped"] == {"edit_score_below_threshold": 1, "stratified_cap": 3}

    group = {sid: CAP_EDITS[int(sid.removeprefix("edit"))][:2] for sid in before}
    kept = Counter(group[sid] for sid, (status, _) in before.items() if status == "ok")
    assert kept == {("local_change", "ds_a"): 2, ("local_change", "ds_b"): 2, ("global_style", "ds_a"): 1}
    for sid, (status, reason) in before.items():
        if status == "dropped" and reason.startswith("stratified_cap"):
            assert reason == "stratified_cap: more than 2 in category {} of dataset {}".format(*group[sid])


def test_a_rerun_with_another_cap_or_none_redoes_the_choice_from_every_candidate(tmp_path):
    rows = [edit_row(i, "pair", tmp_path / f"src{i}.png", tmp_path / f"tgt{i}.png", f"Edit {i}.") for i in range(3)]
    storage.write_table_atomic(pa.Table.from_pylist(rows, schema=SCHEMA), str(tmp_path / "stage" / "part-00000.parquet"))

    def kept_after(cap: int | None) -> int:
        stage = EditScore(vlm=VLMConfig(backend="openai", model="judge"), **STAGE, per_group_cap=cap)
        stage.finalize(str(tmp_path / "stage"))  # what the runner does after every rerun
        return storage.read_table(str(tmp_path / "stage")).column("status").to_pylist().count("ok")

    assert [kept_after(cap) for cap in (1, 2, 1, None)] == [1, 2, 1, 3]
