"""The OpenAI-compatible chat client (`chat_http.py`) against the loopback OpenAI server: what it
sends besides the body, and how it reads answers that are not the API's JSON."""

from __future__ import annotations

import asyncio

import pytest

from curation.backends.chat_http import ChatEndpoint, env_proxy
from curation.backends.vlm import VLMConfig, VLMError, VLMReply, VLMRequest, make_vlm
from curation.prompts.transition import TransitionAnnotation

from tests.backends.test_vlm import ANNOTATION, jpeg
from tests.fixtures.vlm_servers import ok, openai_server, page

KEY_ENV = "CURATE_TEST_CHAT_KEY"


@pytest.fixture(scope="module")
def server():
    with openai_server(ok(ANNOTATION)) as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-chat-test")
    for variable in ("OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(variable, raising=False)
    server.reset(default=ok(ANNOTATION))
    yield


def generate(server, base_url: str | None = "server", **overrides) -> VLMReply | VLMError:
    fields = dict(backend="openai", model="test-model", base_url=server.url if base_url == "server" else base_url,
                  api_key_env=KEY_ENV, cache=False, max_retries=1, backoff_initial_s=0.01, backoff_max_s=0.02,
                  timeout_s=5.0, pricing="self_hosted")
    with make_vlm(VLMConfig(**(fields | overrides))) as vlm:
        (reply,) = vlm.generate_many([VLMRequest("Describe the change.", [jpeg()], TransitionAnnotation)])
    return reply


def test_a_proxy_page_with_200_is_retried_then_a_bad_response(server):
    server.set_default(page(200, "<html>Sign in to continue</html>"))
    reply = generate(server)
    assert isinstance(reply, VLMError)
    assert reply.reason.startswith("vlm_bad_response: HTTP 200 with a body that is not JSON: <html>Sign in to continue</html>")
    assert reply.reason.endswith("(after 1 retries)") and len(server.requests) == 2


def test_a_proxy_error_page_is_an_http_error_that_quotes_it(server):
    server.enqueue(page(502))
    reply = generate(server)
    assert isinstance(reply, VLMReply) and reply.parsed == ANNOTATION  # 502 is transient: the retry got through
    assert reply.usage.retries == 1
    server.set_default(page(502))
    reply = generate(server, max_retries=0)
    assert isinstance(reply, VLMError) and reply.reason == "vlm_http_502: <html><body><h1>Bad Gateway</h1></body></html>"


def test_organisation_and_project_headers_come_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("OPENAI_ORG_ID", "org-123")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-456")
    assert isinstance(generate(server), VLMReply)
    headers = server.requests[-1].headers
    assert headers["Openai-Organization"] == "org-123" and headers["Openai-Project"] == "proj-456"
    assert headers["Authorization"] == "Bearer sk-chat-test" and headers["Content-Type"] == "application/json"


def test_base_url_falls_back_to_openai_base_url_then_the_api(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/")
    assert isinstance(generate(server, base_url=None), VLMReply)  # reached the loopback server through the variable
    assert server.requests[-1].path == "/v1/chat/completions"
    monkeypatch.delenv("OPENAI_BASE_URL")

    async def base() -> str:
        endpoint = ChatEndpoint(None, None, 1.0, 1)
        await endpoint.close()
        return endpoint.base_url

    assert asyncio.run(base()) == "https://api.openai.com/v1"


def test_reasoning_tokens_are_reported_as_thinking(server):
    server.set_default(ok(ANNOTATION, completion_tokens=40, thinking_tokens=25))
    reply = generate(server)
    assert reply.parsed == ANNOTATION
    assert reply.usage.completion_tokens == 40 and reply.usage.thinking_tokens == 25  # of the 40, not on top


def test_proxy_comes_from_the_environment_once_and_no_proxy_spares_a_host(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://secure-proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "vllm.internal")
    assert env_proxy("http://api.example.test/v1") == "http://proxy.internal:3128"
    assert env_proxy("https://api.openai.com/v1") == "http://secure-proxy.internal:3128"
    assert env_proxy("http://vllm.internal:8000/v1") is None
    monkeypatch.delenv("HTTP_PROXY")
    assert env_proxy("http://api.example.test/v1") is None


def test_requests_go_through_the_proxy_the_environment_names(server, monkeypatch):
    # The loopback server plays the proxy: the client sends it the absolute URL of a host that does
    # not resolve, which only a client that honours HTTP_PROXY can reach.
    monkeypatch.setenv("HTTP_PROXY", server.url.removesuffix("/v1"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    reply = generate(server, base_url="http://api.nowhere.invalid/v1")
    assert isinstance(reply, VLMReply) and reply.parsed == ANNOTATION
    assert server.requests[-1].headers["Host"] == "api.nowhere.invalid"
