"""Near-duplicate and leakage search over L2-normalised embeddings: the engine of the `dedup` stage.

Pure numpy/faiss: the stage reads every fragment's `embedding`, `content_hash` and ranking columns,
calls `deduplicate` (and `find_leakage`) once over the whole manifest, and writes the verdicts back.
Dedup is global: a duplicate pair split across two fragments is found like any other.

A pair is a near-duplicate when its cosine is >= the threshold. The cosine of a pair is always
computed the same way (`pair_similarity`: float32 dot of the two rows), whichever search found it:
searches only propose candidates (with a small margin below the threshold), so every method agrees
on pairs that sit exactly at the threshold.

Search methods (`SearchConfig.method`):
  exact     blocked float32 matrix products over all pairs: recall 1, O(n^2 d), memory bounded by the
            block size;
  semantic  SemDeDup-style: spherical k-means cells on a sample; each vector belongs to its nearest
            cell and is compared, by matrix product, with the members of its `probes` nearest cells;
            the per-cell work can be handed to Ray through `map_fn`;
  faiss     an IVF index (`IndexIVFScalarQuantizer`, fp16) over the vectors, `range_search`ed with
            them in chunks: the same cells and probes as `semantic`, scanned by faiss instead of BLAS;
  auto      exact up to `exact_max` vectors, semantic above.
`semantic` and `faiss` find the same candidate pairs (a pair is found when one member's cell is among
the other's `probes` nearest). `semantic` scans them with BLAS and stores no copy of the vectors; faiss
scans one query at a time and holds a second (fp16) copy: at 1M x 512 on 2 cores, 53 s and 1.3 GiB
peak RSS against 270 s and 2.5 GiB, both recalling 0.996 of planted pairs (bench/dedup.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.core.config_change import RUN_ONLY

Vectors = np.ndarray | Sequence[np.ndarray]  # (n, d) float rows, or fragments of them in order
PairBlock = tuple[np.ndarray, np.ndarray, np.ndarray]  # query index, base index (int64), cosine (float32)

# Searches propose candidates down to `threshold - _MARGIN`, then `pair_similarity` decides. 1e-3
# covers float32 summation-order differences (~1e-5 at d=512) and fp16 rounding of float32 inputs in
# the faiss index (<= ~5e-4 on a cosine).
_MARGIN = 1e-3
_NORM_TOLERANCE = 1e-2


class SearchConfig(BaseModel):
    """How pairs above a cosine threshold are searched (the threshold itself is an argument)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["auto", "exact", "faiss", "semantic"] = Field(
        "auto", description="auto: exact up to exact_max vectors, semantic above")
    exact_max: int = Field(
        32_768, ge=1, description="largest set searched exactly under auto (self search; a cross search gets the "
        "same number of products): 2.7 s at d=512 on 2 cores against semantic's 0.7 s, so below it a few "
        "seconds buy recall 1 (bench/dedup.py --n 32768 --methods exact semantic)")
    cells: int | None = Field(
        None, ge=1, description="k-means cells / IVF lists; default 2*sqrt(n), near the cost optimum "
        "sqrt(probes*n) of assignment (n*cells) against scan (n*probes*n/cells) while keeping k-means training "
        "(~cells^2) cheap; capped so each cell gets train_per_cell training vectors")
    probes: int = Field(
        8, ge=1, description="cells each vector is compared against (IVF nprobe); in dedup 8 recalls 0.996 of pairs "
        "at cosine 0.95-0.99 among random 512-d vectors (the worst case: no cluster structure). Leakage searches "
        "one way only (train probes, reference is probed): 8 recalls ~0.99 there, 16 ~0.999")
    train_per_cell: int = Field(40, ge=1, description="k-means training sample per cell (faiss wants >= 39)")
    kmeans_iters: int = Field(10, ge=1, description="k-means iterations")
    block_rows: int = Field(4096, ge=1, description="rows per float32 block in matrix products and faiss calls")
    task_rows: int = Field(65_536, ge=1, description="semantic: probing rows per map_fn task")
    threads: int | None = Field(
        None, ge=1, json_schema_extra=RUN_ONLY, description="faiss OpenMP threads for k-means, assignment and faiss search (None: faiss's "
        "default, all cores); numpy's BLAS threads are the process's own")
    seed: int = Field(0, description="k-means sample and initialisation")


