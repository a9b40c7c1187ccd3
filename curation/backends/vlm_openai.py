"""OpenAI-compatible chat completions (OpenAI, vLLM, SGLang) with a JSON-schema response format.

`strict` is off: OpenAI's strict mode forbids objects with `additionalProperties` schemas, which
VINCIE's caption map needs; vLLM and SGLang apply the schema by guided decoding either way, and
every reply is validated against the pydantic model afterwards.
"""

from __future__ import annotations

import base64
from typing import Any

from pydantic import BaseModel

from curation.backends.limits import Failure, parse_retry_after, status_failure
from curation.backends.vlm_base import Completion, EmptyResponse, VLMBackend, image_mime, json_schema_of, short


def _error_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            return str(message)
    return str(getattr(exc, "message", "") or exc)


class OpenAIVLM(VLMBackend):
    backend = "openai"

    async def _open(self) -> None:
        import openai

        self._client = openai.AsyncOpenAI(
            base_url=self.cfg.base_url,
            api_key=self._api_key() or "EMPTY",  # keyless local servers (vLLM, SGLang) accept anything
            timeout=self.cfg.timeout_s,
            max_retries=0,  # ours are the only retries, so they are counted and paced
        )
        # Import the resource modules now, not inside the first rate-limited request.
        _ = self._client.chat.completions

    async def _aclose(self) -> None:
        await self._client.close()

    async def _call(self, prompt: str, images: list[bytes], schema: type[BaseModel]) -> Completion:
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        for img in images:
            url = f"data:{image_mime(img)};base64,{base64.b64encode(img).decode()}"
            content.append({"type": "image_url", "image_url": {"url": url}})
        response = await self._client.chat.completions.create(
            model=self.cfg.model,
            messages=[{"role": "user", "content": content}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": schema.__name__, "schema": json_schema_of(schema), "strict": False},
            },
            temperature=self.cfg.temperature,
            max_completion_tokens=self.cfg.max_tokens,
        )
        usage = response.usage
        prompt_tokens = (usage.prompt_tokens or 0) if usage else 0
        completion_tokens = (usage.completion_tokens or 0) if usage else 0
        if not response.choices:
            raise EmptyResponse("the response has no choices", prompt_tokens, completion_tokens)
        return Completion(response.choices[0].message.content or "", prompt_tokens, completion_tokens)

    def _classify(self, exc: Exception) -> Failure | None:
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return Failure(f"vlm_timeout: no response within {self.cfg.timeout_s:g}s", retryable=True)
        if isinstance(exc, openai.APIConnectionError):
            return Failure(f"vlm_connection: {short(str(exc.__cause__ or exc))}", retryable=True)
        if isinstance(exc, openai.APIStatusError):
            return status_failure(exc.status_code, short(_error_message(exc)), parse_retry_after(exc.response.headers))
        return None
