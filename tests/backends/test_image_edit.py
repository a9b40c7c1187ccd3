"""The OpenAI and Gemini image-edit backends against loopback servers speaking each API: the real
SDKs over real HTTP, with scripted answers and failures, on the VLM backends' machinery."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from curation.backends.budget import Budget
from curation.backends.image_edit import (
    ImageEditConfig,
    ImageEditReply,
    ImageEditRequest,
    make_image_editor,
)
from curation.backends.vlm import VLMError, VLMUsage

from tests.fixtures.vlm_servers import blocked, hang, http_error, image_ok, raw_text

KEY_ENV = "CURATE_TEST_IMAGE_KEY"
KEY = "sk-test-IMAGE-SECRET-77c1"


def png(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    """A noisy PNG (lossless, so an inverse round trip can be compared exactly)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    return encoded.tobytes()


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable image"
    return image


def edit(prompt: str = "Remove the cup.", image: bytes | None = None, salt: str = "") -> ImageEditRequest:
    return ImageEditRequest(prompt, png() if image is None else image, salt)


def server_default():
    """What the loopback servers answer unless a test scripts otherwise (tests/backends/conftest.py)."""
    return image_ok()


@pytest.fixture
def gemini(servers, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    srv = servers["gemini"]
    srv.reset(default=image_ok())
    srv.backend = "gemini"
    yield srv
    srv.reset()


def config(server, **overrides) -> ImageEditConfig:
    fields = dict(
        backend=server.backend, model="test-image-model", base_url=server.url, api_key_env=KEY_ENV, cache=False,
        max_retries=2, backoff_initial_s=0.01, backoff_max_s=0.05, timeout_s=5.0,
    )
    fields.update(overrides)
    return ImageEditConfig(**fields)


def run(server, requests: list[ImageEditRequest], budget: Budget | None = None, **overrides):
    with make_image_editor(config(server, **overrides), budget) as editor:
        return editor.edit_many(requests)


# ---- outcomes ---------------------------------------------------------------------------------


def test_round_trip_returns_the_edited_image(server):
    source = png(80, 60)
    overrides = {"size": "1024x1024"} if server.backend == "openai" else {}
    (reply,) = run(server, [edit("Invert it.", source)], **overrides)
    assert isinstance(reply, ImageEditReply)
    assert np.array_equal(decode(reply.image), 255 - decode(source))  # the server's edit, byte-exact pixels
    assert reply.usage == VLMUsage(requests=1, prompt_tokens=10, completion_tokens=5)
    (sent,) = server.requests
    assert server.prompt_of(sent.body) == "Invert it." and server.image_of(sent.body) == source
    if server.backend == "openai":
        assert sent.path == "/v1/images/edits"
        assert sent.body["model"] == "test-image-model" and sent.body["size"] == "1024x1024" and sent.body["n"] == "1"
        (upload,) = sent.body["files"]
        assert upload["content_type"] == "image/png" and upload["filename"] == "image.png"
        assert sent.headers["Authorization"] == f"Bearer {KEY}"
    else:
        assert sent.body["generationConfig"]["responseModalities"] == ["TEXT", "IMAGE"]
        assert sent.headers["X-Goog-Api-Key"] == KEY


def test_large_inputs_are_shrunk_before_upload(server):
    (reply,) = run(server, [edit(image=png(400, 200))], image_max_side=100)
    assert isinstance(reply, ImageEditReply) and decode(reply.image).shape == (50, 100, 3)
    assert decode(server.image_of(server.requests[0].body)).shape == (50, 100, 3)


def test_429_with_retry_after_is_retried(server):
    server.enqueue(http_error(429, retry_after=0.2))
    (reply,) = run(server, [edit()])
    assert isinstance(reply, ImageEditReply)
    assert len(server.requests) == 2 and server.requests[1].started - server.requests[0].finished >= 0.19
    assert reply.usage.retries == 1 and reply.usage.requests == 2


def test_500_until_retries_are_spent(server):
    server.set_default(http_error(500, message="renderer exploded"))
    (reply,) = run(server, [edit()], max_retries=2)
    assert isinstance(reply, VLMError)
    assert reply.reason.startswith("vlm_http_500: renderer exploded") and reply.reason.endswith("(after 2 retries)")
    assert len(server.requests) == 3 and reply.usage.requests == 3 and reply.usage.retries == 2


def test_hang_past_timeout(server):
    server.set_default(hang(3.0))
    (reply,) = run(server, [edit()], timeout_s=0.3, max_retries=1)
    assert isinstance(reply, VLMError) and reply.reason.startswith("vlm_timeout")
    assert len(server.requests) == 2


def test_401_is_not_retried_and_the_key_is_scrubbed(server, caplog):
    caplog.set_level(logging.DEBUG)
    server.enqueue(http_error(401, message=f"Incorrect API key provided: {KEY}"))
    (reply,) = run(server, [edit()])
    assert isinstance(reply, VLMError) and reply.reason.startswith("vlm_auth: HTTP 401")
    assert len(server.requests) == 1
    assert KEY not in reply.reason and "***" in reply.reason and KEY not in caplog.text


def test_key_is_scrubbed_from_retried_failures(server, caplog):
    caplog.set_level(logging.DEBUG)
    server.set_default(http_error(503, message=f"overloaded for {KEY}"))
    (reply,) = run(server, [edit()], max_retries=1)
    assert isinstance(reply, VLMError) and reply.reason.startswith("vlm_http_503")
    assert KEY not in reply.reason and KEY not in caplog.text and "retry 1/1" in caplog.text


def test_an_image_that_does_not_decode_is_retried_then_reported(server):
    server.set_default(image_ok(lambda _: b"\x89PNG\r\n\x1a\n-not-really"))
    (reply,) = run(server, [edit()], max_retries=1)
    assert isinstance(reply, VLMError) and reply.reason.startswith("image_edit_bad_output")
    assert len(server.requests) == 2


def test_gemini_text_only_answer_is_no_image_and_not_retried(gemini):
    gemini.set_default(raw_text("I can't edit people in photos."))
    (reply,) = run(gemini, [edit()])
    assert isinstance(reply, VLMError)
    assert reply.reason.startswith("image_edit_no_image:") and "I can't edit people" in reply.reason
    assert len(gemini.requests) == 1
    assert reply.usage.prompt_tokens == 10  # what the refusal cost is still counted


def test_gemini_blocked_prompt_is_no_image(gemini):
    gemini.set_default(blocked("PROHIBITED_CONTENT"))
    (reply,) = run(gemini, [edit()])
    assert isinstance(reply, VLMError) and reply.reason.startswith("image_edit_no_image: prompt blocked")
    assert "PROHIBITED_CONTENT" in reply.reason and len(gemini.requests) == 1


def test_replies_come_back_in_input_order(server):
    sources = [png(32, 24, seed=i) for i in range(6)]
    replies = run(server, [edit(f"p{i}", img) for i, img in enumerate(sources)], max_in_flight=3)
    assert [np.array_equal(decode(r.image), 255 - decode(s)) for r, s in zip(replies, sources)] == [True] * 6


# ---- cache, budget, flow control ----------------------------------------------------------------


def test_cache_serves_identical_requests_without_a_call(server, tmp_path):
    with make_image_editor(config(server, cache=True, cache_dir=str(tmp_path), usd_per_image=0.04)) as editor:
        (first,) = editor.edit_many([edit()])
        (again,) = editor.edit_many([edit()])
        assert len(server.requests) == 1  # the server saw one request
        assert again.image == first.image and again.usage == VLMUsage(cache_hits=1)
        assert first.usage.usd == pytest.approx(0.04)
        (other_salt,) = editor.edit_many([edit(salt="template-v2")])
        (other_prompt,) = editor.edit_many([edit("Remove the plate.")])
    assert other_salt.usage.cache_hits == other_prompt.usage.cache_hits == 0
    assert len(server.requests) == 3


def test_an_output_setting_is_part_of_the_cache_key(servers, monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, KEY)
    server = servers["openai"]
    server.reset(default=image_ok())
    server.backend = "openai"
    for size in ("1024x1024", "1024x1024", "1536x1024"):
        (reply,) = run(server, [edit()], cache=True, cache_dir=str(tmp_path), size=size)
        assert isinstance(reply, ImageEditReply)
    assert [r.body["size"] for r in server.requests] == ["1024x1024", "1536x1024"]
    server.reset()


def test_budget_stops_requests_once_spent(server, tmp_path):
    budget = Budget(max_usd=0.5)
    cfg = config(server, cache=True, cache_dir=str(tmp_path), max_in_flight=1, usd_per_image=1.0)
    with make_image_editor(cfg, budget) as editor:
        (first,) = editor.edit_many([edit("p0")])
        rest = editor.edit_many([edit(f"p{i}") for i in range(1, 4)])
        (cached,) = editor.edit_many([edit("p0")])
    assert first.usage.usd == pytest.approx(1.0) and budget.spent() == pytest.approx(1.0)
    assert all(isinstance(r, VLMError) and r.reason.startswith("budget_exhausted: spent $1.0000 of $0.5000")
               for r in rest)
    assert len(server.requests) == 1
    assert isinstance(cached, ImageEditReply) and cached.usage.cache_hits == 1  # cache hits are free


def test_in_flight_requests_are_bounded(server):
    server.set_default(image_ok(latency_s=0.15))
    replies = run(server, [edit(f"p{i}") for i in range(10)], max_in_flight=3)
    assert all(isinstance(r, ImageEditReply) for r in replies)
    assert 1 < server.max_concurrency <= 3


def test_requests_per_minute_spaces_requests(server):
    with make_image_editor(config(server, requests_per_minute=600, max_in_flight=8)) as editor:
        editor.edit_many([edit("warm-up")])  # client creation and first-call imports out of the way
        server.reset(default=image_ok())
        editor.edit_many([edit(f"p{i}") for i in range(4)])
    starts = sorted(r.started for r in server.requests)
    # 600/min = one every 0.1 s. The span, not each gap: a multipart upload's own latency varies
    # (the pacing itself is tested gap by gap in test_vlm_backends).
    assert len(starts) == 4 and starts[-1] - starts[0] >= 0.25


# ---- config -----------------------------------------------------------------------------------


def test_config_is_strict():
    with pytest.raises(ValidationError, match="extra"):
        ImageEditConfig(backend="openai", model="m", sise="1024x1024")
    with pytest.raises(ValidationError, match="size is an openai setting"):
        ImageEditConfig(backend="gemini", model="m", size="1024x1024")
    with pytest.raises(ValidationError):
        ImageEditConfig(backend="openai", model="m", size="big")
    editor = make_image_editor(ImageEditConfig(backend="gemini", model="m", base_url="http://127.0.0.1:9"))
    assert editor.model_id() == "gemini:m@http://127.0.0.1:9"  # created without any network
    editor.close()
