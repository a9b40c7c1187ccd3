"""Image (and text) embeddings for near-duplicate search: unit-length float16 rows, so cosine
similarity is a plain inner product (what a FAISS inner-product index computes).

Three backends, one contract (`Embedder`):

* `open_clip`: an open_clip model: a built-in architecture name with a `pretrained` tag, an
  `hf-hub:org/repo` id, a local directory in open_clip's hub layout (`open_clip_config.json` +
  weights, loaded through open_clip's own `local-dir:` schema) or `tiny:open-clip`.
* `transformers`: a `CLIPModel` hub id, local directory or `tiny:clip`.
* `phash`: no model at all, a real-valued perceptual hash for runs without CLIP weights (CI).
  Images only; its similarity scale differs from CLIP's (see `PerceptualEmbedder`).

Features are computed in float32 and normalised before the cast to float16, so rounding never
leaves a row off unit length by more than float16's precision.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.backends.models import DEVICE_PATTERN, is_random_weights, model_ref, pick_device, resolve_model
from curation.core.config_change import RUN_ONLY
from curation.core.stage import ModelRef


class EmbedConfig(BaseModel):
    """Which embedding model, and how it runs. The default is open_clip's ViT-B-32 trained on
    LAION-2B, the common CLIP for deduplicating image datasets."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["open_clip", "transformers", "phash"] = Field(
        "open_clip", description="open_clip, transformers (CLIPModel) or phash (no model: a perceptual hash)")
    model: str = Field(
        "ViT-B-32", description="open_clip: built-in architecture name, hf-hub:org/repo, local directory or "
        "tiny:open-clip; transformers: hub id, local directory or tiny:clip; phash: unused")
    pretrained: str | None = Field(
        "laion2b_s34b_b79k", description="open_clip weights tag (or checkpoint file) for a built-in architecture "
        "name; ignored for hub ids, local directories and the other backends")
    batch_size: int = Field(32, ge=1, json_schema_extra=RUN_ONLY, description="images or texts per forward pass")
    device: str = Field("auto", pattern=DEVICE_PATTERN, json_schema_extra=RUN_ONLY,
                        description="auto (CUDA when the worker has a GPU), cpu, cuda or cuda:N")

    @model_validator(mode="before")
    @classmethod
    def _backend_shorthand(cls, data: Any) -> Any:
        """`embedder=phash` on the command line means `embedder.backend=phash` with the other defaults."""
        return {"backend": data} if isinstance(data, str) else data

    def key(self) -> str:
        """What decides the vectors (not how fast they are made): embeddings recorded under the same
        key can be reused instead of recomputed."""
        if self.backend == "phash":
            return PerceptualEmbedder.ID
        return f"{self.backend}:{self.model}" + (f"@{self.pretrained}" if self.pretrained_tag_applies() else "")

    def pretrained_tag_applies(self) -> bool:
        """open_clip only: `pretrained` names weights for a built-in architecture name, not for a hub
        id, a local directory or a tiny model (those carry their own weights)."""
        return (self.backend == "open_clip" and bool(self.pretrained) and not self.model.startswith(("hf-hub:", "local-dir:"))
                and not is_random_weights(self.model) and not Path(self.model).expanduser().exists())

    def default_threshold(self) -> float:
        """Near-duplicate cosine cut for this backend's similarity scale (see PerceptualEmbedder for phash)."""
        return PHASH_THRESHOLD if self.backend == "phash" else CLIP_THRESHOLD


# Cosine at or above which two images are near-duplicates. CLIP: DESIGN.md's 0.95 (in SemDeDup's terms,
# epsilon = 1 - cosine = 0.05); docs/dedup.md says how to choose it for a dataset.
CLIP_THRESHOLD = 0.95
# phash: pHash's usual <= 10 of 64 differing bits, as a cosine (see PerceptualEmbedder).
PHASH_THRESHOLD = 0.88


