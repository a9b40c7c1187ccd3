"""Text-to-image for paired-image synthesis: the source image of a pair is drawn from its prompt
(ImVideoEdit §3 uses Qwen-Image for this, then Qwen-Image-Edit for the edited image).

Two backends, chosen by config (`backend: diffusers|api`), behind one call, `render(requests)`:

- `diffusers`: a local `DiffusionPipeline` whose `__call__` takes `prompt`, `height`, `width`
  (Qwen-Image, Stable Diffusion, FLUX, ...). Every image gets its own CPU generator seeded with
  its request's seed, so a result depends on neither its batch nor the device's RNG.
- `api`: OpenAI `images.generate` (gpt-image-1) or Gemini image output. A generation is one more
  request type of the image editors' machinery (`image_edit.ImageEditor`, itself the VLM
  machinery): no second HTTP client, and the same cache, retries, rate limits and budget. Its
  cache key holds the model, endpoint, prompt and, through the salt, the size and the seed.
  OpenAI's images API takes no seed, so there the seed only keys the cache: a request is repeated
  exactly only while its answer is stored. Gemini is sent the seed (and the size's aspect ratio;
  it picks the pixels itself).

`tiny:stable-diffusion` is a tiny random-weight pipeline built offline for tests; its images are noise.
"""

from __future__ import annotations

import contextvars
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.backends.budget import Budget
from curation.backends.diffusers_edit import Dtype, load_pipeline, tiny_sd_parts
from curation.backends.image_edit import (
    EditedImage,
    GeminiImageEditor,
    ImageEditConfig,
    ImageEditor,
    ImageEditReply,
    OpenAIImageEditor,
)
from curation.backends.models import DEVICE_PATTERN, model_ref
from curation.backends.usage import VLMError, VLMUsage
from curation.backends.vlm_base import Completion, VLMReply, VLMRequest
from curation.core.config_change import RUN_ONLY
from curation.core.stage import ModelRef, failure_reason

# The aspect ratios Gemini's image models take (`ImageConfig.aspect_ratio`).
GEMINI_ASPECTS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")


def parse_size(size: str) -> tuple[int, int]:
    """"WIDTHxHEIGHT" -> (width, height)."""
    width, height = size.split("x")
    return int(width), int(height)


def aspect_of(size: str) -> str:
    width, height = parse_size(size)
    g = math.gcd(width, height)
    return f"{width // g}:{height // g}"


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------


class DiffusersTextToImageConfig(BaseModel):
    """A local text-to-image pipeline and how it samples. Defaults: Qwen-Image's model card
    (50 steps, true CFG 4.0 with a blank negative prompt)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("Qwen/Qwen-Image", description="hub id, local directory or tiny:stable-diffusion")
    steps: int = Field(50, ge=1, description="num_inference_steps")
    guidance_scale: float | None = Field(None, description="the pipeline's guidance_scale (Stable Diffusion / FLUX); None: not passed")
    true_cfg_scale: float | None = Field(4.0, description="Qwen-Image's classifier-free guidance (runs only with a negative_prompt)")
    negative_prompt: str | None = Field(" ", description="same for every image; None passes none")
    device: str = Field("auto", pattern=DEVICE_PATTERN, json_schema_extra=RUN_ONLY,
                        description="auto (CUDA when the worker has a GPU), cpu, cuda or cuda:N")
    dtype: Dtype = Field("auto", description="auto: bfloat16 on CUDA, float32 on the CPU")
    batch_size: int = Field(1, ge=1, json_schema_extra=RUN_ONLY, description="prompts per pipeline call")


class TextToImageConfig(BaseModel):
    """Which text-to-image model draws an image, at what size, from which base seed."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["diffusers", "api"] = Field(description="diffusers (local pipeline) or api (OpenAI images.generate / Gemini)")
    size: str | None = Field(
        None, pattern=r"^\d+x\d+$", description="WIDTHxHEIGHT of the image. diffusers: passed as width/height; openai: "
        "sent as size (gpt-image-1 takes 1024x1024, 1536x1024, 1024x1536); gemini: only its aspect ratio is sent. "
        "None: the model's default")
    seed: int = Field(0, description="base seed; the caller mixes each image's own identity into it (render: the sample id)")
    api: ImageEditConfig | None = Field(None, description="backend=api: the image API (its transport, model and price "
                                                          "per image); its `size` stays null, the size is this block's")
    diffusers: DiffusersTextToImageConfig | None = Field(None, description="backend=diffusers: the local pipeline")

    @model_validator(mode="after")
    def _backend_configured(self) -> TextToImageConfig:
        if self.backend == "api" and self.api is None:
            raise ValueError("text-to-image backend=api needs its api block (backend, model, ...)")
        if self.backend == "diffusers" and self.diffusers is None:
            raise ValueError("text-to-image backend=diffusers needs its diffusers block (model, ...)")
        if self.backend == "api" and self.api is not None:
            if self.api.size is not None:
                raise ValueError("set the text-to-image size, not api.size (one size for both backends)")
            if self.api.backend == "gemini" and self.size is not None and aspect_of(self.size) not in GEMINI_ASPECTS:
                raise ValueError(f"gemini draws only the aspect ratios {', '.join(GEMINI_ASPECTS)}; size {self.size} "
                                 f"is {aspect_of(self.size)}")
        return self


