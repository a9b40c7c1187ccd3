"""Loopback servers that speak the OpenAI chat-completions and image-edits and the Gemini
generateContent HTTP APIs, for tests and benchmarks of the VLM and image-edit backends (real SDKs,
real HTTP, scripted answers).

    with openai_server(default=ok(ANNOTATION)) as server:
        server.enqueue(http_error(429, retry_after=0.1), ok(ANNOTATION))   # first two requests
        cfg = VLMConfig(backend="openai", model="m", base_url=server.url, ...)
        ...
        assert len(server.requests) == 3 and server.max_concurrency <= 4

Each request takes the next scripted behaviour from the queue (`enqueue`), else the default
(`set_default`). Behaviours:
- `ok(obj, latency_s=0)`: valid structured output (`latency_s` > 0 for throughput benchmarks);
- `ok_from_prompt(fn)`: the answer computed from the request's prompt (order checks);
- `raw_text(s)`: any text as the model's output (malformed JSON, schema-breaking JSON);
- `http_error(status, retry_after=None)`: an error in the API's own format;
- `hang(seconds)`: answer only after the client gave up;
- `empty()`: no choices (OpenAI) / no candidates (Gemini); `blocked()`: Gemini prompt blocked;
- `image_ok(fn=invert_image)`: an edited image, `fn(uploaded image bytes)` (image edits).
Image edits: the OpenAI server also answers `POST /v1/images/edits` (multipart); there any
behaviour but `http_error` and `empty` (no `data`) answers with an image (`image_ok`'s `fn`, else
the inverse). On Gemini, `image_ok` answers with a text part then an inline image part, while
`raw_text` is a text-only answer (no image).
The server is threaded, so many requests can be in flight. It records each request
(`requests`: path, headers, body (JSON, or the form fields plus `files` for multipart),
arrival/finish times) and the peak number in flight (`max_concurrency`); `prompt_of(body)`
extracts a request's text prompt and `image_of(body)` its first uploaded image; `reset()` clears
all (for one server shared by many tests).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

# The request log of werkzeug's dev server is noise in test output.
logging.getLogger("werkzeug").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Behaviour:
    kind: str  # ok | raw | error | hang | empty | blocked | image
    text: str = ""  # the model's output text (ok, raw)
    status: int = 200
    retry_after: float | None = None
    latency_s: float = 0.0  # sleep before answering (hang: how long)
    prompt_tokens: int = 10
    completion_tokens: int = 5
    message: str = ""
    from_prompt: Callable[[str], Any] | None = None  # ok: the answer from the request's prompt
    image_fn: Callable[[bytes], bytes] | None = None  # image: the edited image from the uploaded one


def ok(obj: Any, *, latency_s: float = 0.0, prompt_tokens: int = 10, completion_tokens: int = 5) -> Behaviour:
    """A valid structured answer: `obj` (a dict, or a pydantic model) as JSON text."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    return Behaviour("ok", text=json.dumps(obj), latency_s=latency_s,
                     prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def ok_from_prompt(fn: Callable[[str], Any], *, latency_s: float = 0.0) -> Behaviour:
    """An answer computed from the request's text prompt: a dict or pydantic model (sent as JSON)
    or a str (sent as is). For checking reply order, or per-request outcomes under concurrency."""
    return Behaviour("ok", latency_s=latency_s, from_prompt=fn)


def raw_text(text: str, *, latency_s: float = 0.0) -> Behaviour:
    """An answer whose text is exactly `text` (e.g. truncated JSON, or JSON breaking the schema)."""
    return Behaviour("raw", text=text, latency_s=latency_s)


def http_error(status: int, *, retry_after: float | None = None, message: str = "") -> Behaviour:
    """An HTTP error in the API's own error format, with a Retry-After header when given."""
    return Behaviour("error", status=status, retry_after=retry_after, message=message or f"scripted HTTP {status}")


def hang(seconds: float) -> Behaviour:
    """Answer (validly) only after `seconds`: longer than the client's timeout."""
    return Behaviour("hang", latency_s=seconds, text="{}")


def empty() -> Behaviour:
    """HTTP 200 without an answer: empty `choices` (OpenAI) / no `candidates` (Gemini)."""
    return Behaviour("empty")


def blocked(reason: str = "SAFETY") -> Behaviour:
    """Gemini only: no candidates because the prompt was blocked."""
    return Behaviour("blocked", message=reason)


