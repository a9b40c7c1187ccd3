"""The VLM protocol and the request machinery every backend shares (`vlm.py` picks one by config).

What is shared lives here, once: the response cache, bounded concurrency, rate limits (one
worker's, or the whole run's through a ledger actor: `limits.py`), retries with backoff, cost
accounting and the budget. A backend only says how to make one call
(`_call`) and how to read its failures (`_classify`). The image editors (`image_edit.py`) ride
on the same machinery with their own config: both configs share `transport.TransportConfig`,
and what only a VLM has (sampling, token prices, a token rate) is read through `_sampling`,
`_tokens_per_minute` and `_cost`, which an editor answers for itself.

Runtime model: the caller (a Ray actor) calls `generate_many` synchronously, once per batch, for
the actor's whole life. Async HTTP clients are bound to the event loop they were made on, so each
backend owns one persistent loop in a daemon thread, creates its clients lazily on it and runs
every batch there. Nothing connects in `__init__`.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import io
import json
import logging
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, model_validator

from curation.backends.budget import Budget
from curation.backends.limits import Failure, RateLimiter, SharedRateLimiter, backoff_delay
from curation.backends.models import DEVICE_PATTERN
from curation.backends.pricing import token_price
from curation.backends.transport import TransportConfig
from curation.backends.usage import VLMError, VLMUsage
from curation.backends.vllm_server import VLLMServerConfig
from curation.backends.vlm_cache import VLMCache, cache_key
from curation.core.config_change import RUN_ONLY

log = logging.getLogger(__name__)

T = TypeVar("T")

# A rough prompt-token price of one image for the tokens-per-minute estimate (OpenAI bills a
# 1024 px image at up to 765 tokens); corrected with the reported usage after each call.
IMAGE_TOKENS_ESTIMATE = 765


class VLMConfig(TransportConfig):
    """Which VLM to call and how hard: the transport (`TransportConfig`: endpoint, key, concurrency,
    retries, cache, ...) at its defaults, plus what a VLM samples and what its tokens cost."""

    cache_name: ClassVar[str] = "vlm"

    backend: Literal["openai", "gemini", "local", "vllm"] = Field(
        description="openai (OpenAI, vLLM, SGLang), gemini, local (transformers), or vllm (servers the run starts)")
    tokens_per_minute: float | None = Field(
        None, gt=0, json_schema_extra=RUN_ONLY, description="prompt + output, for all workers of the stage together; None = unlimited")
    temperature: float = Field(0.0, ge=0, description="sampling temperature; 0 = greedy")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling (all backends); None: the server's default")
    top_k: int | None = Field(None, ge=1, description="top-k sampling: gemini and local natively; openai sends it as a "
                                                      "top-level extra field (vLLM, SGLang take it; api.openai.com rejects it)")
    extra_body: dict[str, Any] | None = Field(None, description="openai/vllm only: extra top-level request fields, e.g. vLLM's "
                                                                 "{chat_template_kwargs: {enable_thinking: false}}")
    max_tokens: int = Field(1024, ge=1, description="answer token limit per request (thinking_budget comes on top)")
    thinking_budget: int | None = Field(
        None, ge=0, description="gemini only: tokens the model may think before answering (0: no thinking); the request's "
                                "output limit is max_tokens + thinking_budget, since Gemini counts thoughts against it. "
                                "None: the model's default budget, which then shares max_tokens with the answer")
    pricing: Literal["hosted", "self_hosted"] | None = Field(
        None, json_schema_extra=RUN_ONLY,
        description="hosted: a paid API (or a paid proxy), priced from config/prices.yaml; self_hosted: your own "
                          "server, priced at 0 and keyless unless api_key_env's variable is set. None: self_hosted for "
                          "the local and vllm backends, hosted for openai and gemini. Declared, never guessed from base_url")
    usd_per_mtok_input: float | None = Field(
        None, ge=0, json_schema_extra=RUN_ONLY, description="price per million prompt tokens (cost, budget); None: from `pricing`")
    usd_per_mtok_output: float | None = Field(
        None, ge=0, json_schema_extra=RUN_ONLY,
        description="price per million output tokens, thinking included (cost, budget); None: from `pricing`")
    device: str = Field("auto", pattern=DEVICE_PATTERN, json_schema_extra=RUN_ONLY, description="local only: auto|cpu|cuda|cuda:N")
    dtype: str = Field("auto", description="local only: auto (bf16 on GPU, fp32 on CPU) or a torch dtype name")
    local_batch_size: int = Field(8, ge=1, json_schema_extra=RUN_ONLY, description="local only: requests per batched generate()")
    server: VLLMServerConfig | None = Field(None, json_schema_extra=RUN_ONLY,
                                            description="vllm only: the servers the run starts (None: defaults)")

    @model_validator(mode="after")
    def _extra_body_needs_openai(self) -> VLMConfig:
        # Gemini and local generate have no free-form request body: a setting they would drop
        # silently is an error instead.
        if self.extra_body and self.backend not in ("openai", "vllm"):
            raise ValueError(f"vlm.extra_body is sent to OpenAI-compatible servers only (backend openai or vllm), "
                             f"not {self.backend}")
        clash = sorted({"model", "messages"} & set(self.extra_body or {}))
        if clash:
            raise ValueError(f"vlm.extra_body must not set {', '.join(clash)}: use vlm.model / the prompt")
        return self

    @model_validator(mode="after")
    def _pricing_and_thinking(self) -> VLMConfig:
        own_gpus = self.backend in ("local", "vllm")
        if self.pricing is None:
            self.pricing = "self_hosted" if own_gpus else "hosted"
        elif own_gpus and self.pricing != "self_hosted":
            raise ValueError(f"the {self.backend} backend runs on your own GPUs: vlm.pricing must be self_hosted "
                             "(set vlm.usd_per_mtok_input/output to put a price on them)")
        if self.thinking_budget is not None and self.backend != "gemini":
            raise ValueError(f"vlm.thinking_budget is a Gemini setting; the {self.backend} backend cannot honour it")
        return self

    def output_token_limit(self) -> int:
        """What a request may generate in all: the answer's max_tokens plus the thinking budget."""
        return self.max_tokens + (self.thinking_budget or 0)

    def sampling_options(self) -> dict[str, Any]:
        """top_p, top_k, extra_body and thinking_budget where set: what the request carries beyond
        temperature and max_tokens, and so part of the response-cache key."""
        options = {"top_p": self.top_p, "top_k": self.top_k, "extra_body": self.extra_body,
                   "thinking_budget": self.thinking_budget}
        return {name: value for name, value in options.items() if value is not None}


