"""embed: one L2-normalised image embedding per sample, for dedup, leakage checks and retrieval.

The embedded image is the sample's representative (`media=auto`: a quad's reference, the first
target frame of a pair or triplet, the middle frame of a session or clip). Beside the vector the
row records which embedder made it and a hash of the image's pixels (exact duplicates).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from curation.stages.base.embedding import EmbeddingColumns, EmbeddingStage


class Embed(EmbeddingStage):
    """CLIP (open_clip or transformers) or perceptual-hash embedding of each sample's representative image."""

    name: ClassVar[str] = "embed"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = EmbeddingColumns

    def setup(self) -> None:
        self.loaded_embedder()
