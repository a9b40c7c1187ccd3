"""Gemini through `google-genai`, with the output constrained by `response_json_schema` (the
JSON-schema field, which takes `$defs`/`$ref` and `additionalProperties` as pydantic writes them).

The SDK's own retries are off (`HttpRetryOptions(attempts=1)`; with no retry options it would
still retry some connection errors on its own), so ours are the only ones and are counted.

Thinking: Gemini 2.5 counts its thoughts against `max_output_tokens`, so a long chain of thought can
cut the JSON answer off (and the re-ask is paid again). With `vlm.thinking_budget` set, the request
carries `ThinkingConfig(thinking_budget=...)` and an output limit of max_tokens + thinking_budget,
so the answer always keeps its own max_tokens. Thoughts are billed as output and counted so.
"""

from __future__ import annotations

from pydantic import BaseModel

from curation.backends.limits import Failure, parse_retry_after, status_failure
from curation.backends.usage import VLMError
from curation.backends.vlm_base import Completion, EmptyResponse, VLMBackend, image_mime, json_schema_of, short


def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(timeouts, other transport errors) of whichever HTTP stacks the SDK may be using."""
    timeouts: list[type[BaseException]] = []
    transport: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        timeouts.append(module.TimeoutException)
        transport.append(module.TransportError)
    try:
        import aiohttp

        timeouts.append(aiohttp.ServerTimeoutError)
        transport.append(aiohttp.ClientConnectionError)
    except ImportError:
        pass
    return tuple(timeouts), tuple(transport)


class GeminiVLM(VLMBackend):
    backend = "gemini"

    async def _open(self) -> None:
        from google import genai
        from google.genai import types

        http_options = types.HttpOptions(
            base_url=self.cfg.base_url,
            timeout=int(self.cfg.timeout_s * 1000),  # milliseconds
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        key = self._api_key()
        if key is None and getattr(self.cfg, "pricing", "hosted") == "self_hosted":  # an image editor's has none
            key = "EMPTY"  # a self-hosted endpoint needs none, but the SDK refuses to start without one
        try:
            self._client = genai.Client(api_key=key, http_options=http_options)
        except ValueError as e:  # no key anywhere
            raise VLMError(f"vlm_auth: {short(str(e))}") from e
        self._timeouts, self._transport = _transport_errors()

    async def _aclose(self) -> None:
        await self._client.aio.aclose()

    async def _probe(self) -> str:
        """`GET models/<model>`: the endpoint answers, accepts the key, and knows the model."""
        await self._client.aio.models.get(model=self.cfg.model)  # a model it does not know is an HTTP 404
        return f"answers; serves {self.cfg.model}"

    async def _call(self, prompt: str, images: list[bytes], schema: type[BaseModel], images_first: bool = False) -> Completion:
        from google.genai import types

        parts = [types.Part.from_bytes(data=img, mime_type=image_mime(img)) for img in images]
        contents: list = [*parts, prompt] if images_first else [prompt, *parts]
        config = types.GenerateContentConfig(
            response_mime_type="application/json",
            response_json_schema=json_schema_of(schema),
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,  # None: the model's default
            top_k=self.cfg.top_k,
            max_output_tokens=self.cfg.output_token_limit(),
            thinking_config=(None if self.cfg.thinking_budget is None
                             else types.ThinkingConfig(thinking_budget=self.cfg.thinking_budget)),
            # No tools are declared; this also silences the SDK's per-call "AFC is enabled" log.
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )
        response = await self._client.aio.models.generate_content(model=self.cfg.model, contents=contents, config=config)
        meta = response.usage_metadata
        prompt_tokens = (meta.prompt_token_count or 0) if meta else 0
        # Thinking tokens are billed as output.
        thinking_tokens = (meta.thoughts_token_count or 0) if meta else 0
        completion_tokens = ((meta.candidates_token_count or 0) if meta else 0) + thinking_tokens
        if not response.candidates:
            feedback = response.prompt_feedback
            if feedback is not None and feedback.block_reason:
                # Deterministic: the same prompt would be blocked again.
                raise EmptyResponse(f"prompt blocked ({feedback.block_reason})", prompt_tokens, completion_tokens,
                                    prefix="vlm_blocked", retryable=False)
            raise EmptyResponse("the response has no candidates", prompt_tokens, completion_tokens)
        return Completion(response.text or "", prompt_tokens, completion_tokens, thinking_tokens=thinking_tokens)

    def _classify(self, exc: Exception) -> Failure | None:
        from google.genai import errors

        if isinstance(exc, errors.APIError):
            headers = getattr(getattr(exc, "response", None), "headers", None)
            message = short(exc.message or exc.status or str(exc))
            return status_failure(int(exc.code or 0), message, parse_retry_after(headers))
        if isinstance(exc, self._timeouts):
            return Failure(f"vlm_timeout: no response within {self.cfg.timeout_s:g}s", retryable=True)
        if isinstance(exc, self._transport):
            return Failure(f"vlm_connection: {type(exc).__name__}: {short(str(exc))}", retryable=True)
        return None