def invert_image(data: bytes) -> bytes:
    """The colour inverse of an image, as PNG: an "edit" a test can recompute exactly."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        out = io.BytesIO()
        ImageOps.invert(img.convert("RGB")).save(out, "PNG")
        return out.getvalue()


def image_ok(fn: Callable[[bytes], bytes] = invert_image, *, latency_s: float = 0.0,
             prompt_tokens: int = 10, completion_tokens: int = 5) -> Behaviour:
    """An image-edit answer: `fn(uploaded image)` (any bytes, so a test can send a broken image)."""
    return Behaviour("image", image_fn=fn, latency_s=latency_s,
                     prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    started: float  # time.monotonic() on arrival
    finished: float | None = None
    behaviour: Behaviour | None = None


@dataclass
class FakeVLMServer:
    """A running fake API. `url` is what the client's `base_url` should be."""

    httpserver: HTTPServer
    url: str
    default: Behaviour
    requests: list[RecordedRequest] = field(default_factory=list)
    max_concurrency: int = 0
    _queue: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _in_flight: int = 0
    _closing: threading.Event = field(default_factory=threading.Event)

    def enqueue(self, *behaviours: Behaviour) -> None:
        """Script the next requests, in order (then the default applies again)."""
        with self._lock:
            self._queue.extend(behaviours)

    def set_default(self, behaviour: Behaviour) -> None:
        with self._lock:
            self.default = behaviour

    def reset(self, default: Behaviour | None = None) -> None:
        """Release hanging requests, wait for in-flight ones to finish, then forget recorded
        requests, the queue and the concurrency peak (for reusing one server across tests)."""
        self._closing.set()
        deadline = time.monotonic() + 10
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            self._closing = threading.Event()
            self.requests.clear()
            self._queue.clear()
            self.max_concurrency = 0
            if default is not None:
                self.default = default

    # ---- serving ------------------------------------------------------------------------------
    @staticmethod
    def _body_of(request: Request) -> dict[str, Any]:
        if request.mimetype == "multipart/form-data":
            body: dict[str, Any] = request.form.to_dict()
            body["files"] = [{"field": name, "filename": f.filename, "content_type": f.content_type, "data": f.read()}
                             for name, f in request.files.items(multi=True)]
            return body
        try:
            return json.loads(request.get_data() or b"{}")
        except ValueError:
            return {}

    def _handle(self, request: Request) -> Response:
        body = self._body_of(request)
        record = RecordedRequest(request.path, dict(request.headers), body, time.monotonic())
        with self._lock:
            behaviour = self._queue.popleft() if self._queue else self.default
            record.behaviour = behaviour
            self.requests.append(record)
            self._in_flight += 1
            self.max_concurrency = max(self.max_concurrency, self._in_flight)
        try:
            if behaviour.latency_s:
                self._closing.wait(behaviour.latency_s)  # returns early when the server stops
            return self.render(behaviour, request, body)
        finally:
            with self._lock:
                self._in_flight -= 1
            record.finished = time.monotonic()

    def render(self, behaviour: Behaviour, request: Request, body: dict[str, Any]) -> Response:
        raise NotImplementedError

    @staticmethod
    def prompt_of(body: dict[str, Any]) -> str:
        """The text prompt of a request body."""
        raise NotImplementedError

    @staticmethod
    def image_of(body: dict[str, Any]) -> bytes:
        """The first image a request sent."""
        raise NotImplementedError

    def _edited(self, behaviour: Behaviour, body: dict[str, Any]) -> bytes:
        return (behaviour.image_fn or invert_image)(self.image_of(body))

    def _answer_text(self, behaviour: Behaviour, body: dict[str, Any]) -> str:
        if behaviour.from_prompt is None:
            return behaviour.text
        answer = behaviour.from_prompt(self.prompt_of(body))
        if isinstance(answer, str):
            return answer
        return json.dumps(answer.model_dump(mode="json") if hasattr(answer, "model_dump") else answer)

    @staticmethod
    def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(json.dumps(obj), status=status, headers=headers or {}, content_type="application/json")

    @staticmethod
    def _retry_headers(behaviour: Behaviour) -> dict[str, str]:
        return {"Retry-After": f"{behaviour.retry_after:g}"} if behaviour.retry_after is not None else {}


