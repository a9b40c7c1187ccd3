"""The stage contract: one batch idiom (rows in, rows out), failures on rows, source and sink
hooks the runner finds by base class, and the facts a stage records in `_run.json` (its models with
random weights as data, its thresholds). A plugin's stages, registered through an installed
distribution's entry points, run as a pipeline whose first stage reads no files."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from curation.core import layout, storage
from curation.core.config import compose
from curation.core.runner import run
from curation.core.schema import SampleRow, arrow_schema, make_sample_id, rows_to_table
from curation.core.stage import ModelRef, SinkStage, get_stage_class, stage_kind, stage_names

from tests.fixtures.plugin_stages import CountSource, KeepEven, NumberColumns, rows_of


def _row(uri: str, **columns) -> dict:
    return dict(sample_id=make_sample_id("number", uri), parent_ids=[], kind="number", source_uri=uri, status="ok",
                reason=None, stage="count_source", stage_version="1", **columns)


def test_the_base_turns_arrow_into_rows_and_back_with_the_stage_schema():
    batch = rows_to_table([_row("count://1", number=1), _row("count://4", number=4)], arrow_schema(SampleRow, NumberColumns))
    out = KeepEven()(batch)
    assert out.schema.field("number").type == pa.int64() and out.schema.field("scores").type == pa.map_(pa.string(), pa.float64())
    assert [(r["number"], r["status"], r["reason"], dict(r["scores"])) for r in out.to_pylist()] == [
        (1, "dropped", "odd_or_small: 1", {"number": 1.0}), (4, "ok", None, {"number": 4.0})]
    assert set(out.column("stage").to_pylist()) == {"keep_even"}


def test_a_failing_row_becomes_an_error_row_and_the_batch_goes_on():
    rows = [_row("count://2"), _row("count://3"), _row("count://x")]
    out = CountSource().process_batch(rows)
    assert [r["status"] for r in out] == ["ok", "error", "error"]
    assert out[1]["reason"] == "unlucky: three" and out[1]["sample_id"] == rows[1]["sample_id"]
    assert out[2]["reason"].startswith("ValueError: invalid literal for int()") and "(process:" in out[2]["reason"]
    assert out[0]["kind"] == "number" and out[0]["parent_ids"] == [rows[0]["sample_id"]]


def test_error_rows_keep_what_the_stage_computed():
    row = _row("count://5", number=5)
    dropped = KeepEven().error_row(row, "odd_or_small: 5", "dropped", scores={"number": 5.0})
    assert (dropped["status"], dropped["reason"], dropped["scores"], dropped["sample_id"]) == (
        "dropped", "odd_or_small: 5", {"number": 5.0}, row["sample_id"])
    assert KeepEven().error_row(row, "x")["status"] == "error"


def test_the_runner_tells_stages_apart_by_base_class():
    assert [stage_kind(c) for c in (CountSource, KeepEven, SinkStage)] == ["source", "map", "sink"]
    builtin = {name: stage_kind(get_stage_class(name)) for name in stage_names()}
    assert builtin == {**dict.fromkeys(builtin, "map"), "ingest": "source", "plan_scenes": "source", "shard": "sink"}


def test_models_carry_random_weights_as_data():
    oracle = KeepEven().models()["oracle"]
    assert oracle.random_weights and oracle.display == "tiny:oracle (RANDOM WEIGHTS)"
    assert ModelRef(id="org/model").display == "org/model"


def test_a_map_stage_says_what_manifest_it_needs(tmp_path):
    with pytest.raises(ValueError, match="keep_even reads a manifest"):
        KeepEven().input_fragments(None, str(tmp_path / "02-keep_even"))
    with pytest.raises(ValueError, match="does not exist"):
        KeepEven().input_fragments(str(tmp_path / "nowhere"), str(tmp_path / "02-keep_even"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no part-"):
        KeepEven().input_fragments(str(tmp_path / "empty"), str(tmp_path / "02-keep_even"))


def test_a_source_stage_lists_once_and_appends_what_appears_later(tmp_path):
    stage_dir = str(tmp_path / "01-count_source")
    first = CountSource(fragment_size=2).input_fragments("count://5", stage_dir)
    assert [f.rsplit("/", 1)[1] for f in first] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert storage.read_table(layout.input_dir(stage_dir)).num_rows == 5
    assert CountSource(fragment_size=2).input_fragments("count://5", stage_dir) == first  # a rerun lists the same
    grown = CountSource(fragment_size=2).input_fragments("count://7", stage_dir)
    assert grown[:3] == first and len(grown) == 4
    assert storage.read_table(grown[3]).column("source_uri").to_pylist() == ["count://5", "count://6"]


def test_a_plugin_pipeline_starts_from_a_source_stage_that_reads_no_files(tmp_path, plugin, ray_local):
    assert {"count_source", "keep_even"} <= set(stage_names())
    run_dir = tmp_path / "run"
    cfg = compose(["stages=[count_source,keep_even]", "input=count://6", f"output={run_dir}", "progress=false",
                   "keep_even.min_number=2"])
    results = run(cfg)
    assert [r.name for r in results] == ["count_source", "keep_even"]
    source = rows_of(storage.read_table(str(run_dir / "01-count_source")))
    assert [(r["source_uri"], r["status"]) for r in source] == [
        ("count://0", "ok"), ("count://1", "ok"), ("count://2", "ok"), ("count://3", "error"), ("count://4", "ok"),
        ("count://5", "ok")]
    kept = rows_of(storage.read_table(str(run_dir / "02-keep_even")))
    assert [(r["number"], r["status"]) for r in kept] == [(0, "dropped"), (1, "dropped"), (2, "ok"), (4, "ok"), (5, "dropped")]
    record = json.loads((run_dir / "02-keep_even" / layout.RUN_JSON).read_text())
    assert record["thresholds"] == [{"score": "number", "value": 2.0, "setting": "min_number", "column": False}]
    assert record["model_ids"] == {"oracle": "tiny:oracle (RANDOM WEIGHTS)"} and record["random_weights"] == ["oracle"]
    assert record["input"] == str(run_dir / "01-count_source")
    # A rerun redoes nothing and duplicates nothing.
    again = run(cfg)
    assert [r.done_fragments for r in again] == [0, 0] and [r.skipped_fragments for r in again] == [3, 3]
    assert rows_of(storage.read_table(str(run_dir / "02-keep_even"))) == kept