# ---------------------------------------------------------------------------------------------
# Union-find and ranking
# ---------------------------------------------------------------------------------------------


class UnionFind:
    """Disjoint sets over 0..n-1, with path halving and union by size. Python lists, not numpy:
    per-element access to a list is several times faster, and edges come one by one."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> bool:
        """Merge the sets of a and b; False when they were already one."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return True

    def union_pairs(self, first: Iterable[int], second: Iterable[int]) -> None:
        for a, b in zip(first, second):
            self.union(a, b)

    def labels(self) -> np.ndarray:
        """(n,) int64: each item's set representative (pointer jumping, vectorised)."""
        labels = np.asarray(self.parent, dtype=np.int64)
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                return labels
            labels = jumped

    def components(self, min_size: int = 1) -> list[np.ndarray]:
        """The sets with at least `min_size` members, each as sorted indices, ordered by smallest member."""
        labels = self.labels()
        order = np.argsort(labels, kind="stable")
        starts = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1]])
        groups = [g for g in np.split(order, starts[1:]) if len(g) >= min_size] if len(order) else []
        return sorted(groups, key=lambda g: int(g[0]))


def best_first(keys: Sequence[tuple[Sequence[Any] | np.ndarray, bool]]) -> np.ndarray:
    """(n,) int64 rank of each item, 0 = best, by `keys` in turn, each `(values, descending)`, e.g.
    `[(edit_score, True), (pixels, True), (sample_id, False)]`. Missing values (None, NaN) rank last
    whichever the direction; ties left after every key go to the lower index, so end with a unique
    key (sample_id) to make the result independent of row order."""
    if not keys:
        raise ValueError("best_first needs at least one key")
    codes = [_sort_codes(values, descending) for values, descending in keys]
    n = len(codes[0])
    if any(len(c) != n for c in codes):
        raise ValueError(f"keys of different lengths: {[len(c) for c in codes]}")
    order = np.lexsort([np.arange(n)] + codes[::-1])  # lexsort: last key is primary
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return rank


def _sort_codes(values: Sequence[Any] | np.ndarray, descending: bool) -> np.ndarray:
    """Integer codes that sort like `values` (negated when descending), missing values last."""
    array = np.asarray(values)
    if array.dtype == object:
        missing = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in array], dtype=bool)
    elif array.dtype.kind == "f":
        missing = np.isnan(array)
    else:
        missing = np.zeros(len(array), dtype=bool)
    codes = np.full(len(array), len(array), dtype=np.int64)
    present = np.unique(array[~missing], return_inverse=True)[1].reshape(-1)
    codes[~missing] = -present if descending else present
    return codes


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pairs:
    """Row pairs first < second with cosine >= threshold, sorted, each pair once."""

    first: np.ndarray  # (m,) int64
    second: np.ndarray  # (m,) int64
    similarity: np.ndarray  # (m,) float32

    def __len__(self) -> int:
        return len(self.first)


@dataclass(frozen=True)
class DedupResult:
    """One verdict per input row, in input order. A dropped row's `duplicate_of` is the kept row of
    its connected component; `similarity` is its cosine to that row (in a chain a-b-c it can be below
    the threshold); `exact` says its content hash equals the kept row's."""

    keep: np.ndarray  # (n,) bool
    duplicate_of: np.ndarray  # (n,) int64, -1 where kept
    similarity: np.ndarray  # (n,) float32, NaN where kept
    exact: np.ndarray  # (n,) bool
    pairs: int  # near-duplicate edges found (a pair found twice counts twice)
    method: str  # the search method actually used

    @property
    def counts(self) -> dict[str, int]:
        dropped = ~self.keep
        return {
            "total": len(self.keep),
            "kept": int(self.keep.sum()),
            "near_duplicate": int(dropped.sum()),
            "exact_duplicate": int(self.exact.sum()),
            "groups": len(np.unique(self.duplicate_of[dropped])),
        }


