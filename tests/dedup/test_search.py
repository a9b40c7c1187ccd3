"""The dedup engine on planted embeddings: random unit vectors are near-orthogonal, so the only
pairs above the threshold are the ones a test plants as normalise(x + noise)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from curation.dedup.search import SearchConfig, UnionFind, best_first, deduplicate, find_leakage, local_map, near_duplicate_pairs

THRESHOLD = 0.95
needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss not installed (curate[faiss])")
METHODS = ["exact", pytest.param("faiss", marks=needs_faiss), pytest.param("semantic", marks=needs_faiss)]


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def near(rng: np.random.Generator, x: np.ndarray, cosine: np.ndarray) -> np.ndarray:
    """Rows at exactly `cosine` to the rows of x (before any fp16 rounding)."""
    noise = rng.standard_normal(x.shape).astype(np.float32)
    noise -= (noise * x).sum(1, keepdims=True) * x
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return cosine[:, None] * x + np.sqrt(1 - cosine ** 2)[:, None] * noise


def planted(n: int, dim: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fp16 unit vectors where rows `copies` are near-duplicates (cosine 0.96-0.99) of rows `originals`."""
    rng = np.random.default_rng(seed)
    x = unit(rng, n, dim)
    count = int(n * fraction)
    originals = rng.choice(n // 2, count, replace=False)
    copies = n // 2 + rng.choice(n - n // 2, count, replace=False)
    x[copies] = near(rng, x[originals], rng.uniform(0.96, 0.99, count).astype(np.float32))
    return x.astype(np.float16), originals, copies


def test_union_find_components():
    sets = UnionFind(7)
    assert sets.union(0, 1) and sets.union(2, 1) and sets.union(5, 4)
    assert not sets.union(0, 2)
    assert [g.tolist() for g in sets.components(min_size=2)] == [[0, 1, 2], [4, 5]]
    assert [g.tolist() for g in sets.components()] == [[0, 1, 2], [3], [4, 5], [6]]
    labels = sets.labels()
    assert labels[0] == labels[1] == labels[2] != labels[4] == labels[5]


def test_best_first_breaks_ties_and_ranks_missing_last():
    score = [8.0, 9.0, 9.0, np.nan, 9.0]
    pixels = [100, 50, 80, 900, 80]
    sample_id = ["a", "b", "d", "e", "c"]
    rank = best_first([(score, True), (pixels, True), (sample_id, False)])
    # 9/80/c, 9/80/d, 9/50/b, 8/100/a, NaN last
    assert rank.tolist() == [3, 2, 1, 4, 0]
    assert best_first([([1, 1, 1], True)]).tolist() == [0, 1, 2]  # full tie: lower index first


def test_keeps_best_member_of_each_component():
    rng = np.random.default_rng(1)
    x = unit(rng, 6, 32)
    x[[1, 2]] = near(rng, x[[0, 0]], np.array([0.99, 0.98], dtype=np.float32))  # {0, 1, 2}; others alone
    score = [7.0, 9.0, 9.0, 1.0, 1.0, 1.0]
    sample_id = ["s0", "s2", "s1", "s3", "s4", "s5"]
    result = deduplicate(x, THRESHOLD, priority=best_first([(score, True), (sample_id, False)]))
    assert result.keep.tolist() == [False, False, True, True, True, True]  # 9.0 tie: sample_id s1 < s2
    assert result.duplicate_of.tolist() == [2, 2, -1, -1, -1, -1]
    assert result.similarity[0] == pytest.approx(0.98, abs=1e-3) and np.isnan(result.similarity[2])
    assert result.counts == {"total": 6, "kept": 4, "near_duplicate": 2, "exact_duplicate": 0, "groups": 1}


@pytest.mark.parametrize("method", METHODS)
def test_duplicate_across_fragments_is_found(method):
    rng = np.random.default_rng(2)
    fragments = [unit(rng, 300, 64).astype(np.float16) for _ in range(3)]
    fragments[2][7] = near(rng, fragments[0][3:4].astype(np.float32), np.array([0.97], np.float32))[0]
    config = SearchConfig(method=method, cells=4, probes=4)
    for vectors in (fragments, np.concatenate(fragments)):
        result = deduplicate(vectors, THRESHOLD, config=config)
        assert result.method == method
        assert np.flatnonzero(~result.keep).tolist() == [607]
        assert result.duplicate_of[607] == 3


@needs_faiss
def test_approximate_searches_agree_with_exact():
    x, _, _ = planted(50_000, 64, 0.01, seed=3)
    exact = deduplicate(x, THRESHOLD, config=SearchConfig(method="exact"))
    assert (~exact.keep).sum() >= 490
    for method in ("faiss", "semantic"):
        approx = deduplicate(x, THRESHOLD, config=SearchConfig(method=method))
        # approximate searches find a subset of the pairs, so they drop a subset of the rows
        assert not (~approx.keep & exact.keep).any()
        assert (~approx.keep).sum() >= 0.99 * (~exact.keep).sum(), method
        assert (approx.keep == exact.keep).mean() >= 0.999


@needs_faiss
def test_auto_switches_by_size():
    x, _, copies = planted(2_000, 32, 0.01, seed=4)
    assert deduplicate(x, THRESHOLD).method == "exact"
    result = deduplicate(x, THRESHOLD, config=SearchConfig(exact_max=1_000))
    assert result.method == "semantic" and set(np.flatnonzero(~result.keep)) <= set(copies)


@needs_faiss
def test_semantic_runs_cells_through_map_fn():
    x, originals, copies = planted(4_000, 32, 0.01, seed=5)
    calls = []

    def counting_map(fn, shared, tasks):
        calls.append(len(tasks))
        return local_map(fn, shared, tasks)

    config = SearchConfig(method="semantic", task_rows=2_000)
    pairs = near_duplicate_pairs(x, THRESHOLD, config, map_fn=counting_map)
    assert calls and calls[0] > 1
    planted_pairs = {(min(a, b), max(a, b)) for a, b in zip(originals, copies)}
    assert set(zip(pairs.first.tolist(), pairs.second.tolist())) == planted_pairs
    assert (pairs.similarity >= THRESHOLD).all()


def test_equal_content_hashes_merge_despite_different_embeddings():
    rng = np.random.default_rng(6)
    x = unit(rng, 5, 32)
    hashes = ["h0", "h1", "h0", None, None]
    result = deduplicate(x, THRESHOLD, priority=np.array([1, 0, 0, 0, 0]), hashes=hashes)
    assert result.keep.tolist() == [False, True, True, True, True]
    assert result.duplicate_of[0] == 2 and result.exact[0]
    assert result.similarity[0] < 0.5  # merged on the hash alone
    assert result.counts["exact_duplicate"] == 1


@pytest.mark.parametrize("method", METHODS)
def test_leakage_against_reference_set(method):
    rng = np.random.default_rng(7)
    reference = unit(rng, 400, 64)
    train = unit(rng, 3_000, 64)
    leaked_rows, matched = np.array([10, 500, 2_999]), np.array([5, 399, 0])
    train[leaked_rows] = near(rng, reference[matched], np.array([0.99, 0.96, 0.97], dtype=np.float32))
    train_hashes: list[str | None] = [None] * len(train)
    train_hashes[42] = "same-bytes"
    reference_hashes = [f"r{j}" for j in range(len(reference))]
    reference_hashes[123] = "same-bytes"
    result = find_leakage(train.astype(np.float16), reference.astype(np.float16), THRESHOLD,
                          train_hashes=train_hashes, reference_hashes=reference_hashes,
                          config=SearchConfig(method=method, cells=8, probes=8))
    assert np.flatnonzero(result.leaked).tolist() == [10, 42, 500, 2_999]
    assert result.reference_index[[10, 42, 500, 2_999]].tolist() == [5, 123, 399, 0]
    assert result.exact.tolist().count(True) == 1 and result.exact[42]
    assert result.similarity[10] == pytest.approx(0.99, abs=2e-3) and np.isnan(result.similarity[0])
    assert result.counts == {"total": 3_000, "leaked": 4, "leaked_exact": 1}


@pytest.mark.parametrize("method", METHODS)
def test_similarity_exactly_at_threshold_counts(method):
    rng = np.random.default_rng(8)
    x = unit(rng, 400, 16)
    x[0] = np.eye(16, dtype=np.float32)[0]
    x[1] = 0.0
    x[1, :2] = [0.75, np.sqrt(1 - 0.75 ** 2)]  # cosine to row 0: exactly 0.75 in float32
    config = SearchConfig(method=method, cells=2, probes=2)
    at = near_duplicate_pairs(x, 0.75, config)
    assert (0, 1) in set(zip(at.first.tolist(), at.second.tolist()))
    above = near_duplicate_pairs(x, float(np.nextafter(np.float32(0.75), np.float32(1))), config)
    assert (0, 1) not in set(zip(above.first.tolist(), above.second.tolist()))


def test_rejects_vectors_that_are_not_normalised():
    with pytest.raises(ValueError, match="L2-normalised"):
        deduplicate(np.full((10, 8), 0.5, dtype=np.float32), THRESHOLD)