@dataclass
class VLMRequest:
    prompt: str
    images: list[bytes]  # encoded JPEG/PNG, attached in order after the prompt (before it: images_first)
    schema: type[BaseModel]  # the output model; its JSON schema constrains the output
    cache_salt: str = ""  # e.g. the prompt template's hash; part of the cache key
    # Take the JSON object out of surrounding text (first "{" to last "}"), as EditScore's own
    # parser does: its judges were trained to answer with JSON, not constrained to it. Off: the
    # whole text must be the JSON (guided decoding makes it so).
    json_in_text: bool = False
    # Send the images before the prompt text. EditScore's judges were trained on messages that
    # hold the images first (its `prepare_input`); our prompts otherwise lead with the text.
    images_first: bool = False


@dataclass
class VLMReply:
    """A response arrived (from the API, the model or the cache)."""

    parsed: BaseModel | None  # validated object, or None when `raw` did not parse/validate
    raw: str  # the model's text
    usage: VLMUsage
    error: str | None = None  # when parsed is None: "invalid_json: ..." or "schema_mismatch: ..."


@dataclass
class Completion:
    """What one successful call of a backend returns."""

    raw: str
    prompt_tokens: int
    completion_tokens: int  # thinking included
    # The call's price when the backend knows it without tokens (an image API bills per image);
    # None: priced from the tokens (`_cost`: vlm.pricing, the price table, vlm.usd_per_mtok_*).
    usd: float | None = None
    thinking_tokens: int = 0  # of completion_tokens


class EmptyResponse(Exception):
    """A call that succeeded at the transport level but carried no answer (no choices / no
    candidates). Its tokens may still be billed. Retried by default: it is usually a provider
    hiccup; a blocked prompt is not (`retryable=False`)."""

    def __init__(self, message: str, prompt_tokens: int = 0, completion_tokens: int = 0,
                 prefix: str = "vlm_empty_response", retryable: bool = True):
        super().__init__(message)
        self.failure = Failure(f"{prefix}: {message}", retryable=retryable)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def short(text: str, limit: int = 200) -> str:
    """One line, at most `limit` characters: reasons end up in manifests and summary tables."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


@functools.cache
def json_schema_of(schema: type[BaseModel]) -> dict[str, Any]:
    """The schema's JSON schema (computed once per class; treat as read-only)."""
    return schema.model_json_schema()


