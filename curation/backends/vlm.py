"""Vision-language model backends: one protocol, four implementations chosen by config
(`backend: openai|gemini|local|vllm`), all returning JSON validated against a pydantic schema.

This module is what callers import: the config, the request and reply types and `make_vlm`.
The protocol and the machinery the implementations share (response cache, bounded concurrency,
rate limits, retries, cost and budget) live in `vlm_base.py`, below the implementations, so that
this factory can import them without a cycle; the implementations import their SDKs only when a
backend opens.
"""

from __future__ import annotations

from curation.backends.budget import Budget
from curation.backends.usage import VLMError, VLMUsage
from curation.backends.vlm_base import (
    Completion,
    EmptyResponse,
    VLMBackend,
    VLMConfig,
    VLMReply,
    VLMRequest,
    image_mime,
    json_schema_of,
    parse_reply,
    short,
    shrink_image,
)
from curation.backends.vlm_gemini import GeminiVLM
from curation.backends.vlm_local import LocalVLM
from curation.backends.vlm_openai import OpenAIVLM
from curation.backends.vlm_vllm import VLLMVLM

__all__ = [
    "Completion", "EmptyResponse", "VLMBackend", "VLMConfig", "VLMError", "VLMReply", "VLMRequest", "VLMUsage",
    "image_mime", "json_schema_of", "make_vlm", "parse_reply", "short", "shrink_image",
]

_BACKENDS: dict[str, type[VLMBackend]] = {"openai": OpenAIVLM, "gemini": GeminiVLM, "local": LocalVLM, "vllm": VLLMVLM}


def make_vlm(cfg: VLMConfig, budget: Budget | None = None) -> VLMBackend:
    """The backend `cfg.backend` names. Nothing connects or loads until `open()` or the first batch."""
    return _BACKENDS[cfg.backend](cfg, budget)
