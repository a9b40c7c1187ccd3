"""Open-vocabulary box detection with Grounding DINO (transformers), batched across images.

Each image comes with its own text queries (entity descriptions). Queries are written into one
prompt per image the way Grounding DINO was trained on them: lower case, each phrase ending in a
dot (`"a man in a red jacket. the white car."`). The model scores every predicted box against
every prompt token, so which query a box belongs to is read off the token spans:

* the character span of each query in the prompt is known (we wrote the prompt), and the
  tokenizer's offset mapping gives each token's characters, so every token maps to one query
  (the `[CLS]`, `[SEP]` and `.` delimiter tokens map to none);
* a box's score for query q is its highest token probability inside q's span; the box goes to the
  query with the best score, and is kept when that score exceeds `box_threshold` and some token of
  that query exceeds `text_threshold` (GDINO's own rule, restricted to one phrase);
* its label is the query's tokens above `text_threshold`, decoded (what GDINO's `text_labels` holds).

Box scores thus never come from the delimiter tokens, and a box can never be labelled with a
phrase straddling two queries, which decoding `text_labels` back to queries could not rule out.
A prompt longer than the model's `max_text_len` tokens is split into several prompts for the same
image, so no query is silently cut off by the model (a single query longer than a whole prompt
keeps its first `max_text_len - 3` tokens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.backends.models import DEVICE_PATTERN, pick_device, resolve_model
from curation.core.config_change import RUN_ONLY

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the input image


class DetectorConfig(BaseModel):
    """Grounding DINO and its thresholds (Grounded-SAM-2's defaults: box 0.35, text 0.25)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("IDEA-Research/grounding-dino-tiny", description="hub id, local directory or tiny:grounding-dino")
    box_threshold: float = Field(0.35, ge=0, le=1, description="keep a box when its best token probability in a query exceeds this")
    text_threshold: float = Field(
        0.25, ge=0, le=1, description="a query's tokens above this make the box's label; none above it drops the box")
    batch_size: int = Field(8, ge=1, json_schema_extra=RUN_ONLY, description="image-prompt pairs per forward pass")
    device: str = Field("auto", pattern=DEVICE_PATTERN, json_schema_extra=RUN_ONLY,
                        description="auto (CUDA when the worker has a GPU), cpu, cuda or cuda:N")


@dataclass(frozen=True)
class Detection:
    query: int  # index into that image's query list
    label: str  # the query's tokens above text_threshold, decoded
    score: float
    box: Box


def clean_query(text: str) -> str:
    """A description as one prompt phrase: lower case, no `.`/`?` inside (they delimit phrases)."""
    return " ".join(re.sub(r"[.?]", " ", text.lower()).split()).strip(" ,;:!")


@dataclass
class _Prompt:
    """One model input: an image and some of its queries written as `q1. q2. ...`."""

    image: int
    queries: list[int]  # indices into the image's query list
    text: str
    spans: list[tuple[int, int]]  # character span of each query in `text`


class GroundingDinoDetector:
    """Loads once, then `detect` runs batched forward passes on the chosen device."""

    def __init__(self, cfg: DetectorConfig):
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        self.cfg = cfg
        self.device = pick_device(cfg.device)
        path = resolve_model(cfg.model).path
        self.processor = AutoProcessor.from_pretrained(path)
        self.model = GroundingDinoForObjectDetection.from_pretrained(path).to(self.device).eval()
        self.max_text_len = int(self.model.config.max_text_len)

    # ---- prompts -----------------------------------------------------------------------------
    def prompts(self, queries: list[list[str]]) -> list[_Prompt]:
        """Pack each image's distinct, non-empty queries into as few prompts as fit max_text_len."""
        tokenizer = self.processor.tokenizer
        out: list[_Prompt] = []
        for image, texts in enumerate(queries):
            phrases: dict[str, int] = {}  # cleaned phrase -> first query index with it
            for q, text in enumerate(texts):
                phrases.setdefault(clean_query(text), q)
            phrases.pop("", None)
            budget = self.max_text_len - 2  # [CLS] ... [SEP]
            current: list[tuple[str, int]] = []
            used = 0
            for phrase, q in phrases.items():
                ends = [end for _, end in tokenizer(phrase, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
                if len(ends) >= budget:  # longer than a whole prompt: keep what fits
                    phrase, ends = phrase[:ends[budget - 2]], ends[:budget - 1]
                cost = len(ends) + 1  # the phrase and its dot
                if current and used + cost > budget:
                    out.append(_prompt(image, current))
                    current, used = [], 0
                current.append((phrase, q))
                used += cost
            if current:
                out.append(_prompt(image, current))
        return out

    # ---- detection ---------------------------------------------------------------------------
    def detect(self, images: list[np.ndarray], queries: list[list[str]]) -> list[list[Detection]]:
        """Boxes for each image's queries. Images are RGB uint8 (H, W, 3). Images with no query
        cost no forward pass. Same-size images are batched together (no padding), so a batch
        gives the same boxes as one image at a time."""
        if len(images) != len(queries):
            raise ValueError(f"{len(images)} images but {len(queries)} query lists")
        results: list[list[Detection]] = [[] for _ in images]
        prompts = self.prompts(queries)
        by_size: dict[tuple[int, ...], list[_Prompt]] = {}
        for p in prompts:
            by_size.setdefault(images[p.image].shape, []).append(p)
        for group in by_size.values():
            for start in range(0, len(group), self.cfg.batch_size):
                chunk = group[start:start + self.cfg.batch_size]
                for p, found in zip(chunk, self._forward([images[p.image] for p in chunk], chunk)):
                    results[p.image].extend(found)
        return results

    def _forward(self, images: list[np.ndarray], prompts: list[_Prompt]) -> list[list[Detection]]:
        import torch

        # channels_last: said, not guessed (a 3-pixel-high frame would pass for channels-first)
        inputs = self.processor(images=images, text=[p.text for p in prompts], padding="longest",
                                return_offsets_mapping=True, input_data_format="channels_last", return_tensors="pt")
        offsets = inputs.pop("offset_mapping")  # (B, T, 2) characters of each token
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        probs = outputs.logits.sigmoid().float().cpu()  # (B, num_queries, max_text_len); masked tokens -> 0
        boxes = outputs.pred_boxes.float().cpu()  # (B, num_queries, 4) cx, cy, w, h relative to the image
        input_ids = inputs["input_ids"].cpu()
        return [
            self._decode(probs[b], boxes[b], input_ids[b], offsets[b], prompt, images[b].shape[:2])
            for b, prompt in enumerate(prompts)
        ]

    def _decode(self, probs: Any, boxes: Any, input_ids: Any, offsets: Any, prompt: _Prompt,
                size: tuple[int, ...]) -> list[Detection]:
        import torch

        height, width = size
        n_tokens = min(probs.shape[-1], input_ids.shape[0])
        members = _token_members(offsets[:n_tokens], prompt.spans)  # (Q, T) bool: token t belongs to query q
        tokens = probs[:, :n_tokens]  # (N, T)
        per_query = torch.where(members[None], tokens[:, None, :], torch.zeros(())).amax(-1)  # (N, Q)
        score, best = per_query.max(-1)  # (N,)
        cx, cy, w, h = boxes.unbind(-1)
        xyxy = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], -1)
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
        found = []
        for n in torch.nonzero(score > self.cfg.box_threshold).flatten().tolist():
            q = int(best[n])
            above = members[q] & (tokens[n] > self.cfg.text_threshold)
            x0, y0, x1, y1 = (float(v) for v in xyxy[n])
            if not bool(above.any()) or x1 <= x0 or y1 <= y0:
                continue
            label = self.processor.tokenizer.decode(input_ids[above].tolist())
            found.append(Detection(query=prompt.queries[q], label=label, score=float(score[n]), box=(x0, y0, x1, y1)))
        return found


def _prompt(image: int, phrases: list[tuple[str, int]]) -> _Prompt:
    spans, pieces, at = [], [], 0
    for phrase, _ in phrases:
        spans.append((at, at + len(phrase)))
        pieces.append(phrase + ".")
        at += len(phrase) + 2  # the dot and the space after it
    return _Prompt(image=image, queries=[q for _, q in phrases], text=" ".join(pieces), spans=spans)


def _token_members(offsets: Any, spans: list[tuple[int, int]]) -> Any:
    """(Q, T) bool: token t lies inside query q's characters. Special tokens have empty offsets
    and delimiter dots lie between spans, so both belong to no query."""
    import torch

    start, end = offsets[:, 0], offsets[:, 1]  # (T,)
    real = end > start
    return torch.stack([real & (start >= s) & (end <= e) for s, e in spans])
