"""The runner's contract, with a small stage defined here: fragments, ordering, per-row failures,
resume and retry_errors, through real local Ray."""

from __future__ import annotations

import sys
from typing import Any, ClassVar

import pyarrow as pa
import pytest
from pydantic import BaseModel

from curation.core import storage
from curation.core.schema import SampleRow, arrow_schema, make_sample_id, rows_to_table
from curation.core.stage import Stage, StageError
from curation.core.streaming import plan_fragments, run_batch, run_map_stage


class SplitCols(BaseModel):
    piece: int | None = None


class SplitByName(Stage):
    """Per-row behaviour chosen by the source name: `two` -> 2 children, `bad` -> error, `none` -> nothing."""

    name: ClassVar[str] = "split_by_name"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = SplitCols
    fail_on_bad: bool = True

    def process(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        uri = row["source_uri"]
        if "bad" in uri and self.fail_on_bad:
            raise StageError("bad_input: the name says so")
        if "boom" in uri:
            raise ZeroDivisionError("division by zero")
        if "none" in uri:
            return []
        pieces = 2 if "two" in uri else 1
        return [self.child_row(row, kind="clip", span=i, piece=i) for i in range(pieces)]


def _write_inputs(tmp_path, names_per_fragment: list[list[str]], status: str = "ok") -> list[str]:
    schema = arrow_schema(SampleRow)
    uris = []
    for i, names in enumerate(names_per_fragment):
        rows = [dict(sample_id=make_sample_id("video", n), kind="video", source_uri=n, status=status,
                     stage="ingest", stage_version="1") for n in names]
        uri = str(tmp_path / "in" / f"part-{i:05d}.parquet")
        storage.write_table_atomic(rows_to_table(rows, schema), uri)
        uris.append(uri)
    return uris


def test_run_batch_tags_every_output_with_its_input_row_and_never_loses_a_sample():
    stage = SplitByName()
    rows = [dict(sample_id=f"id{i}", parent_ids=[], kind="video", source_uri=n, status="ok", reason=None,
                 stage="ingest", stage_version="1", _frag=0, _order=[i])
            for i, n in enumerate(["a", "two", "bad", "none", "boom"])]
    out = run_batch(stage, pa.Table.from_pylist(rows)).to_pylist()
    by_row: dict[int, list[dict]] = {}
    for o in out:
        by_row.setdefault(o["_order"][0], []).append(o)
    # Each output's order key is its input row's key plus its position among that row's outputs.
    assert [o["_order"] for o in by_row[1]] == [[1, 0], [1, 1]]
    assert sorted(by_row) == [0, 1, 2, 3, 4]
    assert [o["piece"] for o in by_row[1]] == [0, 1]
    assert by_row[2][0]["status"] == "error" and by_row[2][0]["reason"].startswith("bad_input")
    assert by_row[2][0]["sample_id"] == "id2"  # an error row keeps the failing sample's id
    assert by_row[3][0]["status"] == "dropped" and by_row[3][0]["reason"].startswith("no_output")
    assert by_row[4][0]["status"] == "error" and "ZeroDivisionError" in by_row[4][0]["reason"]


@pytest.fixture
def ray_with_test_stage(ray_local):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray_local


def test_fragments_resume_and_retry_errors(tmp_path, ray_with_test_stage):
    inputs = _write_inputs(tmp_path, [["a", "two"], ["bad", "c"], ["none"]])
    stage_dir = str(tmp_path / "02-split")
    todo, skipped = plan_fragments(inputs, stage_dir, retry_errors=False)
    assert (len(todo), skipped) == (3, 0) and [f.expected for f in todo] == [2, 2, 1]

    assert run_map_stage(SplitByName(), todo, progress=False) == 5
    parts = storage.list_files(stage_dir, prefix="part-")
    assert [p.rsplit("/", 1)[1] for p in parts] == [u.rsplit("/", 1)[1] for u in inputs]
    first = storage.read_table(stage_dir)
    # Output keeps input order: a, two/0, two/1, bad, c, none
    assert first.column("source_uri").to_pylist() == ["a", "two", "two", "bad", "c", "none"]
    assert first.column("status").to_pylist() == ["ok", "ok", "ok", "error", "ok", "dropped"]

    # Rerun: everything is complete, nothing is redone.
    todo, skipped = plan_fragments(inputs, stage_dir, retry_errors=False)
    assert (todo, skipped) == ([], 3)

    # retry_errors: only the fragment with an error row is redone, and only its error row.
    todo, skipped = plan_fragments(inputs, stage_dir, retry_errors=True)
    assert skipped == 2 and len(todo) == 1 and todo[0].only_ids == [make_sample_id("video", "bad")]
    assert run_map_stage(SplitByName(fail_on_bad=False), todo, progress=False) == 1
    after = storage.read_table(stage_dir)
    assert after.num_rows == first.num_rows
    assert after.filter(pa.compute.equal(after.column("source_uri"), "bad")).column("status").to_pylist() == ["ok"]
    assert set(after.column("sample_id").to_pylist()) - set(first.column("sample_id").to_pylist()) == {
        make_sample_id("clip", "bad", 0, make_sample_id("video", "bad"))
    }


def test_fragment_with_no_ok_rows_is_still_completed(tmp_path, ray_with_test_stage):
    inputs = _write_inputs(tmp_path, [["x", "y"]], status="error")
    todo, _ = plan_fragments(inputs, str(tmp_path / "out"), retry_errors=False)
    assert todo[0].expected == 0
    assert run_map_stage(SplitByName(), todo, progress=False) == 0
    table = storage.read_table(str(tmp_path / "out"))
    assert table.num_rows == 0 and "piece" in table.column_names


class CrashOnce(SplitByName):
    """Kills its own worker process the first time it sees a batch (like a segfaulting decoder)."""

    name: ClassVar[str] = "crash_once"
    marker: str

    def __call__(self, batch: pa.Table) -> pa.Table:
        import os
        from pathlib import Path

        if not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return super().__call__(batch)


def test_a_crashed_worker_is_restarted_and_its_batch_retried(tmp_path, ray_with_test_stage):
    inputs = _write_inputs(tmp_path, [["a", "two"], ["c"]])
    todo, _ = plan_fragments(inputs, str(tmp_path / "out"), retry_errors=False)
    marker = tmp_path / "crashed"
    assert run_map_stage(CrashOnce(marker=str(marker)), todo, progress=False) == 3
    assert marker.exists()  # the first worker really died
    table = storage.read_table(str(tmp_path / "out"))
    assert table.column("source_uri").to_pylist() == ["a", "two", "two", "c"]
    assert set(table.column("status").to_pylist()) == {"ok"}


def test_actor_pool_is_shrunk_so_reading_can_always_be_scheduled():
    from curation.core.resources import Cluster, fit_to_cluster
    from curation.core.stage import Resources

    # 2 CPUs: 2 actors x 1 CPU would starve the read tasks (the hang seen on 2-core machines).
    fitted = fit_to_cluster("s", Resources(num_cpus=1, concurrency=(2, 2)), cluster=Cluster(cpus=2))
    assert fitted.concurrency == (1, 1)
    assert fit_to_cluster("s", Resources(num_cpus=0.5, concurrency=(1, 3)), cluster=Cluster(cpus=2)).concurrency == (1, 3)
    assert fit_to_cluster("s", Resources(num_cpus=0.5, concurrency=(1, 8)), cluster=Cluster(cpus=2)).concurrency == (1, 3)
    with pytest.raises(ValueError, match=r"lower s.resources.num_cpus"):
        fit_to_cluster("s", Resources(num_cpus=2, concurrency=(1, 1)), cluster=Cluster(cpus=2))


@pytest.mark.timeout(180)
def test_a_pool_asking_for_every_cpu_still_completes(tmp_path, ray_with_test_stage):
    import ray

    from curation.core.stage import Resources

    cpus = ray.cluster_resources()["CPU"]
    greedy = SplitByName(resources=Resources(num_cpus=cpus / 2, concurrency=(2, 2)))
    inputs = _write_inputs(tmp_path, [["a"], ["b"], ["c"]])
    todo, _ = plan_fragments(inputs, str(tmp_path / "out"), retry_errors=False)
    assert run_map_stage(greedy, todo, progress=False) == 3