class Embedder(Protocol):
    """What every backend offers."""

    @property
    def dim(self) -> int: ...

    def model_ref(self) -> ModelRef:
        """The weights that made the vectors, for `_run.json`."""
        ...

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        """RGB uint8 (H, W, 3) images of any size -> (n, dim) float16 unit rows."""
        ...

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> (n, dim) float16 unit rows in the images' space."""
        ...


def make_embedder(cfg: EmbedConfig) -> Embedder:
    """The configured backend, its model loaded."""
    backends = {"open_clip": OpenClipEmbedder, "transformers": HFClipEmbedder, "phash": PerceptualEmbedder}
    return backends[cfg.backend](cfg)


def check_rgb(images: list[np.ndarray]) -> None:
    """Fail on the first image that is not RGB uint8, naming it, before any work is done."""
    for i, image in enumerate(images):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {i}: expected RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")


def unit_rows(features: np.ndarray) -> np.ndarray:
    """(n, d) float32 -> L2-normalised float16 rows."""
    features = features.astype(np.float32, copy=False)
    return (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float16)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ---- CLIP backends ---------------------------------------------------------------------------
class _ClipEmbedder(ABC):
    """Batching, device and normalisation shared by the CLIP backends; a subclass loads its
    model in `__init__` and turns one batch into features."""

    def __init__(self, cfg: EmbedConfig, dim: int):
        self.cfg = cfg
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def model_ref(self) -> ModelRef:
        return model_ref(self.cfg.model)

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        check_rgb(images)
        return self._embed(images, self._image_features)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts, self._text_features)

    def _embed(self, items: list, features: Any) -> np.ndarray:
        import torch

        if not items:
            return np.zeros((0, self.dim), np.float16)
        with torch.inference_mode():
            batches = [features(chunk).float().cpu().numpy() for chunk in _chunks(items, self.cfg.batch_size)]
        return unit_rows(np.concatenate(batches))

    @abstractmethod
    def _image_features(self, images: list[np.ndarray]) -> Any:
        """(B, dim) unnormalised features, a tensor on the model's device."""

    @abstractmethod
    def _text_features(self, texts: list[str]) -> Any:
        """(B, dim) unnormalised features, a tensor on the model's device."""


class OpenClipEmbedder(_ClipEmbedder):
    """open_clip, loaded with `create_model_from_pretrained`, which refuses to hand back a model
    without weights (a missing tag or file is an error, never silently random vectors)."""

    def __init__(self, cfg: EmbedConfig):
        try:
            import open_clip
        except ImportError as e:
            raise ImportError("embedder backend open_clip needs the open_clip_torch package: "
                              "pip install open_clip_torch (or curate[clip])") from e

        name, self.pretrained = open_clip_source(cfg)
        self.device = pick_device(cfg.device)
        self.model, self.preprocess = open_clip.create_model_from_pretrained(name, pretrained=self.pretrained, device=self.device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        super().__init__(cfg, int(open_clip.get_model_config(name)["embed_dim"]))

    def model_ref(self) -> ModelRef:
        shown = self.cfg.model if self.pretrained is None else f"{self.cfg.model} pretrained={self.pretrained}"
        return model_ref(self.cfg.model, shown)

    def _image_features(self, images: list[np.ndarray]) -> Any:
        import torch
        from PIL import Image

        pixels = torch.stack([self.preprocess(Image.fromarray(image)) for image in images])  # (B, 3, S, S)
        return self.model.encode_image(pixels.to(self.device))

    def _text_features(self, texts: list[str]) -> Any:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


def open_clip_source(cfg: EmbedConfig) -> tuple[str, str | None]:
    """(model name for open_clip, pretrained tag). A reference that resolves to a local directory
    (a downloaded hub repo, or a `tiny:` build) goes through open_clip's `local-dir:` schema; a
    `pretrained` tag only applies to a built-in architecture name."""
    resolved = resolve_model(cfg.model)
    if Path(resolved.path).is_dir():
        return f"local-dir:{resolved.path}", None
    return cfg.model, cfg.pretrained if cfg.pretrained_tag_applies() else None


class HFClipEmbedder(_ClipEmbedder):
    """transformers `CLIPModel`: projected pooled features of either tower."""

    def __init__(self, cfg: EmbedConfig):
        from transformers import CLIPModel, CLIPProcessor

        path = resolve_model(cfg.model).path
        self.device = pick_device(cfg.device)
        self.processor = CLIPProcessor.from_pretrained(path)
        self.model = CLIPModel.from_pretrained(path).to(self.device).eval()
        super().__init__(cfg, int(self.model.config.projection_dim))

    def _image_features(self, images: list[np.ndarray]) -> Any:
        # channels_last: said, not guessed (a 3-pixel-high image would pass for channels-first)
        pixels = self.processor.image_processor(images=images, input_data_format="channels_last", return_tensors="pt")
        return self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device)).pooler_output

    def _text_features(self, texts: list[str]) -> Any:
        tokens = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        return self.model.get_text_features(**tokens).pooler_output


