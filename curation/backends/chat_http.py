"""The HTTP client of the OpenAI-compatible chat backends (`openai`, `vllm`): aiohttp, one session
per endpoint, talking JSON to `POST /chat/completions` and `GET /models`.

Why not the `openai` SDK here: a VLM stage sends hundreds of requests a second from one worker, and
the client's CPU per request is what caps it (it shares the worker's GIL with the stage). Measured
on this 2-core machine, 1,500 annotate requests (two 1024 px frames each) at 64 in flight: the SDK
over its httpx transport 2.6 ms of CPU per request, the SDK over aiohttp 1.9 ms, aiohttp alone
1.1 ms, of which building the body is 0.4 ms (`bench/vlm_throughput.py` measures the stage).
The endpoint is one POST whose body `vlm_openai.chat_body` already builds, so the SDK adds nothing
but that cost; vLLM's own serving benchmark client speaks to it the same way. The image APIs
(multipart uploads, `image_edit.py`) keep the SDK.

What the SDK gave and this keeps: the `Authorization: Bearer` key, `OPENAI_BASE_URL`,
`OPENAI_ORG_ID` and `OPENAI_PROJECT_ID` when set, proxies from the environment, one timeout per
request, and no retries of its own (the shared retry loop in `vlm_base` counts and paces them).
Failures are classified by `classify`, with the same reasons the stage summaries always showed.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from curation.backends.limits import Failure, parse_retry_after, status_failure
from curation.backends.vlm_base import short

OPENAI_URL = "https://api.openai.com/v1"


class HTTPStatusError(Exception):
    """A response with an error status: the status, the server's own message, its Retry-After."""

    def __init__(self, status: int, message: str, retry_after_s: float | None):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


class BadResponse(Exception):
    """A 2xx response whose body is not a JSON object (a proxy's HTML page, a truncated answer)."""


def error_message(body: Any) -> str | None:
    """The message of an API error body, `{"error": {"message": ...}}` or `{"message": ...}` (the
    SDK's exceptions carry either as `.body`); None when it holds none."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    message = body.get("message") or (error.get("message") if isinstance(error, dict) else error)
    return str(message) if message else None


def _server_message(payload: bytes, fallback: str) -> str:
    """An error response's message, else its text, else the status reason."""
    try:
        body = json.loads(payload)
    except ValueError:
        text = payload.decode("utf-8", "replace").strip()
        return short(text) if text else fallback
    return short(error_message(body) or json.dumps(body))


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTP_PROXY / HTTPS_PROXY, unless NO_PROXY spares
    its host), as the SDK honoured them. Looked up once per endpoint: aiohttp's `trust_env` looks
    it up again for every request, in a thread, which was a tenth of the client's CPU."""
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


class ChatEndpoint:
    """One OpenAI-compatible server (or api.openai.com) as one worker sees it: an aiohttp session
    with at most `max_connections` open connections, kept alive between requests. Create it on the
    event loop that will use it (aiohttp binds a session to its loop)."""

    def __init__(self, base_url: str | None, api_key: str | None, timeout_s: float, max_connections: int):
        import aiohttp

        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "Authorization": f"Bearer {api_key or 'EMPTY'}"}  # keyless servers (vLLM, SGLang) accept anything
        for variable, header in (("OPENAI_ORG_ID", "OpenAI-Organization"), ("OPENAI_PROJECT_ID", "OpenAI-Project")):
            if os.environ.get(variable):
                headers[header] = os.environ[variable]
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=300),
            proxy=env_proxy(self.base_url),
            raise_for_status=False,
        )
        self._urls: dict[str, Any] = {}

    def _url(self, path: str) -> Any:
        """`base_url + path`, parsed once per path (a URL is parsed again on every request otherwise)."""
        url = self._urls.get(path)
        if url is None:
            from yarl import URL

            url = self._urls[path] = URL(self.base_url + path)
        return url

    async def post(self, path: str, body: bytes) -> dict[str, Any]:
        """POST a JSON body; the response's JSON object. Raises HTTPStatusError, BadResponse, or
        aiohttp's connection and timeout errors."""
        async with self._session.post(self._url(path), data=body) as response:
            return self._read(response, await response.read())

    async def get(self, path: str) -> dict[str, Any]:
        async with self._session.get(self._url(path)) as response:
            return self._read(response, await response.read())

    async def answers(self, url: str, timeout_s: float) -> bool:
        """Whether a GET of `url` (on this server: its `/health`) answers 200 within `timeout_s`."""
        import aiohttp

        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                return response.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    @staticmethod
    def _read(response: Any, payload: bytes) -> dict[str, Any]:
        if response.status >= 400:
            raise HTTPStatusError(response.status, _server_message(payload, response.reason or ""),
                                  parse_retry_after(response.headers))
        try:
            body = json.loads(payload)
        except ValueError as e:
            text = short(payload[:200].decode("utf-8", "replace"))
            raise BadResponse(f"HTTP {response.status} with a body that is not JSON: {text}") from e
        if not isinstance(body, dict):
            raise BadResponse(f"HTTP {response.status} with a JSON {type(body).__name__}, not an object")
        return body

    async def close(self) -> None:
        await self._session.close()


def classify(exc: Exception) -> Failure | None:
    """What a failed exchange with a `ChatEndpoint` means; None for anything else (the caller's
    own classification, or an unexpected error that is not retried). Timeouts are not here: the
    shared retry loop names them (`vlm_timeout`) for every backend alike."""
    import aiohttp

    if isinstance(exc, HTTPStatusError):
        return status_failure(exc.status, exc.message, exc.retry_after_s)
    if isinstance(exc, BadResponse):
        return Failure(f"vlm_bad_response: {short(str(exc))}", retryable=True)
    if isinstance(exc, aiohttp.ClientError):  # refused, dropped, truncated or malformed: worth another try
        return Failure(f"vlm_connection: {short(str(exc) or type(exc).__name__)}", retryable=True)
    return None


def server_gone(exc: Exception) -> bool:
    """The server could not be reached or dropped the connection (it died, or restarts), as
    opposed to being slow (a timeout) or answering with an error."""
    import aiohttp

    # asyncio.TimeoutError, not the builtin: they are one class only from Python 3.11.
    return isinstance(exc, aiohttp.ClientConnectionError) and not isinstance(exc, asyncio.TimeoutError)