def _strip_fences(raw: str) -> str:
    """Some OpenAI-compatible servers without guided decoding wrap JSON in ```json fences."""
    text = raw.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rstrip().removesuffix("```")
    return text


def _summarize(error: ValidationError, limit: int = 3) -> str:
    errors = error.errors(include_url=False)
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {short(e['msg'], 80)}" for e in errors[:limit]]
    more = f" (+{len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more


def _json_object_in(text: str) -> str:
    """From the first "{" to the last "}" (the text itself when it has no such span)."""
    start, end = text.find("{"), text.rfind("}")
    return text[start:end + 1] if 0 <= start < end else text


def parse_reply(schema: type[BaseModel], raw: str, json_in_text: bool = False) -> tuple[BaseModel | None, str | None]:
    """(validated object, None) or (None, "invalid_json: ..." | "schema_mismatch: ...").
    `json_in_text`: parse the JSON object inside the text (VLMRequest.json_in_text). Nothing
    else is repaired and nothing is made up: an answer without a valid object is invalid."""
    text = _strip_fences(raw)
    if json_in_text:
        text = _json_object_in(text)
    if not text:
        return None, "invalid_json: empty response text"
    try:
        # strict=False accepts raw control characters inside strings: xgrammar 0.2.8 lets them
        # through in strings that carry minLength/maxLength (e.g. a TAB in summary_change).
        data = json.loads(text, strict=False)
    except json.JSONDecodeError as e:
        return None, f"invalid_json: {e.msg} at line {e.lineno} column {e.colno}"
    try:
        return schema.model_validate(data), None
    except ValidationError as e:
        return None, f"schema_mismatch: {_summarize(e)}"