@dataclass(frozen=True)
class LeakageResult:
    """Per train row: whether it matches the reference set, and its best match (a content-hash match
    wins over any cosine match; otherwise the reference row of highest cosine)."""

    leaked: np.ndarray  # (n_train,) bool
    reference_index: np.ndarray  # (n_train,) int64, -1 where clean
    similarity: np.ndarray  # (n_train,) float32, NaN where clean
    exact: np.ndarray  # (n_train,) bool: content-hash match
    method: str

    @property
    def counts(self) -> dict[str, int]:
        return {"total": len(self.leaked), "leaked": int(self.leaked.sum()), "leaked_exact": int(self.exact.sum())}


# ---------------------------------------------------------------------------------------------
# Cell tasks: the semantic search's per-cell work, in a form `map_fn` can ship to Ray
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellTask:
    """A batch of k-means cells for `cell_pairs`: cell c compares its probing rows
    `probers[prober_bounds[c]:prober_bounds[c+1]]` (query indices) with its members
    `members[member_bounds[c]:member_bounds[c+1]]` (base indices)."""

    probers: np.ndarray
    prober_bounds: np.ndarray
    members: np.ndarray
    member_bounds: np.ndarray
    threshold: np.float32
    self_search: bool


def cell_pairs(shared: tuple[np.ndarray, np.ndarray | None], task: CellTask) -> PairBlock:
    """The pairs of one task's cells, by one matrix product per cell. `shared` is (queries, base or
    None): what `map_fn` ships once to every worker."""
    q, base = shared
    b = q if base is None else base
    found: list[PairBlock] = []
    for c in range(len(task.prober_bounds) - 1):
        probers = task.probers[task.prober_bounds[c]:task.prober_bounds[c + 1]]
        members = task.members[task.member_bounds[c]:task.member_bounds[c + 1]]
        if not len(probers) or not len(members):
            continue
        scores = q[probers].astype(np.float32) @ b[members].astype(np.float32).T  # (P, M)
        pi, mj = _candidates(scores, task.threshold)
        qi, bj = probers[pi], members[mj]
        if task.self_search:
            qi, bj = qi[qi != bj], bj[qi != bj]
        if len(qi):
            found.append(_refine(q, b, qi, bj, task.threshold))
    return _concat(found)


MapFn = Callable[[Callable[[Any, CellTask], PairBlock], Any, list[CellTask]], Iterable[PairBlock]]


