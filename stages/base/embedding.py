"""What `embed` and `dedup` share: one representative image per sample, its pixel hash, and its
embedding, batched through one `Embedder` per worker.

`dedup` reuses the vectors `embed` wrote when they come from the same embedder and the same
image (`embedding_model` and `embedded_media` agree); otherwise it embeds the rows itself, so
`dedup.embedder=phash` works with or without an `embed` stage before it.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field, PrivateAttr

from curation.backends.embed import EmbedConfig, Embedder, make_embedder
from curation.backends.models import model_ref
from curation.core.schema import ArrowType
from curation.core.stage import ModelRef, Row, Stage, failure_reason
from curation.media.representative import MediaChoice, pixel_hash, representative_image, resolve_choice


class EmbeddingColumns(BaseModel):
    embedding: Annotated[list[float] | None, ArrowType(pa.list_(pa.float16()))] = Field(
        None, description="L2-normalised image embedding (float16) of the sample's representative image")
    embedding_model: str | None = Field(None, description="the embedder that made it (backend:model@pretrained, or phash-...)")
    embedded_media: str | None = Field(None, description="which image was embedded: reference | target | source | middle_frame")
    content_hash: str | None = Field(None, description="SHA-1 of that image's decoded pixels: equal for exact duplicates")


class EmbeddingStage(Stage):
    """Base of `embed` and `dedup`: fills `EmbeddingColumns` for each row."""

    embedder: EmbedConfig = Field(default_factory=EmbedConfig, description="which embedding model (embedder=phash for the "
                                                                           "model-free perceptual hash)")
    media: MediaChoice = Field("auto", description="auto (quad: reference; pair/triplet: first target frame; session/clip: "
                               "middle frame) | reference | target | source | middle_frame")
    max_pixels: int = Field(1 << 26, gt=0, description="image-bomb guard for images read from files")

    _embedder: Embedder | None = PrivateAttr(default=None)

    # dedup reuses the vectors an earlier `embed` wrote with the same embedder; embed always computes.
    reuses_vectors: ClassVar[bool] = False
    # The representative image: a session's middle frame or a quad's reference (others come from URIs).
    reads_media: ClassVar[tuple[str, ...]] = ("frames", "reference")

    def uses_gpu(self) -> bool:
        return self.embedder.backend != "phash"  # the perceptual hash is numpy on the CPU

    def required_modules(self) -> dict[str, str]:
        if self.embedder.backend != "open_clip":
            return {}
        return {"open_clip": f"pip install 'curation[clip]', or use {self.name}.embedder.backend=transformers or =phash"}

    def model_devices(self) -> dict[str, str]:
        device = getattr(self._embedder, "device", None)
        return {"embedder": device} if device else {}

    def models(self) -> dict[str, ModelRef]:
        if self.embedder.backend == "phash":
            return {"embedder": ModelRef(id=self.embedder.key())}
        return {"embedder": model_ref(self.embedder.model)}

    def loaded_embedder(self) -> Embedder:
        """The embedder, loaded on first use (dedup may never need it: vectors from `embed` are reused)."""
        if self._embedder is None:
            self._embedder = make_embedder(self.embedder)
        return self._embedder

    def reusable(self, row: dict[str, Any]) -> bool:
        """Whether the row already carries this embedder's vector of the image this stage would embed."""
        if row.get("embedding") is None or not row.get("content_hash") or row.get("embedding_model") != self.embedder.key():
            return False
        try:
            return row.get("embedded_media") == resolve_choice(row, self.media)
        except Exception:  # noqa: BLE001 - no representative image: recompute, which records why
            return False

    def process_batch(self, rows: list[Row]) -> list[Row]:
        """Each row with its embedding columns, or as an error row saying why it has none. Images
        are decoded one at a time and embedded as one batch per call."""
        out: dict[int, Row] = {}
        todo: list[tuple[int, str, np.ndarray]] = []
        for r, row in enumerate(rows):
            if self.reuses_vectors and self.reusable(row):
                out[r] = self.enrich(row)
                continue
            try:
                what, image = representative_image(row, self.media, self.max_pixels)
            except Exception as e:  # noqa: BLE001 - a bad sample must not stop the run
                out[r] = self.error_row(row, failure_reason(e))
                continue
            todo.append((r, what, image))
        if todo:
            vectors = self.loaded_embedder().embed_images([image for _, _, image in todo])
            key = self.embedder.key()
            for (r, what, image), vector in zip(todo, vectors):
                out[r] = self.enrich(rows[r], embedding=vector, embedding_model=key, embedded_media=what,
                                     content_hash=pixel_hash(image))
        return [out[r] for r in range(len(rows))]

    def __getstate__(self) -> dict[str, Any]:
        # A loaded model stays where it was loaded; each worker loads its own.
        state = super().__getstate__()
        private = dict(state.get("__pydantic_private__") or {})
        private.update(_embedder=None, _ready=False)
        return {**state, "__pydantic_private__": private}


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float16> column without nulls as an (n, d) float16 array, without a Python loop."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(array)
    if n == 0:
        return np.zeros((0, 0), np.float16)
    lengths = pc.list_value_length(array)
    if array.null_count or pc.min(lengths).as_py() != pc.max(lengths).as_py():
        raise ValueError("embeddings missing or of different lengths in one manifest (mixed embedders?)")
    values = array.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(n, values.size // n).astype(np.float16, copy=False)
