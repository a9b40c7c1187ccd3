"""Global near-duplicate search at manifest scale: `curation.dedup.search.deduplicate` against exact
brute force, in the same run.

Input: `--n` random 512-d unit vectors stored as float16 (what the stage reads from Parquet), with
`--fraction` of them replaced by near-duplicates of other rows at cosine uniform in [0.95, 0.99]
(a copy in the second half of the rows, its original in the first). Random high-dimensional vectors
are near-orthogonal, so the planted pairs are the only pairs above the threshold (0.94, just below
the planted range, so fp16 rounding cannot push a planted pair under it). They are also the worst
case for a k-means partition: with no cluster structure, duplicates straddle cell borders often.

Measured, per method in `--methods` (default auto, which picks `semantic` at this size):
  time    - wall time of `deduplicate` (k-means, assignment, search, union-find, keep/drop);
  recall  - fraction of planted pairs that end in the same component;
  peak    - the process's peak RSS (ru_maxrss) after the run, input vectors included; the methods
            run in the order given, so a later one's peak can hide behind an earlier one's.
Baseline: the same `deduplicate` with `method=exact` (blocked float32 products over all pairs) on a
random `--baseline-n` subsample, its time extrapolated to `--n` quadratically (brute force is
O(n^2 d)); it runs last, on a subsample, so it does not raise the peak. The goal is >= 20x the
extrapolated brute force at recall >= 0.99 with peak RSS < 4 GB at n = 1M.

Timings on a small shared machine are noisy: compare ratios from the same run, run it twice.

    .venv/bin/python bench/dedup.py [--n 1000000] [--dim 512] [--fraction 0.01] [--threshold 0.94]
        [--methods auto faiss] [--baseline-n 100000] [--probes 8] [--threads N] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation.dedup.search import SearchConfig, deduplicate  # noqa: E402

GIB = 1024 ** 3


def planted_vectors(n: int, dim: int, fraction: float, seed: int,
                    chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, dim) float16 unit rows built chunk by chunk (no full float32 copy), and the planted
    (original, copy) row indices."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), dtype=np.float16)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        x[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    count = int(n * fraction)
    originals = np.sort(rng.choice(n // 2, count, replace=False))
    copies = n // 2 + rng.choice(n - n // 2, count, replace=False)
    for start in range(0, count, chunk):
        source = x[originals[start:start + chunk]].astype(np.float32)
        noise = rng.standard_normal(source.shape, dtype=np.float32)
        noise -= (noise * source).sum(1, keepdims=True) * source
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        cosine = rng.uniform(0.95, 0.99, len(source)).astype(np.float32)[:, None]
        x[copies[start:start + chunk]] = cosine * source + np.sqrt(1 - cosine ** 2) * noise
    return x, originals, copies


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--fraction", type=float, default=0.01, help="rows replaced by planted near-duplicates")
    parser.add_argument("--threshold", type=float, default=0.94)
    parser.add_argument("--methods", nargs="+", default=["auto"], choices=["auto", "exact", "faiss", "semantic"])
    parser.add_argument("--baseline-n", type=int, default=100_000)
    parser.add_argument("--probes", type=int, default=SearchConfig().probes)
    parser.add_argument("--threads", type=int, default=None, help="faiss threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    x, originals, copies = planted_vectors(args.n, args.dim, args.fraction, args.seed)
    print(f"input: {args.n:,} x {args.dim} float16 ({x.nbytes / GIB:.2f} GiB), {len(originals):,} planted pairs at "
          f"cosine 0.95-0.99, threshold {args.threshold}; generated in {time.perf_counter() - started:.1f} s, "
          f"RSS {current_rss() / GIB:.2f} GiB; {os.cpu_count()} CPUs")

    rows = []
    for method in args.methods:
        config = SearchConfig(method=method, probes=args.probes, threads=args.threads, seed=args.seed)
        started = time.perf_counter()
        result = deduplicate(x, args.threshold, config=config)
        seconds = time.perf_counter() - started
        root = np.where(result.keep, np.arange(args.n), result.duplicate_of)
        recall = float((root[originals] == root[copies]).mean()) if len(originals) else float("nan")
        rows.append((f"{method} ({result.method})", seconds, recall, peak_rss(), result.counts["near_duplicate"]))

    sample_n = min(args.baseline_n, args.n)
    sample = x[np.sort(np.random.default_rng(args.seed + 1).choice(args.n, sample_n, replace=False))]
    started = time.perf_counter()
    deduplicate(sample, args.threshold, config=SearchConfig(method="exact"))
    measured = time.perf_counter() - started
    scale = (args.n / sample_n) ** 2
    baseline = measured * scale
    print(f"baseline: exact brute force on a {sample_n:,}-row subsample took {measured:.1f} s; "
          f"x{scale:g} (quadratic) -> {baseline:.0f} s at {args.n:,} rows")

    print(f"\n{'method':22} {'time s':>8} {'recall':>8} {'peak RSS GiB':>13} {'dropped':>8} {'vs brute force':>15}")
    for name, seconds, recall, peak, dropped in rows:
        print(f"{name:22} {seconds:8.1f} {recall:8.4f} {peak / GIB:13.2f} {dropped:8,} {baseline / seconds:14.1f}x")


if __name__ == "__main__":
    main()
