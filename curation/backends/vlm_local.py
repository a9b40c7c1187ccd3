"""A local transformers VLM (Qwen-VL class: `AutoModelForImageTextToText` + `AutoProcessor`),
loaded from a hub id, a local path or `tiny:qwen2-vl`, with decoding constrained to the output
JSON schema by xgrammar, so every answer that finishes within `max_tokens` parses.

Requests are gathered into batches of up to `local_batch_size` (left padding) and generated in a
worker thread, one batch at a time, so the event loop stays responsive. The model goes on the
worker's GPU when there is one (`device=auto`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections import Counter
from typing import Any

from pydantic import BaseModel

from curation.backends.budget import Budget
from curation.backends.limits import Failure
from curation.backends.models import pick_device, resolve_model
from curation.backends.usage import VLMError
from curation.backends.vlm_base import Completion, VLMBackend, VLMConfig, json_schema_of, short

log = logging.getLogger(__name__)

# How long the batcher waits for more requests after the first one arrives: requests of one
# `generate_many` reach the queue a few milliseconds apart (cache lookups, image preparation).
BATCH_WINDOW_S = 0.05


def _decode_images(images: list[bytes]) -> list[Any]:
    from PIL import Image, UnidentifiedImageError

    try:
        return [Image.open(io.BytesIO(img)).convert("RGB") for img in images]
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise VLMError(f"vlm_bad_image: {short(str(e), 120)}") from e


def pick_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype != "auto":
        value = getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown torch dtype {dtype!r}")
        return value
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class _Grammars:
    """xgrammar grammars for the model's tokenizer, compiled once per output schema."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]):
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids)
        self._compiler = xgr.GrammarCompiler(info)
        self._compiled: dict[type[BaseModel], Any] = {}

    def get(self, schema: type[BaseModel]) -> Any:
        if schema not in self._compiled:
            # Compact whitespace: free whitespace lets a weak model pad forever.
            self._compiled[schema] = self._compiler.compile_json_schema(
                json.dumps(json_schema_of(schema)), any_whitespace=False, strict_mode=True
            )
        return self._compiled[schema]


class LocalVLM(VLMBackend):
    backend = "local"

    def __init__(self, cfg: VLMConfig, budget: Budget | None = None):
        super().__init__(cfg, budget)
        self.batch_size_counts: Counter[int] = Counter()  # batch size -> how many batches ran
        self.random_weights = False

    def model_id(self) -> str:
        return f"local:{self.cfg.model}"

    def _call_timeout_s(self) -> float | None:
        return None  # a batch takes as long as it takes; there is no remote end to give up on

    def _max_in_flight(self) -> int:
        return max(self.cfg.max_in_flight, self.cfg.local_batch_size)  # enough to fill a batch

    # ---- lifecycle ------------------------------------------------------------------------------
    async def _open(self) -> None:
        await asyncio.to_thread(self._load)
        self._queue: asyncio.Queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._batcher(), name="vlm-local-batcher")

    def _load(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        resolved = resolve_model(self.cfg.model)
        self.random_weights = resolved.random_weights
        device = pick_device(self.cfg.device)
        model = AutoModelForImageTextToText.from_pretrained(resolved.path, dtype=pick_dtype(self.cfg.dtype, device))
        self._model = model.to(device).eval()
        self.device = str(self._model.device)  # where it really landed: the runner warns about cpu on a GPU cluster
        self._processor = AutoProcessor.from_pretrained(resolved.path)
        self._tokenizer = self._processor.tokenizer
        self._tokenizer.padding_side = "left"  # generation appends on the right
        eos = self._model.generation_config.eos_token_id
        stop = {*(eos if isinstance(eos, list) else [eos]), self._tokenizer.eos_token_id}
        self._stop_ids = sorted(i for i in stop if i is not None)
        vocab_size = self._model.get_output_embeddings().weight.shape[0]
        self._grammars = _Grammars(self._tokenizer, vocab_size, self._stop_ids)
        log.info("local VLM %s loaded from %s on %s%s", self.cfg.model, resolved.path, device,
                 " (RANDOM WEIGHTS)" if resolved.random_weights else "")

    async def _aclose(self) -> None:
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        device = str(self._model.device)
        del self._model, self._processor, self._tokenizer, self._grammars
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    # ---- batching -------------------------------------------------------------------------------
    async def _call(self, prompt: str, images: list[bytes], schema: type[BaseModel], images_first: bool = False) -> Completion:
        # Decode here, per request, so one undecodable image fails its request, not its batch.
        pil_images = await asyncio.to_thread(_decode_images, images)
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(((prompt, pil_images, schema, images_first), future))
        return await future

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + BATCH_WINDOW_S
            while len(batch) < self.cfg.local_batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                if (left := deadline - loop.time()) <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            self.batch_size_counts[len(batch)] += 1
            try:
                results = await asyncio.to_thread(self._generate, [item for item, _ in batch])
            except Exception as e:  # noqa: BLE001 - the batch's failure is each request's failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    def _generate(self, items: list[tuple[str, list[Any], type[BaseModel], bool]]) -> list[Completion]:
        """One batched, grammar-constrained generate() (runs in a worker thread)."""
        import torch
        from xgrammar.contrib.hf import LogitsProcessor

        texts, images = [], []
        for prompt, imgs, _, images_first in items:
            text, pictures = [{"type": "text", "text": prompt}], [{"type": "image"} for _ in imgs]
            content = pictures + text if images_first else text + pictures
            texts.append(self._processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False))
            images.extend(imgs)
        inputs = self._processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        inputs = inputs.to(self._model.device)
        # Greedy at temperature 0, so top_p/top_k only apply when sampling. Unset, they stay
        # None: generate() then takes the checkpoint's generation_config values.
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": self.cfg.temperature,
             **{k: v for k, v in (("top_p", self.cfg.top_p), ("top_k", self.cfg.top_k)) if v is not None}}
            if self.cfg.temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        grammar = LogitsProcessor([self._grammars.get(schema) for _, _, schema, _ in items])
        with torch.inference_mode():
            out = self._model.generate(**inputs, max_new_tokens=self.cfg.max_tokens,
                                       logits_processor=[grammar], **sampling)
        generated = out[:, inputs["input_ids"].shape[1]:].tolist()
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        completions = []
        for tokens, prompt_tokens in zip(generated, prompt_lengths):
            # Count up to and including the first stop token; what follows is padding.
            n = next((i + 1 for i, t in enumerate(tokens) if t in self._stop_ids), len(tokens))
            raw = self._tokenizer.decode(tokens[:n], skip_special_tokens=True)
            completions.append(Completion(raw, int(prompt_tokens), n))
        return completions

    def _classify(self, exc: Exception) -> Failure | None:
        return Failure(f"vlm_local: {type(exc).__name__}: {short(str(exc))}", retryable=False)
