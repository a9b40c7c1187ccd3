"""Manifest bytes per session at every stage of `pipeline=sessions models=tiny` on the bundled
example videos, before and after media were stored once, measured in one run on the same rows.

    python bench/manifest_bytes.py [--input manifests/examples.jsonl] [--keep DIR]

after:  each stage's manifest as the run wrote it (media columns hold references).
before: the same manifest with every reference replaced by the bytes it names, written the way
        the runner writes parts (zstd Parquet): what the stage's manifest weighed when media were
        copied into every manifest after the stage that made them.
media:  the files the stage stored (once), so the totals compare like with like: before carries
        the bytes in every manifest, after carries references plus the files once.

Per session = the stage's manifest bytes / the sessions `sample_frames` made (every status).
Nothing here is modelled; no timing is measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pyarrow.compute as pc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from curation.core import layout, media_store, storage  # noqa: E402
from curation.core.config import compose  # noqa: E402
from curation.core.runner import run  # noqa: E402
from curation.core.schema import rows_to_table  # noqa: E402


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def weigh(run_dir: Path, scratch: Path) -> list[dict[str, object]]:
    """Per stage dir: rows, manifest bytes after and before, and media bytes stored there."""
    out = []
    for name in layout.stage_dirs(str(run_dir)):
        stage_dir = run_dir / name
        parts = layout.manifest_parts(str(stage_dir))
        after = before = rows = 0
        for part in parts:
            table = storage.read_table(part)
            rows += table.num_rows
            after += Path(part).stat().st_size
            inlined = rows_to_table(media_store.inlined_rows(table, str(run_dir)), media_store.inlined_schema(table.schema))
            copy = scratch / name / Path(part).name
            storage.write_table_atomic(inlined, str(copy))
            before += copy.stat().st_size
        media = stage_dir / layout.MEDIA_DIR
        out.append({"stage": name, "rows": rows, "after": after, "before": before,
                    "media": _size(media) if media.exists() else 0,
                    "media_files": sum(1 for p in media.rglob("*") if p.is_file()) if media.exists() else 0})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default=str(REPO / "manifests" / "examples.jsonl"), help="source manifest or glob")
    parser.add_argument("--keep", default=None, help="run into this dir and keep it (default: a temporary dir)")
    args = parser.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="curate-manifest-bytes-"))
    run_dir = work / "run"
    run(compose(["pipeline=sessions", "models=tiny", f"input={args.input}", f"output={run_dir}", "progress=false"]))
    stats = weigh(run_dir, work / "inlined")
    sampled = next(s for s in layout.stage_dirs(str(run_dir)) if layout.stage_name(s) == "sample_frames")
    kinds = storage.read_table(str(run_dir / sampled), columns=["kind"]).column("kind")
    sessions = int(pc.sum(pc.equal(kinds, "session")).as_py() or 0)

    print(f"pipeline=sessions models=tiny input={args.input}: {sessions} sessions; run dir {run_dir}")
    print(f"{'stage':<20} {'rows':>5} {'before B':>11} {'after B':>9} {'before/ses':>11} {'after/ses':>10} "
          f"{'ratio':>7} {'media stored B':>15} {'files':>6}")
    for s in stats:
        ratio = s["before"] / s["after"] if s["after"] else float("nan")
        per = max(sessions, 1)
        print(f"{s['stage']:<20} {s['rows']:>5} {s['before']:>11,} {s['after']:>9,} {s['before'] // per:>11,} "
              f"{s['after'] // per:>10,} {ratio:>6.1f}x {s['media']:>15,} {s['media_files']:>6}")
    before = sum(s["before"] for s in stats)
    after = sum(s["after"] for s in stats)
    media = sum(s["media"] for s in stats)
    print(f"{'all manifests':<20} {'':>5} {before:>11,} {after:>9,} {before // max(sessions, 1):>11,} "
          f"{after // max(sessions, 1):>10,} {before / after:>6.1f}x")
    print(f"run total (manifests + media stored once): before {before:,} B, after {after + media:,} B "
          f"({before / (after + media):.1f}x less)")


if __name__ == "__main__":
    main()