def local_map(fn: Callable[[Any, CellTask], PairBlock], shared: Any, tasks: list[CellTask]) -> Iterator[PairBlock]:
    """The default `map_fn`: run every task here, one after the other. A Ray version puts `shared` (the
    vectors) in the object store once and runs `fn(shared_ref, task)` as remote tasks."""
    return (fn(shared, task) for task in tasks)


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def pair_similarity(a: np.ndarray, b: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(m,) float32 cosine of rows a[first] and b[second]: the one definition every method is judged by."""
    return np.einsum("ij,ij->i", a[first].astype(np.float32), b[second].astype(np.float32))


def near_duplicate_pairs(vectors: Vectors, threshold: float, config: SearchConfig | None = None,
                         map_fn: MapFn = local_map) -> Pairs:
    """Every pair i < j of rows with cosine >= threshold (subject to the method's recall)."""
    x = as_matrix(vectors)
    blocks = list(_search(x, None, threshold, config or SearchConfig(), map_fn)[1])
    first, second, similarity = _concat(blocks)
    first, second = np.minimum(first, second), np.maximum(first, second)
    _, unique = np.unique(first * len(x) + second, return_index=True)  # sorted by (first, second)
    return Pairs(first[unique], second[unique], similarity[unique])


def deduplicate(vectors: Vectors, threshold: float, *, priority: np.ndarray | None = None,
                hashes: Sequence[Hashable | None] | None = None, config: SearchConfig | None = None,
                map_fn: MapFn = local_map) -> DedupResult:
    """Group rows into connected components of near-duplicate pairs (cosine >= threshold) and equal
    content hashes (None: no hash), keep the best row of each component, drop the rest.

    priority: (n,) lower is better (`best_first` builds one); ties go to the lower index. Default:
    the first row of each component is kept.
    """
    x = as_matrix(vectors)
    n = len(x)
    priority = np.arange(n) if priority is None else np.asarray(priority)
    if priority.shape != (n,):
        raise ValueError(f"priority has shape {priority.shape}, expected ({n},)")
    if hashes is not None and len(hashes) != n:
        raise ValueError(f"{len(hashes)} hashes for {n} vectors")
    sets = UnionFind(n)
    if hashes is not None:
        first_with: dict[Hashable, int] = {}
        for i, h in enumerate(hashes):
            if h is not None:
                sets.union(first_with.setdefault(h, i), i)
    method, blocks = _search(x, None, threshold, config or SearchConfig(), map_fn)
    edges = 0
    for first, second, _ in blocks:
        sets.union_pairs(first.tolist(), second.tolist())
        edges += len(first)

    labels = sets.labels()
    order = np.lexsort((np.arange(n), priority))  # best first, ties to the lower index
    _, first_of_label = np.unique(labels[order], return_index=True)
    winners = order[first_of_label]
    kept_by_label = np.empty(n, dtype=np.int64)
    kept_by_label[labels[winners]] = winners
    kept = kept_by_label[labels]
    keep = kept == np.arange(n)
    dropped = np.flatnonzero(~keep)
    similarity = np.full(n, np.nan, dtype=np.float32)
    similarity[dropped] = pair_similarity(x, x, dropped, kept[dropped])
    exact = np.zeros(n, dtype=bool)
    if hashes is not None:
        exact[dropped] = [hashes[i] is not None and hashes[i] == hashes[k] for i, k in zip(dropped, kept[dropped])]
    return DedupResult(keep, np.where(keep, -1, kept), similarity, exact, edges, method)


def find_leakage(train: Vectors, reference: Vectors, threshold: float, *,
                 train_hashes: Sequence[Hashable | None] | None = None,
                 reference_hashes: Sequence[Hashable | None] | None = None,
                 config: SearchConfig | None = None, map_fn: MapFn = local_map) -> LeakageResult:
    """Flag train rows with cosine >= threshold to some reference (held-out) row, or an equal content
    hash. Searches index the reference set and query it with the train rows; the partitioned ones
    find a pair only from the train side, so give them about twice dedup's `probes` for its recall."""
    q, base = as_matrix(train), as_matrix(reference)
    if q.shape[1] != base.shape[1]:
        raise ValueError(f"train vectors have dimension {q.shape[1]}, reference vectors {base.shape[1]}")
    n = len(q)
    reference_index = np.full(n, -1, dtype=np.int64)
    similarity = np.full(n, np.nan, dtype=np.float32)
    method, blocks = _search(q, base, threshold, config or SearchConfig(), map_fn)
    for rows, matches, sims in blocks:
        best_sim, best_index = similarity[rows], reference_index[rows]
        better = np.isnan(best_sim) | (sims > best_sim) | ((sims == best_sim) & (matches < best_index))
        order = np.lexsort((matches[better], -sims[better], rows[better]))  # per row: highest cosine, lowest index
        rows, matches, sims = rows[better][order], matches[better][order], sims[better][order]
        best = np.r_[True, rows[1:] != rows[:-1]] if len(rows) else np.zeros(0, dtype=bool)
        reference_index[rows[best]], similarity[rows[best]] = matches[best], sims[best]

    exact = np.zeros(n, dtype=bool)
    if train_hashes is not None and reference_hashes is not None:
        if len(train_hashes) != n or len(reference_hashes) != len(base):
            raise ValueError("hashes must have one entry per vector")
        held_out: dict[Hashable, int] = {}
        for j, h in enumerate(reference_hashes):
            if h is not None:
                held_out.setdefault(h, j)
        hits = [(i, held_out[h]) for i, h in enumerate(train_hashes) if h is not None and h in held_out]
        if hits:
            rows, matches = (np.array(c, dtype=np.int64) for c in zip(*hits))
            exact[rows], reference_index[rows] = True, matches
            similarity[rows] = pair_similarity(q, base, rows, matches)
    return LeakageResult(reference_index >= 0, reference_index, similarity, exact, method)


def as_matrix(vectors: Vectors) -> np.ndarray:
    """One (n, d) matrix from one array or fragments in order (fragments are concatenated once: pass
    one preallocated array to avoid that copy). Checks that a sample of rows is L2-normalised."""
    if not isinstance(vectors, np.ndarray):
        vectors = list(vectors)
        if not vectors:
            raise ValueError("vectors: got an empty list of fragments")
    x = vectors if isinstance(vectors, np.ndarray) else np.concatenate(vectors)
    if x.ndim != 2 or x.dtype.kind != "f":
        raise ValueError(f"vectors must be (n, d) floats, got shape {x.shape} of {x.dtype}")
    sample = x[:: max(1, len(x) // 1000)].astype(np.float32)
    norms = np.linalg.norm(sample, axis=1)
    if len(norms) and np.abs(norms - 1).max() > _NORM_TOLERANCE:
        raise ValueError(f"vectors must be L2-normalised (found a row of norm {norms[np.abs(norms - 1).argmax()]:.4f})")
    return x


# ---------------------------------------------------------------------------------------------
# Search: blocks of (query index, base index, cosine) with cosine >= threshold
# ---------------------------------------------------------------------------------------------


def _search(q: np.ndarray, base: np.ndarray | None, threshold: float, config: SearchConfig,
            map_fn: MapFn) -> tuple[str, Iterator[PairBlock]]:
    """The method used and its pair blocks. `base=None` is a self search: pairs i != j within q
    (each found pair reported in either orientation, possibly more than once)."""
    method = config.method
    if method == "auto":
        products = len(q) ** 2 // 2 if base is None else len(q) * len(base)
        method = "exact" if products <= config.exact_max ** 2 // 2 else "semantic"
    if not len(q) or (base is not None and not len(base)):
        return method, iter(())
    search = {"exact": _exact_pairs, "faiss": _faiss_pairs, "semantic": _semantic_pairs}[method]
    return method, search(q, base, np.float32(threshold), config, map_fn)


def _refine(a: np.ndarray, b: np.ndarray, first: np.ndarray, second: np.ndarray, threshold: np.float32) -> PairBlock:
    similarity = pair_similarity(a, b, first, second)
    ok = similarity >= threshold
    return first[ok].astype(np.int64), second[ok].astype(np.int64), similarity[ok]


def _exact_pairs(q: np.ndarray, base: np.ndarray | None, threshold: np.float32, config: SearchConfig,
                 map_fn: MapFn) -> Iterator[PairBlock]:
    """All pairs by blocked float32 products: memory is two blocks and their product, never n^2."""
    b = q if base is None else base
    rows = config.block_rows
    scores = np.empty((min(rows, len(q)), min(rows, len(b))), dtype=np.float32)  # reused: no page faults per block
    for qs in range(0, len(q), rows):
        q_block = q[qs:qs + rows].astype(np.float32)
        for bs in range(qs if base is None else 0, len(b), rows):
            b_block = b[bs:bs + rows].astype(np.float32)
            block_scores = scores[:len(q_block), :len(b_block)]
            np.matmul(q_block, b_block.T, out=block_scores)
            qi, bj = _candidates(block_scores, threshold)
            qi, bj = qi + qs, bj + bs
            if base is None:
                qi, bj = qi[qi < bj], bj[qi < bj]
            if len(qi):
                yield _refine(q, b, qi, bj, threshold)


def _candidates(scores: np.ndarray, threshold: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the scores within `_MARGIN` of the threshold. Rows are screened by their
    maximum first: `np.nonzero` over a whole block costs more than the product itself at d=64."""
    rows = np.flatnonzero(scores.max(axis=1) >= threshold - _MARGIN)
    hit_rows, cols = np.nonzero(scores[rows] >= threshold - _MARGIN)
    return rows[hit_rows], cols


@contextmanager
def _faiss_threads(threads: int | None) -> Iterator[Any]:
    """faiss, with its OpenMP thread count set for the duration (it is process-wide)."""
    try:
        import faiss
    except ImportError as e:
        raise ImportError("dedup's faiss and semantic searches need faiss: pip install 'curate[faiss]' "
                          "(faiss-cpu) or faiss-gpu") from e
    before = faiss.omp_get_max_threads()
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    try:
        yield faiss
    finally:
        faiss.omp_set_num_threads(before)


def _cell_count(n: int, config: SearchConfig) -> int:
    return config.cells or max(1, min(round(2 * math.sqrt(n)), n // config.train_per_cell))


def _training_sample(x: np.ndarray, cells: int, config: SearchConfig) -> np.ndarray:
    size = min(len(x), cells * config.train_per_cell)
    rows = np.sort(np.random.default_rng(config.seed).choice(len(x), size, replace=False))
    return x[rows].astype(np.float32)


def _faiss_pairs(q: np.ndarray, base: np.ndarray | None, threshold: np.float32, config: SearchConfig,
                 map_fn: MapFn) -> Iterator[PairBlock]:
    """IVF range search. Lists hold fp16 codes of the vectors themselves (`by_residual=False`), so
    the index costs 2 bytes per value (1 GB at 1M x 512, half of IVF-Flat's float32) and fp16 inputs
    are stored exactly. faiss's inner-product range search keeps scores strictly above the radius,
    hence the radius below the threshold and `_refine` deciding >=."""
    b = q if base is None else base
    with _faiss_threads(config.threads) as faiss:
        cells = _cell_count(len(b), config)
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(b.shape[1]), b.shape[1], cells,
                                              faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT, False)
        index.cp.niter, index.cp.seed = config.kmeans_iters, config.seed
        index.train(_training_sample(b, cells, config))
        for start in range(0, len(b), config.block_rows):
            index.add(b[start:start + config.block_rows].astype(np.float32))
        index.nprobe = min(config.probes, cells)
        for start in range(0, len(q), config.block_rows):
            lims, _, found = index.range_search(q[start:start + config.block_rows].astype(np.float32),
                                                float(threshold) - _MARGIN)
            rows = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims.astype(np.int64)))
            if base is None:
                rows, found = rows[found != rows], found[found != rows]
            if len(rows):
                yield _refine(q, b, rows, found, threshold)


def _semantic_pairs(q: np.ndarray, base: np.ndarray | None, threshold: np.float32, config: SearchConfig,
                    map_fn: MapFn) -> Iterator[PairBlock]:
    """k-means cells over the base rows; each base row is a member of its nearest cell, each query row
    probes its `probes` nearest cells. In a self search a pair is found when either row's cell is
    among the other's probes, which is what makes 8 probes enough for >= 0.99 recall."""
    b = q if base is None else base
    with _faiss_threads(config.threads) as faiss:
        cells = _cell_count(len(b), config)
        kmeans = faiss.Kmeans(b.shape[1], cells, niter=config.kmeans_iters, spherical=True, seed=config.seed,
                              max_points_per_centroid=config.train_per_cell)
        kmeans.train(_training_sample(b, cells, config))
        probes = min(config.probes, cells)
        nearest = np.empty((len(q), probes), dtype=np.int32)
        for start in range(0, len(q), config.block_rows):
            nearest[start:start + config.block_rows] = kmeans.index.search(
                q[start:start + config.block_rows].astype(np.float32), probes)[1]
        if base is None:
            member_cell = nearest[:, 0].copy()  # not a view: `nearest` is freed below
        else:
            member_cell = np.empty(len(b), dtype=np.int32)
            for start in range(0, len(b), config.block_rows):
                member_cell[start:start + config.block_rows] = kmeans.index.search(
                    b[start:start + config.block_rows].astype(np.float32), 1)[1][:, 0]

    probe_cell = nearest.reshape(-1)
    probers = (np.argsort(probe_cell, kind="stable") // probes).astype(np.int64)  # query rows grouped by cell
    prober_bounds = np.searchsorted(np.sort(probe_cell), np.arange(cells + 1))
    del nearest, probe_cell
    members = np.argsort(member_cell, kind="stable").astype(np.int64)
    member_bounds = np.searchsorted(member_cell[members], np.arange(cells + 1))
    tasks, first = [], 0
    for c in range(1, cells + 1):
        if c == cells or prober_bounds[c + 1] - prober_bounds[first] > config.task_rows:
            pb, mb = prober_bounds[first:c + 1], member_bounds[first:c + 1]
            tasks.append(CellTask(probers[pb[0]:pb[-1]], pb - pb[0], members[mb[0]:mb[-1]], mb - mb[0],
                                  threshold, base is None))
            first = c
    yield from map_fn(cell_pairs, (q, base), tasks)


def _concat(blocks: list[PairBlock]) -> PairBlock:
    if not blocks:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return tuple(np.concatenate(parts) for parts in zip(*blocks))  # type: ignore[return-value]
