"""Streaming a pipeline's map stages through one Ray Data plan: each stage still writes its own
part per fragment, the manifests equal a stage-by-stage run's, and a run killed with SIGKILL
resumes without recomputing any part a stage finished or duplicating a sample."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from curation.core import layout, storage
from curation.core.config import compose
from curation.core.resources import Cluster, plan_chains
from curation.core.runner import run
from curation.core.stage import Resources

from tests.fixtures.plugin_stages import KeepEven, PairUp

REPO = Path(__file__).resolve().parents[2]
STAGES = ["count_source", "pair_up", "keep_even"]


def _manifests(run_dir: Path) -> dict[str, pa.Table]:
    return {d: storage.read_table(str(run_dir / d)) for d in layout.stage_dirs(str(run_dir))}


def _parts(run_dir: Path) -> dict[str, set[str]]:
    return {d: {p.rsplit("/", 1)[1] for p in layout.manifest_parts(str(run_dir / d))} for d in layout.stage_dirs(str(run_dir))}


def _args(run_dir: Path, n: int, *extra: str) -> list[str]:
    return [f"stages=[{','.join(STAGES)}]", f"input=count://{n}", f"output={run_dir}", "progress=false",
            "count_source.fragment_size=3", "keep_even.min_number=0", *extra]


def test_streamed_manifests_equal_a_stage_by_stage_run(tmp_path, plugin, ray_local):
    streamed = run(compose(_args(tmp_path / "streamed", 11)))
    one_by_one = run(compose(_args(tmp_path / "one_by_one", 11, "stream=false")))
    assert streamed[1].extra["streamed_with"] == STAGES and "streamed_with" not in one_by_one[1].extra
    a, b = _manifests(tmp_path / "streamed"), _manifests(tmp_path / "one_by_one")
    assert list(a) == ["01-count_source", "02-pair_up", "03-keep_even"] and list(a) == list(b)
    for name in a:
        assert a[name].equals(b[name]), name  # same rows, same order, same ids, same columns
    pieces = a["03-keep_even"]
    # 11 numbers, 3 fails at the source: 10 x 2 pieces; keep_even drops the odd ones (0..10 holds 6 even)
    assert pieces.num_rows == 20 and pieces.column("status").to_pylist().count("ok") == 12
    assert [p.rsplit("/", 1)[1] for p in layout.manifest_parts(str(tmp_path / "streamed" / "02-pair_up"))] == [
        f"part-{i:05d}.parquet" for i in range(4)]  # one part per fragment, per stage


def test_resume_starts_each_fragment_at_its_first_missing_stage(tmp_path, plugin, ray_local):
    run_dir = tmp_path / "run"
    run(compose(_args(run_dir, 9)))
    complete = _manifests(run_dir)
    fragment_2 = storage.read_table(str(run_dir / "02-pair_up" / "part-00002.parquet")).column("sample_id").to_pylist()
    # A run that stopped midway: fragment 1 lacks its last stage, fragment 2 its last two.
    (run_dir / "03-keep_even" / "part-00001.parquet").unlink()
    (run_dir / "02-pair_up" / "part-00002.parquet").unlink()
    (run_dir / "03-keep_even" / "part-00002.parquet").unlink()
    log = tmp_path / "made.txt"
    results = run(compose(_args(run_dir, 9, f"pair_up.log={log}")))
    assert [(r.skipped_fragments, r.done_fragments) for r in results] == [(3, 0), (2, 1), (1, 2)]
    made = log.read_text().split()
    # pair_up recomputed only fragment 2 (numbers 6, 7, 8)
    assert sorted(made) == sorted(fragment_2) and len(made) == 6
    for name, table in _manifests(run_dir).items():
        assert table.equals(complete[name]), name


def test_a_fragment_is_spread_over_the_pool_one_batch_at_a_time(tmp_path, plugin, ray_local):
    """One fragment of 8 rows into a pool of two workers taking one row per batch: both workers
    get rows. Handed the fragment as one block, Ray Data gives it whole to one worker."""
    workers = tmp_path / "workers.txt"
    args = ["stages=[count_source,pair_up]", "input=count://8", f"output={tmp_path / 'run'}", "progress=false",
            "count_source.fragment_size=8", "pair_up.delay_s=0.2", f"pair_up.worker_log={workers}",
            "pair_up.resources.batch_size=1", "pair_up.resources.concurrency=[2,2]", "pair_up.resources.num_cpus=0.25"]
    results = run(compose(args))
    assert results[1].processed == 7  # count_source fails the number 3
    pids = workers.read_text().split()
    assert len(pids) == results[1].processed and len(set(pids)) == 2


@pytest.mark.timeout(300)
def test_a_sigkilled_streamed_run_resumes_without_redoing_finished_parts(tmp_path, plugin, ray_local):
    """The real thing: `curate run` in its own process group, killed with SIGKILL once some parts
    are written, then run again. Nothing a stage finished is computed again; the manifests equal
    an uninterrupted run's."""
    run_dir, log_before, log_after = tmp_path / "run", tmp_path / "before.txt", tmp_path / "after.txt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin), str(REPO)]))
    command = [sys.executable, "-m", "curation.cli", "run", *_args(run_dir, 30, "pair_up.delay_s=0.4", "cluster.num_cpus=2")]
    proc = subprocess.Popen([*command, f"pair_up.log={log_before}"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "02-pair_up").exists() or len(_parts(run_dir).get("02-pair_up", ())) < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_at_kill = _parts(run_dir)
    assert len(done_at_kill["02-pair_up"]) < 10, "killed too late to test a resume"
    finished_pieces = {sid for part in done_at_kill["02-pair_up"] for sid in
                       storage.read_table(str(run_dir / "02-pair_up" / part)).column("sample_id").to_pylist()}

    subprocess.run([*command, f"pair_up.log={log_after}"], env=env, check=True, capture_output=True, timeout=240)
    redone = set(log_after.read_text().split())
    assert not redone & finished_pieces  # no piece of a part written before the kill was made again
    reference = tmp_path / "reference"
    run(compose(_args(reference, 30, "stream=false")))
    for name, table in _manifests(reference).items():
        resumed = storage.read_table(str(run_dir / name))
        assert resumed.equals(table), name  # same samples, ids and order: nothing lost, nothing duplicated


def test_chains_break_after_a_finalizing_stage_and_fit_gpus_and_small_machines():
    class Finalizing(KeepEven):
        def finalize(self, stage_dir: str) -> None:  # a per-run decision over all parts
            pass

    cpu = Resources(num_cpus=0.5, concurrency=(1, 2))
    stages = [PairUp(resources=cpu), Finalizing(resources=cpu), KeepEven(resources=cpu)]
    chains = plan_chains(stages, Cluster(cpus=16), stream=True)
    assert [[s.name for s, _ in c] for c in chains] == [["pair_up", "keep_even"], ["keep_even"]]
    assert [[s.name for s, _ in c] for c in plan_chains(stages, Cluster(cpus=16), stream=False)] == [
        ["pair_up"], ["keep_even"], ["keep_even"]]
    # 2 CPUs: four pools of 0.5 CPU plus a read task (0.25) do not fit, so the chain is cut before the fourth
    small = plan_chains([PairUp(resources=cpu), KeepEven(resources=cpu), PairUp(resources=cpu), KeepEven(resources=cpu)],
                        Cluster(cpus=2), True)
    assert [[s.name for s, _ in c] for c in small] == [["pair_up", "keep_even", "pair_up"], ["keep_even"]]
    # a pool may grow only into what the chain's other pools (at their smallest) and a read task leave
    assert [res.concurrency for _, res in small[0]] == [(1, 1)] * 3  # (2 - 2 x 0.5 - 0.25) // 0.5
    assert small[1][0][1].concurrency == (1, 2)  # alone: (2 - 0.25) // 0.5 = 3, capped by its own max 2
