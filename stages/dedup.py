"""dedup: global near-duplicate removal and a leakage check against held-out data.

Workers only make sure every sample has an embedding (reusing the `embed` stage's when the same
embedder made it from the same image). The decisions need every row at once, so they are made on
the driver in `finalize`, over all fragments together:

1. leakage: with `reference_set`, any sample whose image is at cosine >= `leakage_threshold` to a
   held-out sample (or pixel-identical to one) is dropped as `leakage`;
2. the rest are linked when pixel-identical (`content_hash`) or at cosine >= `threshold`; each
   connected component keeps its best member by `keep_by` and drops the others as
   `near_duplicate`, with `duplicate_of` naming the kept sample.

Earlier verdicts are recomputed from scratch on every run, so a rerun (or a run with another
threshold) never depends on what an earlier one dropped. docs/dedup.md explains how to choose the
threshold and how the search scales.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field

from curation.core import layout, storage
from curation.core.schema import scores_of
from curation.core.stage import Threshold
from curation.core.verdicts import rewrite_parts
from curation.dedup.reference_set import load_reference_set
from curation.dedup.search import CellTask, PairBlock, SearchConfig, best_first, deduplicate, find_leakage, local_map
from curation.stages.base.embedding import EmbeddingColumns, EmbeddingStage, embedding_matrix

log = logging.getLogger(__name__)

NEAR_DUPLICATE = "near_duplicate"
LEAKAGE = "leakage"
_VERDICTS = (NEAR_DUPLICATE, LEAKAGE)
# Which width/height columns give a sample's resolution for `keep_by: resolution`: those of the
# image it is represented by when the row has them.
_SIZE_COLUMNS = (("reference_width", "reference_height"), ("target_width", "target_height"),
                 ("frame_width", "frame_height"), ("width", "height"))


class DedupColumns(EmbeddingColumns):
    duplicate_of: str | None = Field(None, description="near_duplicate: the kept sample this one duplicates")
    duplicate_similarity: float | None = Field(None, description="near_duplicate: cosine to the kept sample (1.0 for "
                                                                 "pixel-identical copies)")
    duplicate_group_size: int | None = Field(None, description="members of this sample's near-duplicate group (1: unique)")
    leakage_of: str | None = Field(None, description="leakage: the held-out sample it matches")
    leakage_similarity: float | None = Field(None, description="leakage: cosine to that held-out sample")


class Dedup(EmbeddingStage):
    """Global near-duplicate removal (keep the best of each group) and held-out leakage check."""

    name: ClassVar[str] = "dedup"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = DedupColumns

    threshold: float | None = Field(None, gt=0, le=1, description="near-duplicate at cosine >= this; null: the embedder's "
                                    "default (CLIP 0.95, phash 0.88)")
    keep_by: list[str] = Field(default_factory=lambda: ["scores.edit_score", "scores.reference_score", "resolution"],
                               description="what makes a group's best member, in order, higher first: scores.<name>, "
                               "resolution (width*height of the represented image) or any numeric column; ties: sample_id")
    reference_set: str | None = Field(None, description="held-out manifest dir or WebDataset shards; samples near one are dropped "
                                                        "as leakage")
    leakage_threshold: float | None = Field(None, gt=0, le=1, description="leakage at cosine >= this; null: `threshold`")
    search: SearchConfig = Field(default_factory=SearchConfig, description="how pairs are searched (exact below a size switch, "
                                                                           "k-means cells above)")
    ray_tasks: bool = Field(True, description="run the cell search above the size switch as Ray tasks when Ray is up")

    reuses_vectors: ClassVar[bool] = True

    def required_modules(self) -> dict[str, str]:
        faiss = {} if self.search.method == "exact" else {"faiss": "pip install 'curation[faiss]', or dedup.search.method=exact"}
        return {**super().required_modules(), **faiss}

    def near_threshold(self) -> float:
        return self.threshold if self.threshold is not None else self.embedder.default_threshold()

    def thresholds(self) -> list[Threshold]:
        """The near-duplicate cut, on the similarity column this stage writes."""
        return [Threshold(score="duplicate_similarity", value=self.near_threshold(), setting="threshold", column=True)]

    # ---- the global decision (driver) -------------------------------------------------------
    def finalize(self, stage_dir: str) -> None:
        parts = layout.manifest_parts(stage_dir)
        candidates = self._candidates(parts)
        ids: list[str] = candidates["sample_id"]
        verdicts: dict[str, dict[str, Any]] = {sid: _clean() for sid in ids}
        if ids:
            vectors = candidates["vectors"]
            hashes = candidates["content_hash"]
            alive = np.ones(len(ids), bool)
            if self.reference_set:
                alive = self._leakage(vectors, hashes, ids, verdicts)
            self._near_duplicates(vectors[alive], [h for h, a in zip(hashes, alive) if a],
                                  [i for i, a in zip(range(len(ids)), alive) if a], candidates, verdicts)
        rewrite_parts(parts, verdicts, list(_clean()))

    def _candidates(self, parts: list[str]) -> dict[str, Any]:
        """Rows the decision is about: kept ones and ones an earlier dedup dropped, with vectors."""
        columns = ["sample_id", "status", "reason", "embedding", "content_hash", "scores",
                   *{c for pair in _SIZE_COLUMNS for c in pair}, *(k for k in self.keep_by if "." not in k and k != "resolution")]
        ids: list[str] = []
        hashes: list[str | None] = []
        rows: list[dict[str, Any]] = []
        blocks: list[np.ndarray] = []
        for part in parts:
            table = storage.read_table(part, columns=columns)
            keep = [s == "ok" or (s == "dropped" and _verdict(r) is not None)
                    for s, r in zip(table.column("status").to_pylist(), table.column("reason").to_pylist())]
            table = table.filter(pa.array(keep, pa.bool_()))
            if not table.num_rows:
                continue
            blocks.append(embedding_matrix(table.column("embedding")))
            small = table.drop_columns(["embedding"]).to_pylist()
            ids.extend(r["sample_id"] for r in small)
            hashes.extend(r.get("content_hash") for r in small)
            rows.extend(small)
        dims = {b.shape[1] for b in blocks}
        if len(dims) > 1:
            raise ValueError(f"dedup: embeddings of different sizes {sorted(dims)} in one manifest")
        vectors = np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float16)
        return {"sample_id": ids, "content_hash": hashes, "rows": rows, "vectors": vectors}

    def _leakage(self, vectors: np.ndarray, hashes: list[str | None], ids: list[str],
                 verdicts: dict[str, dict[str, Any]]) -> np.ndarray:
        held_out = load_reference_set(self.reference_set, lambda rows: self.process_batch(rows),
                                      lambda images: self.loaded_embedder().embed_images(images))
        threshold = self.leakage_threshold if self.leakage_threshold is not None else self.near_threshold()
        # Leakage is searched from the training side only; more probes keep its recall at the
        # near-duplicate search's (bench: 8 probes recall 0.989 of leaks, 16 give 0.999).
        search = self.search.model_copy(update={"probes": max(16, self.search.probes)})
        found = find_leakage(vectors, held_out.vectors, threshold, train_hashes=hashes,
                             reference_hashes=held_out.hashes, config=search, map_fn=self._map_fn())
        for i in np.flatnonzero(found.leaked):
            ref = held_out.ids[int(found.reference_index[i])]
            sim = float(found.similarity[i])
            how = "pixel-identical to" if found.exact[i] else f"cosine {sim:.3f} to"
            verdicts[ids[i]] = {**_clean(), "status": "dropped", "reason": f"{LEAKAGE}: {how} held-out sample {ref}",
                                "leakage_of": ref, "leakage_similarity": sim}
        log.info("dedup: %d of %d samples match the held-out set %s", int(found.leaked.sum()), len(ids), self.reference_set)
        return ~found.leaked

    def _near_duplicates(self, vectors: np.ndarray, hashes: list[str | None], index: list[int],
                         candidates: dict[str, Any], verdicts: dict[str, dict[str, Any]]) -> None:
        if not index:
            return
        rows = [candidates["rows"][i] for i in index]
        ids = [r["sample_id"] for r in rows]
        priority = best_first([*((self._key(rows, k), True) for k in self.keep_by), (ids, False)])
        result = deduplicate(vectors, self.near_threshold(), priority=priority, hashes=hashes, config=self.search,
                             map_fn=self._map_fn())
        group_sizes = np.bincount(np.where(result.keep, np.arange(len(ids)), result.duplicate_of), minlength=len(ids))
        for i, sid in enumerate(ids):
            if result.keep[i]:
                verdicts[sid]["duplicate_group_size"] = int(group_sizes[i])
                continue
            kept = int(result.duplicate_of[i])
            sim = 1.0 if result.exact[i] else float(result.similarity[i])
            how = "pixel-identical to it" if result.exact[i] else f"cosine {sim:.3f} to it"
            verdicts[sid] = {**_clean(), "status": "dropped",
                             "reason": f"{NEAR_DUPLICATE}: its group keeps {ids[kept]} ({how})",
                             "duplicate_of": ids[kept], "duplicate_similarity": sim,
                             "duplicate_group_size": int(group_sizes[kept])}
        log.info("dedup: %s", result.counts)

    def _key(self, rows: list[dict[str, Any]], key: str) -> list[float | None]:
        if key == "resolution":
            return [_resolution(r) for r in rows]
        if key.startswith("scores."):
            name = key.split(".", 1)[1]
            return [scores_of(r).get(name) for r in rows]
        return [r.get(key) for r in rows]

    def _map_fn(self):
        import ray

        return _ray_map if self.ray_tasks and ray.is_initialized() else local_map


def _ray_map(fn, shared: Any, tasks: list[CellTask]) -> Iterator[PairBlock]:
    """The cell search as Ray tasks: the vectors go to the object store once, not once per task."""
    import ray

    ref = ray.put(shared)
    remote = ray.remote(num_cpus=0.5)(fn)
    pending = [remote.remote(ref, task) for task in tasks]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


def _resolution(row: dict[str, Any]) -> float | None:
    for w, h in _SIZE_COLUMNS:
        if row.get(w) and row.get(h):
            return float(row[w]) * float(row[h])
    return None


def _verdict(reason: str | None) -> str | None:
    """`near_duplicate` / `leakage` when an earlier dedup made this drop, else None."""
    prefix = (reason or "").split(":", 1)[0]
    return prefix if prefix in _VERDICTS else None


def _clean() -> dict[str, Any]:
    return {"status": "ok", "reason": None, "duplicate_of": None, "duplicate_similarity": None,
            "duplicate_group_size": 1, "leakage_of": None, "leakage_similarity": None}
