"""The OpenAI and Gemini VLM backends against loopback servers speaking each API: the real clients
(aiohttp for OpenAI-compatible chat, google-genai) over real HTTP, with scripted answers and failures."""

from __future__ import annotations

import io
import json
import logging
import socket

import pytest
from PIL import Image

from curation.backends.budget import Budget, create_ledger
from curation.backends.limits import backoff_delay, parse_retry_after
from curation.backends.vlm import VLMConfig, VLMError, VLMReply, VLMRequest, VLMUsage, make_vlm, parse_reply
from curation.prompts.transition import TransitionAnnotation

from tests.fixtures.vlm_servers import (
    blocked,
    empty,
    hang,
    http_error,
    ok,
    ok_from_prompt,
    raw_text,
)

KEY_ENV = "CURATE_TEST_VLM_KEY"
KEY = "sk-test-SECRET-4f9a"
ANNOTATION = TransitionAnnotation.model_validate({
    "frame1_caption": {"scene": "a kitchen", "char1": "a man in a red shirt"},
    "frame2_caption": {"scene": "a kitchen"},
    "character_change": {"char1": "leaves the room"},
    "object_change": {},
    "global_change": "",
    "camera_change": "none",
    "other_change": "",
    "summary_change": "Remove the man in the red shirt.",
})


def jpeg(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


def request(prompt: str = "Describe the change.", images: list[bytes] | None = None, salt: str = "") -> VLMRequest:
    return VLMRequest(prompt, [jpeg()] if images is None else images, TransitionAnnotation, salt)


def server_default():
    """What the loopback servers answer unless a test scripts otherwise (tests/backends/conftest.py)."""
    return ok(ANNOTATION)


def config(server, **overrides) -> VLMConfig:
    fields = dict(
        backend=server.backend, model="test-model", base_url=server.url, api_key_env=KEY_ENV, cache=False,
        max_retries=2, backoff_initial_s=0.01, backoff_max_s=0.05, timeout_s=5.0,
        usd_per_mtok_input=0.0, usd_per_mtok_output=0.0,  # "test-model" has no list price
    )
    fields.update(overrides)
    return VLMConfig(**fields)


def run(server, requests: list[VLMRequest], **overrides) -> list[VLMReply | VLMError]:
    with make_vlm(config(server, **overrides)) as vlm:
        return vlm.generate_many(requests)


def sent_images(server, body: dict) -> list[bytes]:
    import base64

    if server.backend == "openai":
        parts = body["messages"][0]["content"]
        return [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in parts if p["type"] == "image_url"]
    parts = body["contents"][0]["parts"]
    return [base64.urlsafe_b64decode(p["inlineData"]["data"]) for p in parts if "inlineData" in p]


# ---- outcomes ---------------------------------------------------------------------------------


def test_success_sends_prompt_images_and_schema(server):
    big = jpeg(2000, 1000)
    (reply,) = run(server, [request("Describe it.", [jpeg(), big])], image_max_side=512)
    assert isinstance(reply, VLMReply) and reply.error is None
    assert reply.parsed == ANNOTATION
    assert reply.usage == VLMUsage(requests=1, prompt_tokens=10, completion_tokens=5)
    (sent,) = server.requests
    assert server.prompt_of(sent.body) == "Describe it."
    sizes = [Image.open(io.BytesIO(img)).size for img in sent_images(server, sent.body)]
    assert sizes == [(64, 48), (512, 256)]  # in order; the large one shrunk, aspect kept
    schema = TransitionAnnotation.model_json_schema()
    if server.backend == "openai":
        expected = {"name": "TransitionAnnotation", "schema": schema, "strict": False}
        assert sent.body["response_format"]["json_schema"] == expected
        assert sent.headers["Authorization"] == f"Bearer {KEY}"
    else:
        assert sent.body["generationConfig"]["responseJsonSchema"] == schema
        assert sent.body["generationConfig"]["responseMimeType"] == "application/json"
        assert sent.headers["X-Goog-Api-Key"] == KEY


def test_429_with_retry_after_is_retried(server):
    server.enqueue(http_error(429, retry_after=0.2))
    (reply,) = run(server, [request()])
    assert isinstance(reply, VLMReply) and reply.parsed == ANNOTATION
    assert len(server.requests) == 2
    assert reply.usage.retries == 1 and reply.usage.requests == 2


def test_500_until_retries_are_spent(server):
    server.set_default(http_error(500, message="upstream exploded"))
    (reply,) = run(server, [request()], max_retries=2)
    assert isinstance(reply, VLMError)
    assert reply.reason.startswith("vlm_http_500: upstream exploded") and reply.reason.endswith("(after 2 retries)")
    assert len(server.requests) == 3 and reply.usage.requests == 3 and reply.usage.retries == 2


def test_other_4xx_is_not_retried(server):
    server.enqueue(http_error(400, message="bad request"))
    (reply,) = run(server, [request()])
    assert isinstance(reply, VLMError) and reply.reason.startswith("vlm_http_400")
    assert len(server.requests) == 1


def test_hang_past_timeout(server):
    server.set_default(hang(3.0))
    (reply,) = run(server, [request()], timeout_s=0.3, max_retries=1)
    assert isinstance(reply, VLMError) and reply.reason.startswith("vlm_timeout")
    assert len(server.requests) == 2


def test_connection_refused_is_retried_then_reported(server):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}" + ("/v1" if server.backend == "openai" else "")
    (reply,) = run(server, [request()], base_url=base_url, max_retries=1)
    assert isinstance(reply, VLMError) and reply.reason.startswith("vlm_connection")
    assert reply.usage.requests == 2


