"""OpenAI-compatible chat completions (OpenAI, vLLM, SGLang) with a JSON-schema response format.

`strict` is off: OpenAI's strict mode forbids objects with `additionalProperties` schemas, which
VINCIE's caption map needs; vLLM and SGLang apply the schema by guided decoding either way, and
every reply is validated against the pydantic model afterwards.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from pydantic import BaseModel

from curation.backends.chat_http import ChatEndpoint, classify
from curation.backends.limits import Failure
from curation.backends.usage import VLMError
from curation.backends.vlm_base import Completion, EmptyResponse, VLMBackend, image_mime, json_schema_of


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
    escaping, so the image parts are joined in as bytes; pybase64 encodes them (SIMD: 0.01 ms for a
    160 KB frame where the standard library takes 0.16 ms, on the loop thread that sends everything)."""
    import pybase64  # here, not at the top: importing the VLM backends must not need it (bench/gpu_check.py)

    text = [json.dumps({"type": "text", "text": prompt}, separators=(",", ":")).encode()]
    # One flat list of pieces and one join: each frame's base64 is copied once into the body.
    image_parts = [[b'{"type":"image_url","image_url":{"url":"data:', image_mime(img).encode(), b";base64,",
                    pybase64.b64encode(img), b'"}}'] for img in images]
    parts = [*image_parts, text] if images_first else [text, *image_parts]
    head = _body_head(model, schema, temperature, max_tokens, json.dumps(options or {}, sort_keys=True))
    pieces = [head, b',"messages":[{"role":"user","content":[']
    for i, part in enumerate(parts):
        if i:
            pieces.append(b",")
        pieces.extend(part)
    pieces.append(b"]}]}")
    return b"".join(pieces)


class OpenAIVLM(VLMBackend):
    backend = "openai"

    async def _open(self) -> None:
        self._client = self._endpoint(self.cfg.base_url)

    def _endpoint(self, base_url: str | None) -> ChatEndpoint:
        """A client for one server, holding up to max_in_flight connections (`chat_http.py` says why
        not the SDK)."""
        return ChatEndpoint(base_url, self._api_key(), self.cfg.timeout_s, self._max_in_flight())

    async def _aclose(self) -> None:
        await self._client.close()

    async def _probe(self) -> str:
        """`GET /models`: the endpoint answers, accepts the key, and lists the model."""
        listed = (await self._client.get("/models")).get("data") or []
        served = [str(m.get("id")) for m in listed if isinstance(m, dict)]
        if served and self.cfg.model not in served:
            shown = ", ".join(served[:5]) + (" ..." if len(served) > 5 else "")
            raise VLMError(f"model_not_served: {self.cfg.model} is not among the {len(served)} models it serves ({shown})")
        return f"answers; serves {self.cfg.model}"

    async def _call(self, prompt: str, images: list[bytes], schema: type[BaseModel], images_first: bool = False) -> Completion:
        return await self._complete(self._client, prompt, images, schema, images_first)

    async def _complete(self, client: ChatEndpoint, prompt: str, images: list[bytes], schema: type[BaseModel],
                        images_first: bool = False) -> Completion:
        """One chat completion through `client` (a subclass may spread calls over several)."""
        body = chat_body(self.cfg.model, prompt, images, schema, self.cfg.temperature, self.cfg.max_tokens,
                         self.cfg.sampling_options(), images_first)
        return completion_of(await client.post("/chat/completions", body))

    def _classify(self, exc: Exception) -> Failure | None:
        return classify(exc)


def completion_of(response: dict[str, Any]) -> Completion:
    """The answer text and token counts of a chat-completions response body. Reasoning tokens are
    already part of `completion_tokens`; they are reported apart as thinking."""
    usage = response.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    completion_tokens = int(usage.get("completion_tokens") or 0)
    reasoning_tokens = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    choices = response.get("choices") or []
    if not choices:
        raise EmptyResponse("the response has no choices", prompt_tokens, completion_tokens)
    message = choices[0].get("message") or {}
    return Completion(message.get("content") or "", prompt_tokens, completion_tokens, thinking_tokens=reasoning_tokens)