class OpenAIServer(FakeVLMServer):
    """`POST /v1/chat/completions` and `POST /v1/images/edits`."""

    @staticmethod
    def prompt_of(body: dict[str, Any]) -> str:
        if "prompt" in body:  # images/edits
            return body["prompt"]
        content = body["messages"][0]["content"]
        return content if isinstance(content, str) else next(p["text"] for p in content if p["type"] == "text")

    @staticmethod
    def image_of(body: dict[str, Any]) -> bytes:
        if "files" in body:  # images/edits
            return body["files"][0]["data"]
        url = next(p["image_url"]["url"] for p in body["messages"][0]["content"] if p["type"] == "image_url")
        return base64.b64decode(url.split(",", 1)[1])

    def render(self, behaviour: Behaviour, request: Request, body: dict[str, Any]) -> Response:
        if behaviour.kind == "error":
            error = {"message": behaviour.message, "type": "scripted_error", "code": None}
            return self._json({"error": error}, behaviour.status, self._retry_headers(behaviour))
        if request.path.endswith("/images/edits"):
            return self._render_image(behaviour, body)
        usage = {"prompt_tokens": behaviour.prompt_tokens, "completion_tokens": behaviour.completion_tokens,
                 "total_tokens": behaviour.prompt_tokens + behaviour.completion_tokens}
        choices = []
        if behaviour.kind != "empty":
            message = {"role": "assistant", "content": self._answer_text(behaviour, body)}
            choices = [{"index": 0, "finish_reason": "stop", "message": message}]
        model = body.get("model", "fake")
        return self._json({"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                           "model": model, "choices": choices, "usage": usage})

    def _render_image(self, behaviour: Behaviour, body: dict[str, Any]) -> Response:
        usage = {"input_tokens": behaviour.prompt_tokens, "output_tokens": behaviour.completion_tokens,
                 "total_tokens": behaviour.prompt_tokens + behaviour.completion_tokens,
                 "input_tokens_details": {"image_tokens": behaviour.prompt_tokens, "text_tokens": 0}}
        data = []
        if behaviour.kind != "empty":
            data = [{"b64_json": base64.b64encode(self._edited(behaviour, body)).decode()}]
        return self._json({"created": int(time.time()), "data": data, "output_format": "png", "usage": usage})


class GeminiServer(FakeVLMServer):
    """`POST /<version>/models/<model>:generateContent` (the SDK uses `v1` unless told otherwise)."""

    STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                    404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}

    @staticmethod
    def prompt_of(body: dict[str, Any]) -> str:
        return next(p["text"] for p in body["contents"][0]["parts"] if "text" in p)

    @staticmethod
    def image_of(body: dict[str, Any]) -> bytes:
        part = next(p for p in body["contents"][0]["parts"] if "inlineData" in p)
        return base64.urlsafe_b64decode(part["inlineData"]["data"])

    def render(self, behaviour: Behaviour, request: Request, body: dict[str, Any]) -> Response:
        if behaviour.kind == "error":
            error = {"code": behaviour.status, "message": behaviour.message,
                     "status": self.STATUS_NAMES.get(behaviour.status, "UNKNOWN")}
            return self._json({"error": error}, behaviour.status, self._retry_headers(behaviour))
        usage = {"promptTokenCount": behaviour.prompt_tokens, "candidatesTokenCount": behaviour.completion_tokens,
                 "totalTokenCount": behaviour.prompt_tokens + behaviour.completion_tokens}
        if behaviour.kind == "empty":
            return self._json({"candidates": [], "usageMetadata": usage})
        if behaviour.kind == "blocked":
            return self._json({"promptFeedback": {"blockReason": behaviour.message}, "usageMetadata": usage})
        if behaviour.kind == "image":  # text first, as Gemini often does: the client must look past it
            data = base64.b64encode(self._edited(behaviour, body)).decode()
            parts = [{"text": "Here is the edited image."}, {"inlineData": {"mimeType": "image/png", "data": data}}]
        else:
            parts = [{"text": self._answer_text(behaviour, body)}]
        content = {"role": "model", "parts": parts}
        candidate = {"content": content, "finishReason": "STOP", "index": 0}
        return self._json({"candidates": [candidate], "usageMetadata": usage, "modelVersion": "fake"})


@contextmanager
def _serve(
    cls: type[FakeVLMServer], path: re.Pattern, url_suffix: str, default: Behaviour | None
) -> Iterator[FakeVLMServer]:
    httpserver = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server = cls(httpserver=httpserver, url="", default=default or raw_text("{}"))
    httpserver.expect_request(path, method="POST").respond_with_handler(server._handle)
    httpserver.start()
    server.url = httpserver.url_for(url_suffix).rstrip("/")
    try:
        yield server
    finally:
        server._closing.set()  # release hanging handlers
        httpserver.clear()
        httpserver.stop()


@contextmanager
def openai_server(default: Behaviour | None = None) -> Iterator[FakeVLMServer]:
    """An OpenAI-compatible server; its `url` ends in `/v1` (a client's `base_url`)."""
    with _serve(OpenAIServer, re.compile(r"^/v1/(chat/completions|images/edits)$"), "/v1", default) as server:
        yield server


@contextmanager
def gemini_server(default: Behaviour | None = None) -> Iterator[FakeVLMServer]:
    """A Gemini API server; its `url` is the host root (a client's `HttpOptions.base_url`)."""
    with _serve(GeminiServer, re.compile(r"^/v1(beta|alpha)?/models/[^/:]+:generateContent$"), "/", default) as server:
        yield server
