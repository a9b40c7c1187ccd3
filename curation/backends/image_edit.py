"""Image-editing APIs for reference synthesis: OpenAI `images.edit` and Gemini image output,
chosen by config (`backend: openai|gemini`).

The editors are the VLM backends with another `_call`, so the response cache, bounded
concurrency, rate limit, retries with backoff, budget and key scrubbing of `vlm_base.VLMBackend`
run unchanged, configured by the same transport fields (`transport.TransportConfig`). An edited
image travels through that machinery as one more structured answer, the JSON object
`EditedImage` (the image in base64): it is validated, cached and replayed like a VLM's answer,
and a request's output settings join the cache key through its salt.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from curation.backends.budget import Budget
from curation.backends.chat_http import error_message
from curation.backends.limits import Failure, parse_retry_after, status_failure
from curation.backends.models import model_ref
from curation.backends.transport import TransportConfig, transport_default
from curation.backends.usage import VLMError, VLMUsage
from curation.backends.vlm_base import Completion, EmptyResponse, VLMBackend, VLMReply, VLMRequest, image_mime, short
from curation.backends.vlm_gemini import GeminiVLM
from curation.backends.vlm_openai import OpenAIVLM
from curation.core.config_change import RUN_ONLY
from curation.core.stage import ModelRef

# Reason prefix of an answer that carries no image (Gemini answered in text, or refused).
NO_IMAGE = "image_edit_no_image"
# Reason prefix of an image that does not decode (or a corrupt cache entry).
BAD_OUTPUT = "image_edit_bad_output"
# What the cache key says for sampling: an edit has none, and these are the values the key has
# always held (the VLM defaults), so images already stored stay valid.
CACHE_KEY_SAMPLING = (0.0, 1024)


class ImageEditConfig(TransportConfig):
    """Which image-editing API to call and how hard: the transport (`TransportConfig`), with the
    defaults an edit needs, plus the output size and the price of an image."""

    cache_name: ClassVar[str] = "image_edit"

    backend: Literal["openai", "gemini"] = Field(description="openai (images.edit) or gemini (image output)")
    # An edit takes tens of seconds and each one is billed: fewer at once, longer waits, and
    # inputs kept larger (an edit is only as sharp as what it was given).
    max_in_flight: int = transport_default("max_in_flight", 4)
    timeout_s: float = transport_default("timeout_s", 180.0)
    backoff_max_s: float = transport_default("backoff_max_s", 60.0)
    image_max_side: int | None = transport_default("image_max_side", 1536)
    size: str | None = Field(
        None, pattern=r"^(auto|\d+x\d+)$",
        description="openai only: output WIDTHxHEIGHT or auto; None = the API's default")
    usd_per_image: float = Field(0.0, ge=0, json_schema_extra=RUN_ONLY, description="price of one returned image (cost, budget)")

    @model_validator(mode="after")
    def _size_is_openai_only(self) -> ImageEditConfig:
        if self.size is not None and self.backend != "openai":
            raise ValueError(f"size is an openai setting; the {self.backend} backend cannot honour it")
        return self


class EditedImage(BaseModel):
    """An edited image as the VLM machinery carries and caches it."""

    image_b64: str = Field(min_length=1, description="the returned image file (PNG, JPEG or WebP), base64")


@dataclass
class ImageEditRequest:
    prompt: str  # the edit instruction
    image: bytes  # the source image, encoded (JPEG/PNG/WebP)
    cache_salt: str = ""  # e.g. the prompt template's hash; part of the cache key
    # openai only: an RGBA PNG of the image's size whose transparent pixels are where the edit may
    # paint (images.edit `mask`); it travels as a second image, so it is part of the cache key too
    mask: bytes | None = None


@dataclass
class ImageEditReply:
    image: bytes  # the edited image file as the API returned it (PNG unless the API chose otherwise)
    usage: VLMUsage


# --------------------------------------------------------------------------------------------
# the editor protocol
# --------------------------------------------------------------------------------------------


class ImageEditor(VLMBackend):
    """`edit_many` on top of a VLM backend; subclasses mix it with one (`OpenAIVLM`,
    `GeminiVLM`) and implement `_call` with the image API, returning `self._answer(...)`."""

    cfg: ImageEditConfig

    # An edit has no sampling, no token rate and no token price (it is priced per image, below).
    def _sampling(self) -> tuple[float, int]:
        return CACHE_KEY_SAMPLING

    def _sampling_options(self) -> dict[str, Any]:
        return {}

    def _tokens_per_minute(self) -> float | None:
        return None

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return 0.0

    def edit_many(self, requests: list[ImageEditRequest]) -> list[ImageEditReply | VLMError]:
        """All requests concurrently (bounded by max_in_flight and the rate limit), results in
        input order. A per-request failure is returned as a VLMError, never raised."""
        replies = self.generate_many(
            [VLMRequest(r.prompt, [r.image] if r.mask is None else [r.image, r.mask], EditedImage, self._salt(r.cache_salt))
             for r in requests])
        return [self._edit_reply(reply) for reply in replies]

    def _salt(self, cache_salt: str) -> str:
        """The caller's salt plus every output setting, so that changing one misses the cache."""
        return json.dumps({"task": "image_edit", "size": self.cfg.size, "salt": cache_salt}, sort_keys=True)

    @staticmethod
    def _edit_reply(reply: VLMReply | VLMError) -> ImageEditReply | VLMError:
        if isinstance(reply, VLMError):
            return reply
        if not isinstance(reply.parsed, EditedImage):  # only an unreadable cache entry gets here
            return VLMError(f"{BAD_OUTPUT}: {reply.error or 'no image in the answer'}", reply.usage)
        return ImageEditReply(base64.b64decode(reply.parsed.image_b64), reply.usage)

    def _answer(self, image: bytes, prompt_tokens: int, completion_tokens: int) -> Completion:
        """The returned image as a Completion, priced per image. An image that does not decode is
        retried (EmptyResponse) before it can reach the cache."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(image)) as img:
                img.verify()
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise EmptyResponse(f"the returned image does not decode: {short(str(e), 120)}", prompt_tokens,
                                completion_tokens, prefix=BAD_OUTPUT) from e
        raw = EditedImage(image_b64=base64.b64encode(image).decode()).model_dump_json()
        return Completion(raw, prompt_tokens, completion_tokens, usd=self.cfg.usd_per_image)


class OpenAIImageEditor(ImageEditor, OpenAIVLM):
    """`POST /images/edits` (multipart upload of the source image) through the `openai` SDK, which
    builds the multipart body; GPT image models always answer with `b64_json`. `GET /models`
    (`--dry-run`'s probe) goes through the chat backend's client."""

    async def _open(self) -> None:
        import openai

        await super()._open()
        self._sdk = openai.AsyncOpenAI(
            base_url=self._client.base_url,
            api_key=self._api_key() or "EMPTY",
            timeout=self.cfg.timeout_s,
            max_retries=0,  # ours are the only retries, so they are counted and paced
        )
        _ = self._sdk.images  # import the resource module now, not inside the first request

    async def _aclose(self) -> None:
        await self._sdk.close()
        await super()._aclose()

    def _classify(self, exc: Exception) -> Failure | None:
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return Failure(f"vlm_timeout: no response within {self.cfg.timeout_s:g}s", retryable=True)
        if isinstance(exc, openai.APIConnectionError):
            return Failure(f"vlm_connection: {short(str(exc.__cause__ or exc))}", retryable=True)
        if isinstance(exc, openai.APIStatusError):
            message = error_message(getattr(exc, "body", None)) or str(getattr(exc, "message", "") or exc)
            return status_failure(exc.status_code, short(message), parse_retry_after(exc.response.headers))
        return super()._classify(exc)

    async def _call(self, prompt: str, images: list[bytes], schema: type[BaseModel], images_first: bool = False) -> Completion:
        image, *mask = images
        mime = image_mime(image)
        options: dict[str, Any] = {"size": self.cfg.size} if self.cfg.size else {}
        if mask:
            options["mask"] = ("mask.png", mask[0], "image/png")
        response = await self._sdk.images.edit(
            model=self.cfg.model, image=(f"image.{mime.split('/')[1]}", image, mime), prompt=prompt, n=1, **options)
        return self._image_of(response)

    def _image_of(self, response: Any) -> Completion:
        """The first image of an images API response (`images.edit` and `images.generate` answer alike)."""
        usage = response.usage
        prompt_tokens = usage.input_tokens if usage else 0
        completion_tokens = usage.output_tokens if usage else 0
        if not response.data:
            raise EmptyResponse("the response has no images", prompt_tokens, completion_tokens)
        if not response.data[0].b64_json:
            raise EmptyResponse("the response has no b64_json image (a URL-only model?)", prompt_tokens,
                                completion_tokens, prefix=NO_IMAGE, retryable=False)
        return self._answer(base64.b64decode(response.data[0].b64_json), prompt_tokens, completion_tokens)


class GeminiImageEditor(ImageEditor, GeminiVLM):
    """`generateContent` with the source image inline and image output enabled; the answer is the
    first non-thought inline image part. Errors are classified by `GeminiVLM._classify`."""

    async def _call(self, prompt: str, images: list[bytes], schema: type[BaseModel], images_first: bool = False) -> Completion:
        from google.genai import types

        (image,) = images
        config = types.GenerateContentConfig(
            # TEXT too: some Gemini image models refuse image-only output.
            response_modalities=["TEXT", "IMAGE"],
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )
        contents: list = [prompt, types.Part.from_bytes(data=image, mime_type=image_mime(image))]
        response = await self._client.aio.models.generate_content(
            model=self.cfg.model, contents=contents, config=config)
        return self._image_of(response)

    def _image_of(self, response: Any) -> Completion:
        """The first non-thought inline image of a generateContent response (edited or generated)."""
        meta = response.usage_metadata
        prompt_tokens = (meta.prompt_token_count or 0) if meta else 0
        completion_tokens = ((meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)) if meta else 0
        if not response.candidates:
            feedback = response.prompt_feedback
            if feedback is not None and feedback.block_reason:  # deterministic: not retried
                raise EmptyResponse(f"prompt blocked ({feedback.block_reason})", prompt_tokens, completion_tokens,
                                    prefix=NO_IMAGE, retryable=False)
            raise EmptyResponse("the response has no candidates", prompt_tokens, completion_tokens)
        candidate = response.candidates[0]
        parts = (candidate.content.parts if candidate.content else None) or []
        for part in parts:
            blob = part.inline_data
            # Thinking models may send draft images as thought parts before the final one.
            if blob and blob.data and (blob.mime_type or "").startswith("image/") and not part.thought:
                return self._answer(blob.data, prompt_tokens, completion_tokens)
        # A refusal or a description instead of an edit: the same request tends to get the same
        # answer, so it is recorded, not retried (a rerun with retry_errors tries again).
        text = " ".join(part.text for part in parts if part.text)
        finish = getattr(candidate.finish_reason, "value", candidate.finish_reason)
        raise EmptyResponse(f"finish_reason={finish}, text: {short(text, 120)!r}",
                            prompt_tokens, completion_tokens, prefix=NO_IMAGE, retryable=False)


_EDITORS: dict[str, type[ImageEditor]] = {"openai": OpenAIImageEditor, "gemini": GeminiImageEditor}


def make_image_editor(cfg: ImageEditConfig, budget: Budget | None = None) -> ImageEditor:
    """The editor `cfg.backend` names. Nothing connects until `open()` or the first batch."""
    return _EDITORS[cfg.backend](cfg, budget)


class EditorClient:
    """What a backend that calls an image-edit API holds: the config, the run's budget, and the
    editor, opened once per worker (reference synthesis's and object removal's `api` backends)."""

    def __init__(self, cfg: ImageEditConfig, budget: Budget | None = None):
        self.cfg = cfg
        self.budget = budget  # the run's ledger (shared by every worker), or None: no cap
        self._editor: ImageEditor | None = None

    def open(self) -> None:
        """Create the editor and its client (a failure to connect is only logged: each request retries it)."""
        self._editor = make_image_editor(self.cfg, self.budget)
        self._editor.open()

    def model(self) -> ModelRef:
        return model_ref(self.cfg.model, f"api:{self.cfg.backend}:{self.cfg.model}")