def test_malformed_json_is_a_reply_with_an_error(server):
    server.enqueue(raw_text('{"frame1_caption": {"scene": "a kit'), raw_text("not json at all"))
    (reply,) = run(server, [request()])
    assert isinstance(reply, VLMReply) and reply.parsed is None
    assert reply.error.startswith("invalid_json") and reply.raw.startswith('{"frame1_caption"')
    with make_vlm(config(server)) as vlm, pytest.raises(VLMError, match=r"^invalid_json"):
        vlm.generate("p", [], TransitionAnnotation)


def test_schema_breaking_json_is_a_schema_mismatch(server):
    broken = ANNOTATION.model_dump(mode="json") | {"character_change": {"man": "leaves"}}
    server.enqueue(raw_text(json.dumps(broken)))
    (reply,) = run(server, [request()])
    assert isinstance(reply, VLMReply) and reply.parsed is None
    assert reply.error.startswith("schema_mismatch: character_change")


def test_empty_answer_is_retried_then_an_error(server):
    server.set_default(empty())
    (reply,) = run(server, [request()], max_retries=1)
    assert isinstance(reply, VLMError) and reply.reason.startswith("vlm_empty_response")
    assert len(server.requests) == 2
    assert reply.usage.prompt_tokens == 20  # the empty answers' tokens are still counted


