"""OpenAI-compatible chat completions (OpenAI, vLLM, SGLang) with a JSON-schema response format.

`strict` is off: OpenAI's strict mode forbids objects with `additionalProperties` schemas, which
VINCIE's caption map needs; vLLM and SGLang apply the schema by guided decoding either way, and
every reply is validated against the pydantic model afterwards.
"""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

from pydantic import BaseModel

from curation.backends.limits import Failure, parse_retry_after, status_failure
from curation.backends.usage import VLMError
from curation.backends.vlm_base import Completion, EmptyResponse, VLMBackend, image_mime, json_schema_of, short


def _error_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            return str(message)
    return str(getattr(exc, "message", "") or exc)


@functools.lru_cache(maxsize=64)
def _body_head(model: str, schema: type[BaseModel], temperature: float, max_tokens: int, options_json: str) -> bytes:
    """Everything of a request body but its messages, as the JSON object's opening (once per schema
    and options). `options_json`: `VLMConfig.sampling_options()` as JSON (a dict is not hashable)."""
    options = json.loads(options_json)
    head = {
        "model": model,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": schema.__name__, "schema": json_schema_of(schema), "strict": False},
        },
        "temperature": temperature,
        "max_completion_tokens": max_tokens,
    }
    if "top_p" in options:
        head["top_p"] = options["top_p"]
    if "top_k" in options:  # not an OpenAI field: vLLM and SGLang read it from the top level, as the SDK's extra_body puts it
        head["top_k"] = options["top_k"]
    # extra_body last, as the SDK merges it: its keys win (e.g. a server-specific sampling field).
    head.update(options.get("extra_body") or {})
    return json.dumps(head, separators=(",", ":")).encode()[:-1]


def chat_body(model: str, prompt: str, images: list[bytes], schema: type[BaseModel], temperature: float,
              max_tokens: int, options: dict[str, Any] | None = None, images_first: bool = False) -> bytes:
    """The chat-completions request body, JSON bytes: one user message, the prompt then each image
    as a base64 data URL (the images first with `images_first`); `options` are top_p, top_k and
    extra_body (`VLMConfig.sampling_options`).
    Built here rather than by the SDK's `create`, which walks every message
    through its TypedDict transform and JSON-encodes the whole body again: with two 1024 px frames
    (~430 KB of base64) that was a third of the client's CPU per request. Base64 needs no JSON
    escaping, so the image parts are joined in as bytes."""
    text = json.dumps({"type": "text", "text": prompt}, separators=(",", ":")).encode()
    parts = []
    for img in images:
        url = b"data:" + image_mime(img).encode() + b";base64," + base64.b64encode(img)
        parts.append(b'{"type":"image_url","image_url":{"url":"' + url + b'"}}')
    parts = [*parts, text] if images_first else [text, *parts]
    head = _body_head(model, schema, temperature, max_tokens, json.dumps(options or {}, sort_keys=True))
    return b"".join([head, b',"messages":[{"role":"user","content":[', b",".join(parts), b"]}]}"])


class OpenAIVLM(VLMBackend):
    backend = "openai"

    async def _open(self) -> None:
        self._client = self._make_client(self.cfg.base_url)

    def _make_client(self, base_url: str | None) -> Any:
        import openai

        client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=self._api_key() or "EMPTY",  # keyless servers (vLLM, SGLang; pricing self_hosted) accept anything
            timeout=self.cfg.timeout_s,
            max_retries=0,  # ours are the only retries, so they are counted and paced
        )
        # Import the resource modules now, not inside the first rate-limited request.
        _ = client.chat.completions
        return client

    async def _aclose(self) -> None:
        await self._client.close()

    async def _probe(self) -> str:
        """`GET /models`: the endpoint answers, accepts the key, and lists the model."""
        served = [m.id async for m in self._client.models.list()]
        if served and self.cfg.model not in served:
            shown = ", ".join(served[:5]) + (" ..." if len(served) > 5 else "")
            raise VLMError(f"model_not_served: {self.cfg.model} is not among the {len(served)} models it serves ({shown})")
        return f"answers; serves {self.cfg.model}"

    async def _call(self, prompt: str, images: list[bytes], schema: type[BaseModel], images_first: bool = False) -> Completion:
        return await self._complete(self._client, prompt, images, schema, images_first)

    async def _complete(self, client: Any, prompt: str, images: list[bytes], schema: type[BaseModel],
                        images_first: bool = False) -> Completion:
        """One chat completion through `client` (a subclass may spread calls over several)."""
        from openai.types.chat import ChatCompletion

        body = chat_body(self.cfg.model, prompt, images, schema, self.cfg.temperature, self.cfg.max_tokens,
                         self.cfg.sampling_options(), images_first)
        response = await client.post("/chat/completions", cast_to=ChatCompletion, content=body)
        usage = response.usage
        prompt_tokens = (usage.prompt_tokens or 0) if usage else 0
        completion_tokens = (usage.completion_tokens or 0) if usage else 0
        details = usage.completion_tokens_details if usage else None
        reasoning_tokens = (details.reasoning_tokens or 0) if details else 0  # already in completion_tokens
        if not response.choices:
            raise EmptyResponse("the response has no choices", prompt_tokens, completion_tokens)
        return Completion(response.choices[0].message.content or "", prompt_tokens, completion_tokens,
                          thinking_tokens=reasoning_tokens)

    def _classify(self, exc: Exception) -> Failure | None:
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return Failure(f"vlm_timeout: no response within {self.cfg.timeout_s:g}s", retryable=True)
        if isinstance(exc, openai.APIConnectionError):
            return Failure(f"vlm_connection: {short(str(exc.__cause__ or exc))}", retryable=True)
        if isinstance(exc, openai.APIStatusError):
            return status_failure(exc.status_code, short(_error_message(exc)), parse_retry_after(exc.response.headers))
        return None
