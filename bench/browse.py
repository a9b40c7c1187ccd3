"""`curate browse` page latency on a synthetic 1M-row pairs run, against a DuckDB COUNT(*) floor.

    .venv/bin/python bench/browse.py [--rows 1000000] [--rows-per-part 100000] [--out DIR] [--repeats 5]

Run: shaped like the pairs pipeline, written with `curation.core.storage` (zstd Parquet, one part file
per `--rows-per-part` rows): `01-ingest` (N pairs, all ok), `02-edit_score` (N rows: scores map with
edit_score and two 0-25 sub-scores, drops: edit_score_below_threshold, category_excluded,
judge_unparseable; a few errors), `03-dedup` (the ok rows of 02, some dropped near_duplicate).
Generated with numpy/pyarrow from `--seed` (about 5 s for 1M rows); an `--out` made with the same
--rows, --rows-per-part and --seed is reused, the default temp dir is removed at the end.

Measured in-process through the real app (`build_app` + starlette's TestClient, no network), per page:
  build - `build_app` (file listing, schemas, a new DuckDB connection and its views)
  cold  - the first request to a freshly built app (no catalog state, menus not computed yet)
  warm  - median of `--repeats` further requests to that app
The OS page cache is warm throughout (the files were just written or read), so "cold" means a cold
catalog, not a cold disk. Baseline, same run and files: `SELECT count(*) FROM read_parquet(...)` on
a fresh DuckDB connection (cold) and repeated (warm): the least any query over the run can cost
(it is answered from the Parquet footers, so the ratios are large by nature; compare them between
runs). Ratios cold/floor and warm/floor and whether each page answers in under 1 s are printed;
nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from starlette.testclient import TestClient

from curation.audit.app import build_app
from curation.core import storage

CATEGORIES = ["local_change", "local_add", "local_remove", "background_change", "global_style",
              "color_texture", "camera", "relight", "other"]
CATEGORY_P = [0.2, 0.15, 0.12, 0.12, 0.12, 0.1, 0.05, 0.06, 0.08]
VERBS = [v.split("|") for v in (  # four openings per category, in CATEGORIES order
    "Replace the|Change the|Swap out the|Turn the", "Add a|Place a|Put a|Insert a",
    "Remove the|Erase the|Delete the|Get rid of the",
    "Put a beach behind the|Blur the scene behind the|Set a city behind the|Change the background behind the",
    "Render in oil paint the|Make a watercolor of the|Turn into anime the|Give a sketch look to the",
    "Make shiny the|Paint blue the|Give a wooden texture to the|Recolor in pastel the",
    "Zoom in on the|Pan left towards the|Rotate the view around the|Tilt the camera up to the",
    "Relight with sunset light the|Add a soft rim light to the|Darken the shadows on the|Light from the left the",
    "Fix the|Adjust the|Clean up the|Tidy the")]
ADJECTIVES = ["red", "small", "old", "wooden", "bright", "striped", "tall", "rusty", "shiny", "blue", "broken", "tiny"]
NOUNS = ("umbrella car dog cat bicycle lamp chair tree bottle window door hat vase clock boat bench guitar teapot "
         "sign backpack cup kite horse bridge flower candle mirror book fence statue truck bird sofa laptop train mug "
         "scarf ladder bucket tent").split()
PLACES = ["on the left side of the picture,", "in the foreground,", "near the center of the frame,",
          "in the top right corner,", "next to the person,", "on the table,", "in the background,", "by the window,"]
TAILS = ["keeping everything else unchanged.", "so it blends in with the lighting.", "and keep the shadows consistent.",
         "without touching the people.", "matching the original perspective.", "leaving the sky as it is."]
FILTERED = ("/samples?stage=02-edit_score&status=dropped&reason=edit_score_below_threshold"
            "&category=background_change&score=edit_score&min=4&max=5.5")
PAGES = [("funnel /", "/"), ("filtered table", FILTERED), ("filtered table, page 10", FILTERED + "&page=10"),
         ("text search", "/samples?q={word}"), ("sample", "/sample/{sample_id}")]


def hex_ids(rng: np.random.Generator, n: int) -> pa.Array:
    """n random 20-hex-char ids (80 bits, like `make_sample_id`), built straight from buffers."""
    data = rng.integers(0, 256, size=10 * n, dtype=np.uint8).tobytes().hex().encode()
    offsets = np.arange(0, 20 * n + 1, 20, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def pick(words: list[str], idx: np.ndarray) -> pa.Array:
    return pa.array(words, pa.string()).take(pa.array(idx))


def join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def with_columns(table: pa.Table, **columns: pa.Array) -> pa.Table:
    """The table with these columns replaced in place, or appended when new."""
    for name, column in columns.items():
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, column) if i >= 0 else table.append_column(name, column)
    return table


def ingest_table(rng: np.random.Generator, n: int) -> pa.Table:
    ids, category = hex_ids(rng, n), rng.choice(len(CATEGORIES), size=n, p=CATEGORY_P)
    verb = pick([v for vs in VERBS for v in vs], category * 4 + rng.integers(0, 4, n))
    words = [pick(w, rng.integers(0, len(w), n)) for w in (ADJECTIVES, NOUNS, PLACES, TAILS)]
    instruction = pc.binary_join_element_wise(verb, *words, " ")
    dataset = pick(["omniedit", "seededit", "ultraedit", "anyedit", "hqedit"], rng.integers(0, 5, n))
    index = pc.cast(pa.array(np.arange(n)), pa.string())
    base = join("s3://edits/", dataset, "/", index, "/")
    return pa.table({
        "sample_id": ids, "parent_ids": pa.ListArray.from_arrays(np.arange(n + 1, dtype=np.int32), hex_ids(rng, n)),
        "kind": pa.repeat("pair", n), "source_uri": join(base, "source.jpg"),
        "status": pa.repeat("ok", n), "reason": pa.nulls(n, pa.string()),
        "stage": pa.repeat("ingest", n), "stage_version": pa.repeat("1", n),
        "target_uri": join(base, "target.jpg"), "instruction": instruction, "category": pick(CATEGORIES, category)})


def edit_score_table(rng: np.random.Generator, ingest: pa.Table) -> pa.Table:
    n = ingest.num_rows
    semantic, perceptual = (np.clip(rng.normal(mean, 4.5, n), 0, 25) for mean in (18.0, 17.0))
    edit = np.sqrt(semantic * perceptual) / 2.5  # EditScore's overall, 0-10
    u = rng.random(n)
    error, unparseable = u < 0.005, (u >= 0.005) & (u < 0.02)
    excluded = pc.equal(ingest["category"], "other").to_numpy(zero_copy_only=False)
    scored = ~(error | unparseable | excluded)
    below = scored & (edit < 6.0)
    shown = pc.cast(pa.array(np.round(edit, 1)), pa.string())
    reason = pc.if_else(pa.array(below), join("edit_score_below_threshold: ", shown, " < 6"), None)
    for mask, text in ((unparseable, "judge_unparseable: no JSON object in the answer"),
                       (excluded, "category_excluded: other not in the kept categories"),
                       (error, "judge_transport: ReadTimeout after 3 attempts")):
        reason = pc.if_else(pa.array(mask), text, reason)
    status = pick(["ok", "dropped", "error"], np.where(error, 2, np.where(below | unparseable | excluded, 1, 0)))
    keys = pick(["edit_score", "semantic_consistency", "perceptual_quality"], np.tile([0, 1, 2], int(scored.sum())))
    items = pa.array(np.stack([edit, semantic, perceptual], axis=1)[scored].ravel())
    offsets = pa.array(np.concatenate([[0], np.cumsum(scored * 3)]).astype(np.int32))
    scores = pa.MapArray.from_arrays(offsets, keys, items, type=pa.map_(pa.string(), pa.float64()),
                                     mask=pa.array(~scored))  # no scores where the judge gave none
    side = rng.choice([512, 768, 1024, 1536], size=(2, n))
    return with_columns(ingest, status=status, reason=reason, stage=pa.repeat("edit_score", n),
                        scores=scores, width=pa.array(side[0]), height=pa.array(side[1]),
                        duration_s=pa.array(rng.uniform(0.04, 8.0, n)))


def dedup_table(rng: np.random.Generator, scored: pa.Table) -> pa.Table:
    kept = scored.filter(pc.equal(scored["status"], "ok"))
    n = kept.num_rows
    dup = rng.random(n) < 0.08
    of = kept["sample_id"].take(pa.array(rng.integers(0, n, n)))
    reason = pc.if_else(pa.array(dup), join("near_duplicate: of ", of, " (cosine 0.97)"), None)
    return with_columns(kept, status=pick(["ok", "dropped"], dup.astype(np.int8)), reason=reason,
                        stage=pa.repeat("dedup", n))


def synthesise(run: Path, rows: int, rows_per_part: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ingest = ingest_table(rng, rows)
    scored = edit_score_table(rng, ingest)
    for name, table in (("01-ingest", ingest), ("02-edit_score", scored), ("03-dedup", dedup_table(rng, scored))):
        for part, start in enumerate(range(0, table.num_rows, rows_per_part)):
            storage.write_table_atomic(table.slice(start, rows_per_part), str(run / name / f"part-{part:05d}.parquet"))
        storage.write_json_atomic(str(run / name / "_run.json"), {"stage": name.split("-", 1)[1], "rows": table.num_rows})


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def count_floor(glob: str, repeats: int) -> tuple[float, float, int]:
    """COUNT(*) over every part file: cold on a fresh connection, then the median of repeats."""
    sql = f"SELECT count(*) FROM read_parquet('{glob}')"
    db = duckdb.connect()
    cold = timed(lambda: db.execute(sql).fetchone())
    warm = statistics.median(timed(lambda: db.execute(sql).fetchone()) for _ in range(repeats))
    return cold, warm, db.execute(sql).fetchone()[0]


def time_page(run: Path, url: str, repeats: int) -> tuple[float, float, float, int | None]:
    """(build_app s, first request s, median of `repeats` more, rows the page says match)."""
    t0 = time.perf_counter()
    app = build_app(str(run))
    build = time.perf_counter() - t0
    matched: list[int | None] = [None]
    with TestClient(app) as client:
        def get() -> None:
            response = client.get(url)
            if response.status_code != 200:
                raise SystemExit(f"{url}: HTTP {response.status_code}")
            found = re.search(r'<p id="count">([0-9]+) row', response.text)
            matched[0] = int(found[1]) if found else None
        cold = timed(get)
        warm = statistics.median(timed(get) for _ in range(repeats))
    return build, cold, warm, matched[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of 01-ingest and 02-edit_score")
    parser.add_argument("--rows-per-part", type=int, default=100_000, help="rows per part-NNNNN.parquet")
    parser.add_argument("--out", default=None,
                        help="run directory, kept and reused by later runs with the same --rows, --rows-per-part "
                             "and --seed (default: a temp dir, removed at the end)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="warm requests per page (median reported)")
    parser.add_argument("--word", default="umbrella", help="the text search page's query (a noun of the instructions)")
    args = parser.parse_args()

    run = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="curate-browse-bench-"))
    try:
        wanted = {"rows": args.rows, "rows_per_part": args.rows_per_part, "seed": args.seed}
        marker = run / "bench.json"
        if marker.is_file() and json.loads(marker.read_text()) == wanted:
            print(f"reusing {run}")
        else:
            if run.exists() and any(run.iterdir()) and not marker.is_file():
                raise SystemExit(f"{run} is not empty and was not made by this bench; give another --out")
            shutil.rmtree(run, ignore_errors=True)
            generation = timed(lambda: synthesise(run, args.rows, args.rows_per_part, args.seed))
            marker.write_text(json.dumps(wanted))
            print(f"generated {run} in {generation:.1f} s")
        report(run, args.rows, args.repeats, args.word)
    finally:
        if not args.out:
            shutil.rmtree(run, ignore_errors=True)


def report(run: Path, rows: int, repeats: int, word: str) -> None:
    glob = str(run / "*" / "part-*.parquet")
    floor_cold, floor_warm, total = count_floor(glob, repeats)
    db = duckdb.connect()
    sample_id = db.execute(f"SELECT sample_id FROM read_parquet('{run}/03-dedup/part-*.parquet') WHERE status = 'ok' "
                           f"ORDER BY sample_id LIMIT 1 OFFSET {rows // 3}").fetchone()[0]
    counts = db.execute(f"SELECT split_part(parse_dirpath(filename), '/', -1), status, count(*) "
                        f"FROM read_parquet('{glob}', filename = true) GROUP BY ALL ORDER BY ALL").fetchall()
    print(f"rows in all manifests: {total:,}")
    for stage, status, n in counts:
        print(f"  {stage:14s} {status:8s} {n:>10,}")
    results = []
    for name, url in PAGES:
        url = url.format(word=word, sample_id=sample_id)
        build, cold, warm, matched = time_page(run, url, repeats)
        results.append((name, build, cold, warm))
        print(f"  {name}: {url}" + (f"  ({matched:,} rows match)" if matched is not None else ""))

    files = len(list(run.glob("*/part-*.parquet")))
    print(f"\nCOUNT(*) floor over {files} files: cold {floor_cold:.4f} s, warm {floor_warm:.4f} s")
    header = f"{'build s':>8s} {'cold s':>7s} {'warm s':>7s} {'cold/floor':>10s} {'warm/floor':>10s}"
    print(f"{'page':24s} {header}  warm<1s")
    for name, build, cold, warm in results:
        ratios = f"{cold / floor_cold:9.0f}x {warm / floor_warm:9.0f}x"
        print(f"{name:24s} {build:8.3f} {cold:7.3f} {warm:7.3f} {ratios}  {'yes' if warm < 1 else 'NO'}")


if __name__ == "__main__":
    main()
