"""Runner overhead: one stage through Ray Data (1 worker) vs the same stage object in a plain loop.

    python bench/runner_overhead.py [--stage sample_frames] [--videos DIR] [--repeat N]

Prepares the stage's input once (ingest + scene_split through the runner, untimed), then times in
the same process: (a) a plain Python loop calling the stage on each input fragment, (b) the runner
with a 1-worker actor pool on an already-started local Ray (as on a cluster), and prints
ours/baseline. Goal: <= 1.3x.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", default="sample_frames")
    parser.add_argument("--videos", default=None, help="directory of videos (default: the bundled media)")
    parser.add_argument("--repeat", type=int, default=4, help="list the videos this many times (more work per run)")
    args = parser.parse_args()

    from curation.core import storage
    from curation.core.config import build_stage, compose
    from curation.core.layout import stage_dir_for
    from curation.core.ray_env import init_ray
    from curation.core.runner import run_stage
    from curation.core.streaming import plan_fragments, run_map_stage

    work = Path(tempfile.mkdtemp(prefix="curate-bench-"))
    try:
        src = work / "src"
        src.mkdir()
        if args.videos:
            videos = sorted(p for p in Path(args.videos).rglob("*") if p.suffix in {".mp4", ".mkv"})
        else:
            import bundled

            videos = sorted(bundled.videos().values())
        for r in range(args.repeat):
            for v in videos:
                (src / f"{r}-{v.name}").symlink_to(v)
        run_dir = work / "run"
        overrides = [f"input={src}", f"output={run_dir}", "progress=false", "ingest.fragment_size=4",
                     f"{args.stage}.resources.concurrency=[1,1]"]
        cfg = compose(overrides)
        init_ray(cfg.cluster)
        prev = str(src)
        for position, name in enumerate(("ingest", "scene_split"), start=1):
            stage_dir = stage_dir_for(str(run_dir), name, position)
            run_stage(name, cfg, prev, stage_dir)
            prev = stage_dir
        inputs = storage.list_files(prev, prefix="part-", suffix=".parquet")
        import pyarrow.compute as pc

        rows = sum(pc.sum(pc.equal(storage.read_table(u, columns=["status"]).column("status"), "ok")).as_py() for u in inputs)

        # (a) baseline: the same stage object in a plain loop, one process, doing the same job:
        # read each input fragment, run the stage on its ok rows, write the output fragment.
        stage = build_stage(args.stage, cfg)
        loop_dir = work / "loop"
        stage.bind_run(str(work), str(loop_dir))  # as the runner does: media stored once, rows hold references
        t0 = time.perf_counter()
        stage.ensure_setup()
        for uri in inputs:
            table = storage.read_table(uri)
            out = stage(table.filter(pc.equal(table.column("status"), "ok")))
            storage.write_table_atomic(out, str(loop_dir / uri.rsplit("/", 1)[1]))
        baseline = time.perf_counter() - t0

        # (b) the runner: Ray Data, 1-worker actor pool, fragments written atomically
        out_dir = str(work / "ours")
        fragments, _ = plan_fragments(inputs, out_dir, retry_errors=False)
        ours_stage = build_stage(args.stage, cfg)
        ours_stage.bind_run(str(work), out_dir)
        t0 = time.perf_counter()
        processed = run_map_stage(ours_stage, fragments, progress=False)
        ours = time.perf_counter() - t0
        assert processed == rows, (processed, rows)

        print(f"stage={args.stage} input rows={rows} fragments={len(inputs)}")
        print(f"plain loop      : {baseline:7.2f} s  ({rows / baseline:6.2f} rows/s)")
        print(f"runner (1 actor): {ours:7.2f} s  ({rows / ours:6.2f} rows/s)")
        print(f"overhead ratio runner/loop = {ours / baseline:.3f}x  (goal <= 1.3x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
