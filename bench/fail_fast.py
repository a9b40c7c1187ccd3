"""Fail fast: how long `curate run` takes to reject a run it can never complete.

    python bench/fail_fast.py [--repeat N]

Times, through the CLI in a subprocess, each mistake a new user makes (a bad value, a missing
input, a manifest stage given a source file, a missing optional package) and `curate --help` as
the baseline: the cost of starting Python and importing the CLI, which no check can beat. Prints
the best of N seconds of each, its exit code, and whether it met the goal: rejected (exit code 2)
in under 2 s, with no Ray session started (RAY_TMPDIR stays empty) and nothing written under
output=. Before pre-flight checks these took 8-24 s (Ray started first) or ran earlier stages.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 2.0
CURATE = [sys.executable, "-m", "curation.cli"]


def cases(work: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """Name -> (curate arguments, packages made to look uninstalled)."""
    media, pairs, out = work / "media", work / "pairs.jsonl", work / "run"
    return {
        "curate --help (baseline)": (["--help"], ()),
        "bad value + retry_errors=maybe, --print-config": (
            ["run", "stage=sample_frames", "sample_frames.interval_s=abc", "retry_errors=maybe", "--print-config"], ()),
        "bad value of a later stage": (
            ["run", "pipeline=sessions", f"input={media}", f"output={out}", "sample_frames.interval_s=abc"], ()),
        "nonexistent input=": (["run", "stage=ingest", f"input={work / 'missing'}", f"output={out}"], ()),
        "dedup given pairs.jsonl": (["run", "stage=dedup", f"input={pairs}", f"output={out}"], ()),
        "missing NudeNet": (["run", "pipeline=sessions", f"input={media}", f"output={out}"], ("nudenet",)),
        "missing open_clip": (["run", "stages=[ingest,embed]", f"input={media}", f"output={out}"], ("open_clip",)),
    }


def time_case(args: list[str], hide: tuple[str, ...], work: Path) -> tuple[float, int, bool]:
    """Seconds, exit code, and whether it left Ray and the output directory untouched."""
    ray_dir, out = work / "ray", work / "run"
    env = {**os.environ, "RAY_TMPDIR": str(ray_dir)}
    if hide:  # find_spec answers None for a module whose sys.modules entry is None
        site = work / "hide"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(f"import sys\nfor m in {hide!r}:\n    sys.modules[m] = None\n")
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    rc = subprocess.run([*CURATE, *args], env=env, capture_output=True, check=False).returncode
    seconds = time.perf_counter() - t0
    untouched = not any(ray_dir.glob("*")) and not any(out.glob("*"))
    shutil.rmtree(work / "hide", ignore_errors=True)
    return seconds, rc, untouched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case; the best is shown")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="curate-fail-fast-"))
    try:
        (work / "media").mkdir()
        (work / "media" / "a.mp4").write_bytes(b"never decoded: the run must stop before")
        (work / "pairs.jsonl").write_text('{"source_uri": "a.jpg", "target_uri": "b.jpg", "instruction": "x"}\n')
        rows = []
        for name, (curate_args, hide) in cases(work).items():
            runs = [time_case(curate_args, hide, work) for _ in range(args.repeat)]
            rows.append((name, min(s for s, _, _ in runs), runs[-1][1], all(u for _, _, u in runs)))
        baseline = rows[0][1]
        print(f"{'case':50s} {'rc':>3s} {'best s':>7s} {'- help':>7s}  goal < {GOAL_S:g} s, rc 2, no Ray, no output")
        for name, seconds, rc, untouched in rows:
            met = "baseline" if name == rows[0][0] else (
                "met" if seconds < GOAL_S and rc == 2 and untouched else
                f"MISSED ({'slow' if seconds >= GOAL_S else ''}{'' if rc == 2 else f' rc={rc}'}"
                f"{'' if untouched else ' touched Ray/output'})")
            print(f"{name:50s} {rc:3d} {seconds:7.2f} {seconds - baseline:+7.2f}  {met}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