def test_gemini_blocked_prompt_is_not_retried(servers, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    server = servers["gemini"]
    server.reset(default=blocked("SAFETY"))
    server.backend = "gemini"
    (reply,) = run(server, [request()])
    assert isinstance(reply, VLMError) and reply.reason.startswith("vlm_blocked") and "SAFETY" in reply.reason
    assert len(server.requests) == 1


def test_replies_come_back_in_input_order(server):
    answer = lambda prompt: ANNOTATION.model_copy(update={"summary_change": prompt})  # noqa: E731
    server.set_default(ok_from_prompt(answer, latency_s=0.05))
    prompts = [f"prompt {i}" for i in range(10)]
    replies = run(server, [request(p) for p in prompts], max_in_flight=5)
    assert [r.parsed.summary_change for r in replies] == prompts


# ---- keys -------------------------------------------------------------------------------------


def test_api_key_never_appears_in_reasons_or_logs(server, caplog):
    caplog.set_level(logging.DEBUG)
    server.enqueue(http_error(401, message=f"Incorrect API key provided: {KEY}"))
    (reply,) = run(server, [request()])
    assert isinstance(reply, VLMError) and reply.reason.startswith("vlm_auth")
    assert len(server.requests) == 1  # not retried
    assert KEY not in reply.reason and KEY not in caplog.text


def test_missing_key_variable_is_an_auth_error_without_a_request(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    (reply,) = run(server, [request()])
    assert isinstance(reply, VLMError) and reply.reason == f"vlm_auth: environment variable {KEY_ENV} is not set"
    assert server.requests == []


# ---- cache ------------------------------------------------------------------------------------


def test_cache_serves_repeats_without_requests(server, tmp_path):
    server.set_default(ok_from_prompt(lambda prompt: ANNOTATION if prompt == "first" else '{"not": "valid"}'))
    reqs = [request("first"), request("second")]
    with make_vlm(config(server, cache=True, cache_dir=str(tmp_path))) as vlm:
        first = vlm.generate_many(reqs)
        assert len(server.requests) == 2
        again = vlm.generate_many(reqs)
        assert len(server.requests) == 2  # nothing sent
        for before, after in zip(first, again):
            assert after.raw == before.raw and after.error == before.error
            assert after.usage == VLMUsage(cache_hits=1)
        assert again[0].parsed == ANNOTATION
        assert again[1].error.startswith("schema_mismatch")  # a response that arrived is cached, valid or not
        (salted,) = vlm.generate_many([request("first", salt="template-v2")])
        assert salted.usage.cache_hits == 0 and len(server.requests) == 3
    assert len(list(tmp_path.glob("*/*.json"))) == 3


def test_transport_errors_are_not_cached(server, tmp_path):
    server.enqueue(http_error(500), http_error(500))
    with make_vlm(config(server, cache=True, cache_dir=str(tmp_path), max_retries=1)) as vlm:
        (failed,) = vlm.generate_many([request()])
        assert isinstance(failed, VLMError)
        (reply,) = vlm.generate_many([request()])
    assert reply.parsed == ANNOTATION and reply.usage.cache_hits == 0
    assert len(server.requests) == 3


# ---- budget -----------------------------------------------------------------------------------


def test_budget_stops_requests_once_spent(server, tmp_path, caplog):
    budget = Budget(max_usd=0.5)
    # $1 per 10 prompt tokens: the first answer alone spends the budget.
    cfg = config(server, cache=True, cache_dir=str(tmp_path), max_in_flight=1,
                 usd_per_mtok_input=100_000.0, usd_per_mtok_output=100_000.0)
    with make_vlm(cfg, budget) as vlm:
        (first,) = vlm.generate_many([request("p0")])
        assert first.usage.usd == pytest.approx(1.5)
        rest = vlm.generate_many([request(f"p{i}") for i in range(1, 4)])
        cached = vlm.generate_many([request("p0")])[0]
    assert budget.spent() == pytest.approx(1.5)
    assert all(isinstance(r, VLMError) and r.reason.startswith("budget_exhausted: spent $1.5000 of $0.5000") for r in rest)
    assert len(server.requests) == 1  # none of the rest was sent
    assert cached.parsed == ANNOTATION and cached.usage.cache_hits == 1  # cache hits are free
    assert caplog.text.count("VLM budget exhausted") == 1  # warned once


def test_ledger_shares_one_total_across_workers(ray_local):
    ledger = create_ledger("test-vlm-ledger")  # the driver holds the handle while workers use the name
    first, second = Budget(5.0, ledger_name="test-vlm-ledger"), Budget(5.0, ledger_name="test-vlm-ledger")
    first.charge(3.0)
    second.check()  # 3 < 5
    second.charge(3.0)
    assert first.spent() == pytest.approx(6.0)
    with pytest.raises(VLMError, match=r"^budget_exhausted: spent \$6\.0000 of \$5\.0000"):
        first.check()
    ray_local.kill(ledger)


# ---- flow control -----------------------------------------------------------------------------


def test_in_flight_requests_are_bounded(server):
    server.set_default(ok(ANNOTATION, latency_s=0.15))
    replies = run(server, [request(f"p{i}") for i in range(12)], max_in_flight=4)
    assert all(isinstance(r, VLMReply) and r.parsed == ANNOTATION for r in replies)
    assert 1 < server.max_concurrency <= 4


def test_requests_per_minute_spaces_requests(server):
    with make_vlm(config(server, requests_per_minute=600, max_in_flight=8)) as vlm:
        vlm.generate_many([request("warm-up")])  # client creation and first-call imports out of the way
        server.reset(default=ok(ANNOTATION))
        vlm.generate_many([request(f"p{i}") for i in range(5)])
    starts = sorted(r.started for r in server.requests)
    # 600/min = one every 0.1 s: 5 requests span at least 0.4 s. Arrival times at the server jitter
    # on a loaded machine (one gap of 0.05 s next to one of 0.14 s was seen), so the span is checked,
    # not each gap; a limiter that let them burst would send all 5 within a few milliseconds.
    assert len(starts) == 5 and starts[-1] - starts[0] >= 0.36


def test_backend_is_created_without_network_and_reused_across_batches(server):
    vlm = make_vlm(config(server, base_url="http://127.0.0.1:9"))  # nothing listens; nothing is sent yet
    assert vlm.model_id() == f"{server.backend}:test-model@http://127.0.0.1:9"
    vlm.close()
    with make_vlm(config(server)) as vlm:
        one, two = vlm.generate_many([request("a")]), vlm.generate_many([request("b")])
        loop = vlm._thread.loop
        vlm.generate_many([request("c")])
        assert vlm._thread.loop is loop  # one persistent loop for the backend's life
    assert one[0].parsed == two[0].parsed == ANNOTATION


# ---- pure helpers -----------------------------------------------------------------------------


def test_parse_reply_outcomes():
    text = json.dumps(ANNOTATION.model_dump(mode="json"))
    assert parse_reply(TransitionAnnotation, text) == (ANNOTATION, None)
    assert parse_reply(TransitionAnnotation, f"```json\n{text}\n```")[0] == ANNOTATION  # fenced, as some servers do
    # A raw TAB inside a string (xgrammar lets control characters into length-limited strings).
    tabbed, error = parse_reply(TransitionAnnotation, text.replace("Remove the man", "Remove\tthe man"))
    assert error is None and tabbed.summary_change.startswith("Remove\tthe")
    assert parse_reply(TransitionAnnotation, "")[1] == "invalid_json: empty response text"
    assert parse_reply(TransitionAnnotation, "[1, 2")[1].startswith("invalid_json: ")
    assert parse_reply(TransitionAnnotation, "{}")[1].startswith("schema_mismatch: frame1_caption: Field required")


def test_retry_after_parsing_and_backoff():
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None
    assert all(0 <= backoff_delay(n, 1.0, 4.0) <= min(4.0, 2.0**n) for n in range(6) for _ in range(20))
    assert backoff_delay(0, 0.01, 0.05, retry_after_s=2.0) >= 2.0  # the server's wait is a floor
    assert VLMUsage(requests=1, usd=0.5) + VLMUsage(requests=2, cache_hits=1) == VLMUsage(requests=3, cache_hits=1, usd=0.5)


# ---- request options: top_p, top_k, extra_body -----------------------------------------------


def test_top_p_and_top_k_reach_the_request(server):
    run(server, [request()], temperature=0.7, top_p=0.9, top_k=20)
    (sent,) = server.requests
    if server.backend == "openai":  # top_p is an OpenAI field; top_k goes at the top level, as vLLM reads it
        assert (sent.body["temperature"], sent.body["top_p"], sent.body["top_k"]) == (0.7, 0.9, 20)
    else:
        config = sent.body["generationConfig"]
        assert (config["temperature"], config["topP"], config["topK"]) == (0.7, 0.9, 20)


def test_unset_options_are_not_sent(server):
    run(server, [request()])
    (sent,) = server.requests
    fields = sent.body if server.backend == "openai" else sent.body["generationConfig"]
    assert not {"top_p", "top_k", "topP", "topK", "chat_template_kwargs"} & set(fields)


def test_extra_body_goes_to_the_top_level_of_openai_requests(servers, monkeypatch):
    server = servers["openai"]
    server.reset(default=ok(ANNOTATION))
    server.backend = "openai"
    monkeypatch.setenv(KEY_ENV, KEY)
    extra = {"chat_template_kwargs": {"enable_thinking": False}, "top_k": 5, "repetition_penalty": 1.05}
    (reply,) = run(server, [request()], top_k=20, extra_body=extra)
    assert isinstance(reply, VLMReply) and reply.parsed == ANNOTATION
    (sent,) = server.requests
    assert sent.body["chat_template_kwargs"] == {"enable_thinking": False} and sent.body["repetition_penalty"] == 1.05
    assert sent.body["top_k"] == 5  # extra_body wins, as the SDK's extra_body would
    server.reset()


@pytest.mark.parametrize("backend", ["gemini", "local"])
def test_extra_body_is_refused_where_there_is_no_body_to_put_it_in(backend):
    with pytest.raises(ValueError, match="extra_body"):
        VLMConfig(backend=backend, model="m", extra_body={"chat_template_kwargs": {}})


def test_extra_body_may_not_replace_the_model_or_the_messages():
    with pytest.raises(ValueError, match="messages"):
        VLMConfig(backend="openai", model="m", extra_body={"messages": []})


def test_each_option_is_part_of_the_cache_key(server, tmp_path):
    settings = [{}, {"top_p": 0.9}, {"top_p": 0.8}, {"top_p": 0.8, "top_k": 20}]
    if server.backend == "openai":
        settings += [{"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
                     {"extra_body": {"chat_template_kwargs": {"enable_thinking": True}}}]
    for n, options in enumerate(settings, start=1):
        (reply,) = run(server, [request()], cache=True, cache_dir=str(tmp_path), **options)
        assert reply.usage.cache_hits == 0 and len(server.requests) == n, options  # never a stale replay
    for options in settings:  # each setting replays its own answer
        (reply,) = run(server, [request()], cache=True, cache_dir=str(tmp_path), **options)
        assert reply.usage.cache_hits == 1
    assert len(server.requests) == len(settings)


def _part_kinds(server, body: dict) -> list[str]:
    if server.backend == "openai":
        return ["text" if p["type"] == "text" else "image" for p in body["messages"][0]["content"]]
    return ["text" if "text" in p else "image" for p in body["contents"][0]["parts"]]


def test_images_first_puts_the_images_before_the_prompt_and_is_part_of_the_cache_key(server, tmp_path):
    images = [jpeg(), jpeg(64, 48)]
    plain = request("Judge it.", images)
    first = VLMRequest("Judge it.", images, TransitionAnnotation, images_first=True)
    run(server, [plain], cache=True, cache_dir=str(tmp_path))
    (reply,) = run(server, [first], cache=True, cache_dir=str(tmp_path))
    assert reply.usage.cache_hits == 0  # another message, never the text-first request's answer
    text_first, images_before = (r.body for r in server.requests)
    assert _part_kinds(server, text_first) == ["text", "image", "image"]
    assert _part_kinds(server, images_before) == ["image", "image", "text"]
    assert sent_images(server, images_before) == sent_images(server, text_first)  # same images, same order


# ---- pricing ------------------------------------------------------------------------------------

LISTED = {"openai": ("gpt-4.1-mini", 0.40, 1.60), "gemini": ("gemini-2.5-flash", 0.30, 2.50)}


def priced_config(server, model: str, **overrides) -> VLMConfig:
    """`config` with the prices left to `vlm.pricing` (the helper above pins them to 0)."""
    return config(server, model=model, **{"usd_per_mtok_input": None, "usd_per_mtok_output": None, **overrides})


def header(recorded, name: str) -> str | None:
    return next((v for k, v in recorded.headers.items() if k.lower() == name), None)


def test_self_hosted_needs_no_key_and_costs_nothing(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    cfg = priced_config(server, LISTED[server.backend][0], pricing="self_hosted")
    with make_vlm(cfg) as vlm:
        (reply,) = vlm.generate_many([request()])
    assert isinstance(reply, VLMReply) and reply.parsed == ANNOTATION
    assert reply.usage == VLMUsage(requests=1, prompt_tokens=10, completion_tokens=5)  # usd 0, and priced
    sent = header(server.requests[0], "authorization" if server.backend == "openai" else "x-goog-api-key")
    assert sent is not None and KEY not in sent  # a placeholder the SDK accepts


def test_self_hosted_still_sends_a_key_that_is_set(servers, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    srv = servers["openai"]
    srv.reset(default=ok(ANNOTATION))
    srv.backend = "openai"
    with make_vlm(priced_config(srv, "my-model", pricing="self_hosted")) as vlm:
        (reply,) = vlm.generate_many([request()])
    assert isinstance(reply, VLMReply) and header(srv.requests[0], "authorization") == f"Bearer {KEY}"
    srv.reset()


def test_hosted_model_is_priced_from_the_table(server):
    model, usd_in, usd_out = LISTED[server.backend]
    with make_vlm(priced_config(server, model)) as vlm:
        (reply,) = vlm.generate_many([request()])
    assert reply.usage.usd == pytest.approx((10 * usd_in + 5 * usd_out) / 1e6)
    assert reply.usage.unpriced_requests == 0


def test_an_override_wins_over_the_table(server):
    model, _, usd_out = LISTED[server.backend]
    with make_vlm(priced_config(server, model, usd_per_mtok_input=100.0)) as vlm:
        (reply,) = vlm.generate_many([request()])
    assert reply.usage.usd == pytest.approx((10 * 100.0 + 5 * usd_out) / 1e6)


def test_unknown_model_counts_tokens_and_flags_the_cost_unknown(server):
    with make_vlm(priced_config(server, "no-such-model-v9")) as vlm:
        replies = vlm.generate_many([request(), request("Another.")])
    total = replies[0].usage + replies[1].usage
    assert all(r.parsed == ANNOTATION for r in replies)
    assert total == VLMUsage(requests=2, prompt_tokens=20, completion_tokens=10, usd=0.0, unpriced_requests=2)


def test_unknown_model_under_a_budget_is_refused_before_sending(server):
    with make_vlm(priced_config(server, "no-such-model-v9"), budget=Budget(max_usd=1.0)) as vlm:
        (reply,) = vlm.generate_many([request()])
    assert isinstance(reply, VLMError) and reply.reason.startswith("budget_unpriced: no-such-model-v9")
    assert server.requests == []


def test_budget_stops_a_model_priced_from_the_table(server):
    budget = Budget(max_usd=1e-5)  # one call of 10 + 5 tokens costs 1.2e-5 (openai) or 1.55e-5 (gemini)
    with make_vlm(priced_config(server, LISTED[server.backend][0], max_in_flight=1), budget=budget) as vlm:
        first, second = vlm.generate_many([request(), request("Another.")])
    assert isinstance(first, VLMReply) and first.usage.usd > 1e-5
    assert isinstance(second, VLMError) and second.reason.startswith("budget_exhausted")
    assert len(server.requests) == 1


def test_pricing_defaults_follow_the_backend_and_are_checked():
    assert VLMConfig(backend="openai", model="m").pricing == "hosted"
    assert VLMConfig(backend="local", model="m").pricing == "self_hosted"
    with pytest.raises(ValueError, match="pricing must be self_hosted"):
        VLMConfig(backend="vllm", model="m", pricing="hosted")


# ---- Gemini thinking ----------------------------------------------------------------------------


def test_gemini_thinking_fits_beside_the_answer_and_is_billed(servers, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    srv = servers["gemini"]
    srv.reset(default=ok(ANNOTATION, completion_tokens=300, thinking_tokens=900))
    srv.backend = "gemini"
    cfg = priced_config(srv, "gemini-2.5-flash", max_tokens=1024, thinking_budget=1024)
    with make_vlm(cfg) as vlm:
        (reply,) = vlm.generate_many([request()])
    assert isinstance(reply, VLMReply) and reply.parsed == ANNOTATION  # the thought part is not the answer
    assert reply.usage.completion_tokens == 1200 and reply.usage.thinking_tokens == 900
    assert reply.usage.usd == pytest.approx((10 * 0.30 + 1200 * 2.50) / 1e6)
    generation = srv.requests[0].body["generationConfig"]
    # The SDK writes some fields in proto JSON's snake_case, which the API also accepts.
    thinking = {k.replace("_", "").lower(): v for k, v in generation["thinkingConfig"].items()}
    assert thinking == {"thinkingbudget": 1024}
    assert generation["maxOutputTokens"] == 2048  # the answer keeps its 1024 whatever the thinking spends
    srv.reset()


def test_gemini_config_sets_a_thinking_budget_and_room_for_the_answer():
    from omegaconf import OmegaConf

    from curation.core.config import CONFIG_DIR

    cfg = VLMConfig(**OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "vlm" / "gemini.yaml")))
    assert cfg.thinking_budget and cfg.output_token_limit() == cfg.max_tokens + cfg.thinking_budget
    assert cfg.pricing == "hosted" and cfg.usd_per_mtok_input is None


def test_thinking_budget_is_a_gemini_setting():
    with pytest.raises(ValueError, match="thinking_budget is a Gemini setting"):
        VLMConfig(backend="openai", model="m", thinking_budget=128)


def test_unpriced_calls_are_a_warning_in_run_json_and_the_summary():
    from stages.base.vlm import VLMStage, unpriced_warning

    usage = VLMUsage(requests=3, prompt_tokens=30, completion_tokens=15, unpriced_requests=3)
    warning = unpriced_warning("no-such-model-v9", usage)
    assert "3 request(s)" in warning and "no-such-model-v9" in warning
    notes = VLMStage.result_notes({"vlm": {"model": "openai:no-such-model-v9", "usage": usage.model_dump(),
                                           "warnings": [warning]}})
    assert any("warning" in n and "cost unknown" in n for n in notes)