def image_mime(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return "image/jpeg"


def shrink_image(data: bytes, max_side: int | None) -> bytes:
    """The image with its longer side at most `max_side` (aspect kept), in its own format (PNG
    stays PNG, anything else becomes JPEG); unchanged when already small enough. Raises
    VLMError("vlm_bad_image: ...") for bytes that do not decode."""
    if max_side is None:
        return data
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if max(img.size) <= max_side:
                return data
            fmt = img.format
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            if fmt == "PNG":
                img.save(out, "PNG")
            else:
                img.convert("RGB").save(out, "JPEG", quality=90)
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise VLMError(f"vlm_bad_image: {short(str(e), 120)}") from e


def longer_side(data: bytes) -> int:
    """The image's longer side, from its header alone (PIL reads no pixels): whether `shrink_image`
    has work to do, asked on the event loop (0.1 ms) so that only an image to shrink costs a hop to
    a thread. Raises VLMError("vlm_bad_image: ...") for bytes that are no image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return max(img.size)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise VLMError(f"vlm_bad_image: {short(str(e), 120)}") from e


def estimate_tokens(prompt: str, n_images: int, max_tokens: int) -> int:
    """Tokens a request may use, before it is sent (~4 bytes per text token, images at
    IMAGE_TOKENS_ESTIMATE, plus the whole output allowance as providers count it)."""
    return len(prompt.encode()) // 4 + 1 + n_images * IMAGE_TOKENS_ESTIMATE + max_tokens


class _LoopThread:
    """One asyncio event loop running in a daemon thread for the backend's whole life. Its
    default executor (used by `asyncio.to_thread`: cache I/O, image preparation, budget checks)
    is sized to the requests in flight, so a slow cache filesystem does not serialise them."""

    def __init__(self, name: str, workers: int):
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-io"))
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a VLM backend's blocking API was called from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        if not self.loop.is_running():
            self.loop.close()  # also shuts its default executor down


# --------------------------------------------------------------------------------------------
# the protocol
# --------------------------------------------------------------------------------------------


class VLMBackend(ABC):
    """Subclasses set `backend` and implement `_call` and `_classify`; `_open`/`_aclose` create
    and release their clients on the backend's loop."""

    backend: ClassVar[str]

    def __init__(self, cfg: TransportConfig, budget: Budget | None = None):
        """`cfg`: a VLMConfig, or an image editor's own config (the editor answers the VLM-only hooks)."""
        if cfg.backend != self.backend:
            raise ValueError(f"{type(self).__name__} got a config for backend {cfg.backend!r}")
        self.cfg = cfg
        self.budget = budget
        self.cache = VLMCache(cfg.cache_location()) if cfg.cache else None
        self._secrets: list[str] = []
        self._thread: _LoopThread | None = None
        self._thread_lock = threading.Lock()
        self._opened = False
        self._open_lock: asyncio.Lock | None = None
        self._in_flight: asyncio.Semaphore | None = None
        self._limiter: RateLimiter | SharedRateLimiter | None = None
        # The name of the run's rate ledger actor (`limits.create_rate_ledger`), set by the stage
        # before the first batch: the rate limits then hold for all workers together.
        self.rate_ledger: str | None = None

    # ---- what a backend implements ------------------------------------------------------------
    async def _open(self) -> None:  # noqa: B027 - optional: a backend without clients has nothing to open
        """Create clients / load the model, on the loop. May raise VLMError (e.g. vlm_auth)."""

    @abstractmethod
    async def _call(self, prompt: str, images: list[bytes], schema: type[BaseModel], images_first: bool = False) -> Completion:
        """One attempt. Raise EmptyResponse when a response carried no answer; let transport and
        HTTP errors propagate for `_classify`."""

    @abstractmethod
    def _classify(self, exc: Exception) -> Failure | None:
        """Map an exception from `_call` to a Failure; None means unexpected (not retried)."""

    async def _aclose(self) -> None:  # noqa: B027 - optional, like _open
        """Release clients, on the loop."""

    def _call_timeout_s(self) -> float | None:
        """A safety net above the client's own timeout (None: no limit, e.g. local generation)."""
        return self.cfg.timeout_s + 5.0

    def _max_in_flight(self) -> int:
        return self.cfg.max_in_flight

    # ---- what only a VLM config holds (an image editor answers these itself) ------------------
    def _sampling(self) -> tuple[float, int]:
        """(temperature, max_tokens): part of the cache key; max_tokens also bounds the token estimate."""
        return self.cfg.temperature, self.cfg.max_tokens

    def _sampling_options(self) -> dict[str, Any]:
        """top_p, top_k, extra_body where set (`VLMConfig.sampling_options`): part of the cache key."""
        return self.cfg.sampling_options()

    def _tokens_per_minute(self) -> float | None:
        return self.cfg.tokens_per_minute

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD of a call priced by its tokens (`Completion.usd` None); None: the model has no known
        price (`pricing.token_price`)."""
        cfg = self.cfg
        price = token_price(cfg.model, cfg.pricing, cfg.usd_per_mtok_input, cfg.usd_per_mtok_output)
        return None if price is None else price.usd(prompt_tokens, completion_tokens)

    # ---- public API ---------------------------------------------------------------------------
    def model_id(self) -> str:
        base = f"{self.backend}:{self.cfg.model}"
        return f"{base}@{self.cfg.base_url}" if self.cfg.base_url else base

    def open(self) -> None:
        """Create clients / load the model now (a stage's `setup`), not inside the first batch.
        A failure is only logged here: the first batch retries it and records it on every row."""
        try:
            self._loop().run(self._ensure_open())
        except Exception as e:  # noqa: BLE001 - reported per row by the first batch
            log.warning("%s: could not open yet (%s); the first batch will retry", self.model_id(),
                        short(self._scrub(str(getattr(e, "reason", e)))))

    def generate_many(self, requests: list[VLMRequest]) -> list[VLMReply | VLMError]:
        """All requests concurrently (bounded by max_in_flight and the rate limits), results in
        input order. A per-request failure is returned as a VLMError, never raised."""
        if not requests:
            return []
        return self._loop().run(self._many(list(requests)))

    def generate(self, prompt: str, images: list[bytes], schema: type[BaseModel]) -> tuple[BaseModel, str, VLMUsage]:
        """One request: (parsed, raw, usage). Raises VLMError, including "invalid_json: ..." and
        "schema_mismatch: ..." when the response did not validate."""
        (result,) = self.generate_many([VLMRequest(prompt, images, schema)])
        if isinstance(result, VLMError):
            raise result
        if result.parsed is None:
            raise VLMError(result.error or "invalid_json: no parsed output", result.usage)
        return result.parsed, result.raw, result.usage

    def probe(self) -> str:
        """Ask the endpoint whether it answers and serves `cfg.model`, generating nothing and
        spending nothing (`curate run --dry-run`). Returns what it said, in a few words; raises
        VLMError naming what is wrong (the key variable unset, the endpoint down or refusing the
        key, the model not served)."""
        async def ask() -> str:
            await self._ensure_open()
            return await self._probe()

        try:
            return self._loop().run(ask())
        except VLMError:
            raise
        except Exception as e:  # whatever the client raised, classified as a request's failure would be
            raise VLMError(self._scrub(self._failure(e).reason)) from e

    async def _probe(self) -> str:
        raise NotImplementedError(f"the {self.backend} backend has no endpoint to ask")

    def close(self) -> None:
        """Release clients and stop the loop thread; a later call starts afresh."""
        with self._thread_lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        atexit.unregister(self.close)
        try:
            if self._opened:
                thread.run(self._aclose())
        finally:
            thread.stop()
            self._opened = False
            self._open_lock = self._in_flight = self._limiter = None

    def __enter__(self) -> VLMBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- machinery ----------------------------------------------------------------------------
    def _loop(self) -> _LoopThread:
        with self._thread_lock:
            if self._thread is None:
                self._thread = _LoopThread(f"vlm-{self.backend}", workers=self._max_in_flight() + 4)
                # A Ray worker exits without anyone calling close(): release clients and tasks
                # first, so the interpreter does not destroy them while pending.
                atexit.register(self.close)
            return self._thread

    def _api_key(self) -> str | None:
        """The key from the named environment variable (remembered only to scrub it from reasons).
        A self-hosted server needs none: an unset variable is then no key (None), not an error."""
        name = self.cfg.api_key_env
        if name is None:
            return None
        value = os.environ.get(name)
        # An image editor's config has no `pricing`: its APIs are always hosted.
        if not value and getattr(self.cfg, "pricing", "hosted") == "self_hosted":
            return None
        if not value:
            raise VLMError(f"vlm_auth: environment variable {name} is not set")
        self._secrets.append(value)
        return value

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    async def _ensure_open(self) -> None:
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
            self._in_flight = asyncio.Semaphore(self._max_in_flight())
            if self.rate_ledger is not None:
                self._limiter = SharedRateLimiter(self.rate_ledger, self.cfg.requests_per_minute, self._tokens_per_minute())
            else:
                self._limiter = RateLimiter(self.cfg.requests_per_minute, self._tokens_per_minute())
        async with self._open_lock:
            if not self._opened:
                await self._open()
                self._opened = True

    async def _many(self, requests: list[VLMRequest]) -> list[VLMReply | VLMError]:
        try:
            await self._ensure_open()
        except VLMError as e:
            return [VLMError(self._scrub(e.reason)) for _ in requests]
        except Exception as e:  # noqa: BLE001 - a setup failure is every request's failure
            reason = f"vlm_setup: {type(e).__name__}: {short(self._scrub(str(e)))}"
            return [VLMError(reason) for _ in requests]
        return list(await asyncio.gather(*(self._one_safe(r) for r in requests)))

    async def _one_safe(self, req: VLMRequest) -> VLMReply | VLMError:
        try:
            return await self._one(req)
        except VLMError as e:
            return e
        except Exception as e:  # noqa: BLE001 - never let one request fail the batch
            reason = f"vlm_internal: {type(e).__name__}: {short(self._scrub(str(e)))}"
            log.warning("%s: %s", self.model_id(), reason)
            return VLMError(reason)

    async def _charge(self, usage: VLMUsage, prompt_tokens: int, completion_tokens: int,
                      usd: float | None = None, thinking_tokens: int = 0) -> float | None:
        """Add a call to `usage` and the budget; returns its USD, None when its price is unknown."""
        usd = self._cost(prompt_tokens, completion_tokens) if usd is None else usd
        usage.prompt_tokens += prompt_tokens
        usage.completion_tokens += completion_tokens
        usage.thinking_tokens += thinking_tokens
        if usd is None:
            usage.unpriced_requests += 1
            return None
        usage.usd += usd
        if self.budget is not None and usd > 0:
            await asyncio.to_thread(self.budget.charge, usd)
        return usd

    def _unpriced_under_budget(self) -> VLMError | None:
        """A budget cannot hold spending it cannot price: refuse the request (before it is sent)."""
        if self.budget is None or self.budget.max_usd is None or self._cost(0, 0) is not None:
            return None
        return VLMError(f"budget_unpriced: {self.cfg.model} has no known price and budget.max_usd is set; set "
                        "vlm.usd_per_mtok_input and vlm.usd_per_mtok_output (or add it to config/prices.yaml)")

    def _failure(self, exc: Exception) -> Failure:
        if isinstance(exc, EmptyResponse):
            return exc.failure
        if isinstance(exc, VLMError):  # a backend's own verdict on this request
            return Failure(exc.reason, retryable=False)
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            return Failure(f"vlm_timeout: no response within {self.cfg.timeout_s:g}s", retryable=True)
        failure = self._classify(exc)
        if failure is None:
            failure = Failure(f"vlm_error: {type(exc).__name__}: {short(str(exc))}", retryable=False)
        return failure

    def _cache_lookup(self, cache: VLMCache, req: VLMRequest) -> tuple[str, dict[str, Any] | None]:
        """(the request's cache key, its stored answer or None); blocking: run off the loop."""
        cfg = self.cfg
        temperature, max_tokens = self._sampling()
        key = cache_key(
            backend=self.backend, model=cfg.model, base_url=cfg.base_url, prompt=req.prompt,
            images=req.images, schema=json_schema_of(req.schema), temperature=temperature,
            max_tokens=max_tokens, image_max_side=cfg.image_max_side,
            salt=req.cache_salt + ("|images_first" if req.images_first else ""),
            options=self._sampling_options(),
        )
        return key, cache.get(key)

    async def _one(self, req: VLMRequest) -> VLMReply:
        cfg = self.cfg
        max_tokens = self._sampling()[1]
        key = None
        if self.cache is not None:
            # Hashing the images (0.2 ms for two 1024 px frames, without the GIL) happens beside
            # the lookup, off the loop that sends every request.
            key, entry = await asyncio.to_thread(self._cache_lookup, self.cache, req)
            if entry is not None:
                parsed, error = parse_reply(req.schema, entry["raw"], req.json_in_text)
                return VLMReply(parsed, entry["raw"], VLMUsage(cache_hits=1), error)

        unpriced = self._unpriced_under_budget()
        if unpriced is not None:
            raise unpriced
        images = req.images
        if cfg.image_max_side is not None and any(longer_side(img) > cfg.image_max_side for img in images):
            images = await asyncio.to_thread(lambda: [shrink_image(img, cfg.image_max_side) for img in req.images])
        estimate = estimate_tokens(req.prompt, len(images), max_tokens)
        usage = VLMUsage()
        timeout = self._call_timeout_s()
        in_flight, limiter = self._in_flight, self._limiter
        if in_flight is None or limiter is None:  # `_many` opened first: only a close() racing the batch gets here
            raise VLMError("vlm_internal: the backend was closed while requests were pending")
        for attempt in range(cfg.max_retries + 1):
            done: Completion | None = None
            failure = Failure("vlm_internal: backend returned no completion", retryable=False)
            async with in_flight:
                if self.budget is not None and self.budget.max_usd is not None:  # no cap: nothing to ask the ledger
                    try:
                        await asyncio.to_thread(self.budget.check)
                    except VLMError as e:
                        raise VLMError(e.reason, usage) from None
                await limiter.acquire(estimate)
                usage.requests += 1
                try:
                    call = self._call(req.prompt, images, req.schema, images_first=req.images_first)
                    done = await (asyncio.wait_for(call, timeout) if timeout else call)
                except Exception as exc:  # noqa: BLE001 - classified below
                    failure = self._failure(exc)
                    if isinstance(exc, EmptyResponse):
                        await self._charge(usage, exc.prompt_tokens, exc.completion_tokens)
                if done is not None:
                    # Charged before the slot is released, so the next request's budget check
                    # sees it: with max_in_flight=1 the budget is never overshot.
                    usd = await self._charge(usage, done.prompt_tokens, done.completion_tokens, done.usd,
                                             done.thinking_tokens)
            if done is not None:
                break
            reason = self._scrub(failure.reason)
            if not failure.retryable or attempt == cfg.max_retries:
                suffix = f" (after {attempt} retries)" if attempt else ""
                raise VLMError(reason + suffix, usage)
            delay = backoff_delay(attempt, cfg.backoff_initial_s, cfg.backoff_max_s, failure.retry_after_s)
            log.info("%s: %s; retry %d/%d in %.2fs", self.model_id(), reason, attempt + 1, cfg.max_retries, delay)
            usage.retries += 1
            await asyncio.sleep(delay)

        limiter.settle(estimate, done.prompt_tokens + done.completion_tokens)
        if key is not None:
            this_call = VLMUsage(requests=1, prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                                 thinking_tokens=done.thinking_tokens, usd=usd or 0.0,
                                 unpriced_requests=int(usd is None))
            await asyncio.to_thread(self.cache.put, key, done.raw, this_call.model_dump(), self.model_id())
        parsed, error = parse_reply(req.schema, done.raw, req.json_in_text)
        return VLMReply(parsed, done.raw, usage, error)