# ---- perceptual hash -------------------------------------------------------------------------
PHASH_THUMB = 32  # grey thumbnail side, as in pHash
PHASH_BAND = 8  # lowest DCT frequencies kept per axis, as in pHash
# A constant last coordinate, tiny next to any visible texture (a DCT coefficient of 1 is a ripple
# of about 1/16 grey level), so that a flat image, which has no AC energy at all, still gets a unit
# vector: all flat images are then duplicates of one another, as they look, instead of 0/0.
PHASH_FLAT = 1.0


class PerceptualEmbedder:
    """pHash without the binarisation: grey 32x32 thumbnail (INTER_AREA), 2-D DCT, the 8x8
    lowest frequencies without the DC term (63 values), plus the flat-image coordinate.

    The DCT is orthonormal and the DC term is the mean, so the cosine of two such vectors is the
    Pearson correlation of the two thumbnails low-passed to that band: a similarity with a meaning
    of its own, unmoved by brightness and contrast and barely moved by resizing. pHash keeps only each
    coefficient's sign (against the median); keeping the values makes the similarity continuous
    where the bits are brittle: on 33 real photos a JPEG re-encode at quality 75 or 30 keeps cosine
    >= 0.996 here, while pHash loses up to 2 bits (cosine 0.937 on the same scale). Values also rank
    the ground-truth near-duplicates in shared/media better than the bits do (6 of 7 above every
    unrelated pair, against 5 of 7), and the 8x8 band beats 12x12 and 16x16 there.

    Threshold: sign agreement and correlation are tied by P(bit differs) = arccos(cos) / pi
    (Sheppard; Charikar's SimHash), so pHash's usual cut of at most 10 differing bits of 64 maps to
    cosine >= cos(10 pi / 64) ~ 0.88. At the CLIP default 0.95 only re-encodes, resizes and nearly
    identical frames match. Like pHash it is grey only and does not survive crops or viewpoint
    changes.
    """

    ID = f"phash-dct{PHASH_BAND}-{PHASH_THUMB}px"

    def __init__(self, cfg: EmbedConfig):
        self.cfg = cfg

    @property
    def dim(self) -> int:
        return PHASH_BAND * PHASH_BAND  # 63 AC coefficients + the flat coordinate

    def model_ref(self) -> ModelRef:
        return ModelRef(id=self.ID)

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        check_rgb(images)
        if not images:
            return np.zeros((0, self.dim), np.float16)
        return unit_rows(np.stack([phash_features(image) for image in images]))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError("the phash backend embeds images only; use open_clip or transformers for texts")


def phash_features(image: np.ndarray) -> np.ndarray:
    """(64,) float32: the 63 low AC DCT coefficients of the grey thumbnail, then PHASH_FLAT."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    thumb = cv2.resize(grey, (PHASH_THUMB, PHASH_THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)
    band = cv2.dct(thumb)[:PHASH_BAND, :PHASH_BAND].ravel()[1:]  # (63,) without DC, the mean brightness
    return np.append(band, np.float32(PHASH_FLAT))
