"""embed: one L2-normalised image embedding per sample, for dedup, leakage checks and retrieval.

The embedded image is the sample's representative (`media=auto`: a quad's reference, the first
target frame of a pair or triplet, the middle frame of a session or clip). Beside the vector the
row records which embedder made it and a hash of the image's pixels (exact duplicates).
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
from pydantic import BaseModel, Field

from curation import manifest as mf
from curation.embedding_stage import EmbeddingColumns, EmbeddingStage
from curation.stage import Resources


class Embed(EmbeddingStage):
    """CLIP (open_clip or transformers) or perceptual-hash embedding of each sample's representative image."""

    name: ClassVar[str] = "embed"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = EmbeddingColumns

    resources: Resources = Field(default_factory=Resources, description="Ray resources per worker")

    def setup(self) -> None:
        self.loaded_embedder()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return mf.rows_to_table(self.embed_rows(batch.to_pylist(), reuse=False), self.output_schema(batch.schema))