# --------------------------------------------------------------------------------------------
# requests and results
# --------------------------------------------------------------------------------------------


@dataclass
class TextToImageRequest:
    prompt: str
    seed: int
    size: str | None = None  # WIDTHxHEIGHT; None: the model's default
    cache_salt: str = ""  # e.g. the prompt template's hash; part of the cache key


@dataclass
class Rendered:
    """One request's outcome: an encoded image, or the reason there is none."""

    image: bytes | None = None  # PNG (diffusers) or the file the API returned
    reason: str | None = None
    usage: VLMUsage | None = None  # api only


@dataclass
class _GenerateRequest(VLMRequest):
    """A generation as the request machinery carries it: no images, the size and seed beside the prompt."""

    size: str | None = None
    seed: int = 0


# The size and seed of the request a task is sending: `_call` has only (prompt, images, schema),
# and each request runs in its own asyncio task, which holds its own copy of this variable.
_SETTINGS: contextvars.ContextVar[tuple[str | None, int]] = contextvars.ContextVar("text_to_image_settings")


class ImageGenerator(ImageEditor):
    """`generate_images` on the image editors' machinery; subclasses implement `_call` with the
    image API, reading the size and seed from `_SETTINGS`."""

    def generate_images(self, requests: list[TextToImageRequest]) -> list[ImageEditReply | VLMError]:
        """All requests concurrently (bounded by max_in_flight and the rate limit), results in
        input order; a per-request failure is a VLMError, never raised."""
        replies = self.generate_many([
            _GenerateRequest(r.prompt, [], EditedImage, self._generate_salt(r), size=r.size, seed=r.seed) for r in requests])
        return [self._edit_reply(reply) for reply in replies]

    @staticmethod
    def _generate_salt(request: TextToImageRequest) -> str:
        return json.dumps({"task": "generate", "size": request.size, "seed": request.seed, "salt": request.cache_salt},
                          sort_keys=True)

    async def _one(self, req: VLMRequest) -> VLMReply:
        if isinstance(req, _GenerateRequest):
            _SETTINGS.set((req.size, req.seed))
        return await super()._one(req)


class OpenAIImageGenerator(ImageGenerator, OpenAIImageEditor):
    """`POST /images/generations`; GPT image models always answer with `b64_json`."""

    async def _call(self, prompt: str, images: list[bytes], schema: type[BaseModel], images_first: bool = False) -> Completion:
        size, _seed = _SETTINGS.get()  # the images API takes no seed
        options: dict[str, Any] = {"size": size} if size else {}
        response = await self._sdk.images.generate(model=self.cfg.model, prompt=prompt, n=1, **options)
        return self._image_of(response)


class GeminiImageGenerator(ImageGenerator, GeminiImageEditor):
    """`generateContent` with the prompt alone and image output enabled, sent the seed and the aspect ratio."""

    async def _call(self, prompt: str, images: list[bytes], schema: type[BaseModel], images_first: bool = False) -> Completion:
        from google.genai import types

        size, seed = _SETTINGS.get()
        config = types.GenerateContentConfig(
            response_modalities=["TEXT", "IMAGE"],  # TEXT too: some Gemini image models refuse image-only output
            seed=seed,
            image_config=types.ImageConfig(aspect_ratio=aspect_of(size)) if size else None,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )
        response = await self._client.aio.models.generate_content(model=self.cfg.model, contents=[prompt], config=config)
        return self._image_of(response)


_GENERATORS: dict[str, type[ImageGenerator]] = {"openai": OpenAIImageGenerator, "gemini": GeminiImageGenerator}


def make_image_generator(cfg: ImageEditConfig, budget: Budget | None = None) -> ImageGenerator:
    """The generator `cfg.backend` names. Nothing connects until `open()` or the first batch."""
    return _GENERATORS[cfg.backend](cfg, budget)


# --------------------------------------------------------------------------------------------
# the two backends behind one call
# --------------------------------------------------------------------------------------------


class TextToImage:
    """`render(requests) -> list[Rendered]`, built from a `TextToImageConfig` by `make_text_to_image`."""

    def __init__(self, cfg: TextToImageConfig, budget: Budget | None = None):
        self.cfg = cfg
        self.budget = budget
        self._api: ImageGenerator | None = None
        self._pipe: DiffusersTextToImage | None = None

    def open(self) -> None:
        """Load the pipeline or create the API client (once per worker)."""
        if self.cfg.backend == "api" and self._api is None:
            self._api = make_image_generator(self.cfg.api, self.budget)
            self._api.open()
        elif self.cfg.backend == "diffusers" and self._pipe is None:
            self._pipe = DiffusersTextToImage(self.cfg.diffusers)

    @property
    def device(self) -> str | None:
        return self._pipe.device if self._pipe is not None else None

    def model(self) -> ModelRef:
        if self.cfg.backend == "api":
            return model_ref(self.cfg.api.model, f"api:{self.cfg.api.backend}:{self.cfg.api.model}")
        return model_ref(self.cfg.diffusers.model)

    def generator(self) -> str:
        """What made the images: `<provider>:<model>` for an API (its terms cover them), else the model."""
        return f"{self.cfg.api.backend}:{self.cfg.api.model}" if self.cfg.backend == "api" else self.cfg.diffusers.model

    def render(self, requests: list[TextToImageRequest]) -> list[Rendered]:
        self.open()
        if self._api is not None:
            return [Rendered(reason=r.reason, usage=r.usage) if isinstance(r, VLMError) else Rendered(image=r.image, usage=r.usage)
                    for r in self._api.generate_images(requests)]
        try:
            return [Rendered(image=encode_png(im)) for im in self._pipe.render(requests)]
        except Exception:  # noqa: BLE001 - find the request that fails, one by one, so the others still render
            return [self._render_one(r) for r in requests]

    def _render_one(self, request: TextToImageRequest) -> Rendered:
        try:
            (image,) = self._pipe.render([request])
            return Rendered(image=encode_png(image))
        except Exception as e:  # noqa: BLE001 - recorded on the sample
            return Rendered(reason=f"render_failed: {failure_reason(e)}")

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None
        self._pipe = None


def make_text_to_image(cfg: TextToImageConfig, budget: Budget | None = None) -> TextToImage:
    """Built, not opened: nothing loads or connects until `open()` or the first `render`."""
    return TextToImage(cfg, budget)


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    return out.getvalue()


# Config fields passed to the pipeline's `__call__` under their own name, when set.
OPTIONAL_CALL_ARGS = ("guidance_scale", "true_cfg_scale", "negative_prompt")


class DiffusersTextToImage:
    """Loads the pipeline once (`from_pretrained`, then moved to the device); `render` runs it."""

    def __init__(self, cfg: DiffusersTextToImageConfig):
        self.cfg = cfg
        loaded = load_pipeline(cfg, ("prompt", "height", "width", "num_inference_steps", "generator", "output_type"),
                               OPTIONAL_CALL_ARGS, "a text-to-image pipeline",
                               refused={"image": "takes an input image: an editing pipeline, not text-to-image"})
        self.pipe, self.device, self.random_weights = loaded.pipe, loaded.device, loaded.random_weights

    def render(self, requests: list[TextToImageRequest]) -> list[np.ndarray]:
        """One (H, W, 3) uint8 RGB image per request, at its size (None: the pipeline's default)."""
        by_size: dict[str | None, list[int]] = {}
        for i, request in enumerate(requests):
            by_size.setdefault(request.size, []).append(i)
        results: dict[int, np.ndarray] = {}
        for size, indices in by_size.items():
            for start in range(0, len(indices), self.cfg.batch_size):
                chunk = indices[start:start + self.cfg.batch_size]
                results.update(zip(chunk, self._call([requests[i] for i in chunk], size), strict=True))
        return [results[i] for i in range(len(requests))]

    def _call(self, requests: list[TextToImageRequest], size: str | None) -> list[np.ndarray]:
        import torch

        kwargs: dict[str, Any] = {arg: getattr(self.cfg, arg) for arg in OPTIONAL_CALL_ARGS if getattr(self.cfg, arg) is not None}
        if "negative_prompt" in kwargs:
            kwargs["negative_prompt"] = [kwargs["negative_prompt"]] * len(requests)
        if size is not None:
            kwargs["width"], kwargs["height"] = parse_size(size)
        result = self.pipe(
            prompt=[r.prompt for r in requests],
            num_inference_steps=self.cfg.steps,
            generator=[torch.Generator("cpu").manual_seed(r.seed) for r in requests],
            output_type="np",
            **kwargs,
        )
        return [(np.clip(frame, 0.0, 1.0) * 255.0).round().astype(np.uint8) for frame in result.images]  # (H, W, 3)


# ---------------------------------------------------------------------------------------------
# Tiny random-weight pipeline (tiny:stable-diffusion, built once by models.resolve_model)
# ---------------------------------------------------------------------------------------------


def build_tiny_stable_diffusion(target: Path) -> None:
    """StableDiffusionPipeline: `tiny_sd_parts` with a 4-channel UNet (nothing downloaded)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **tiny_sd_parts(unet_in_channels=4, sample_size=16), scheduler=EulerDiscreteScheduler(steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(target)
