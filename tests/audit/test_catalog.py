"""The run catalog (`curation/audit/catalog.py`) on a small synthetic run, and the browser's path
guard: counts agree with `count_outcomes` (what `_run.json` and `curate status` use), filters are
bound parameters, rows come back whole, and no request path leaves the run directory."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from curation.audit.catalog import RunCatalog, SampleFilter
from curation.audit.security import file_under, is_loopback
from curation.core import storage
from curation.core.runinfo import count_outcomes
from curation.core.schema import SampleRow, arrow_schema, rows_to_table


def _write(stage_dir: Path, rows: list[dict], extra: dict[str, pa.DataType], name: str = "part-00000.parquet") -> None:
    schema = arrow_schema(SampleRow)
    for column, arrow_type in extra.items():
        schema = schema.append(pa.field(column, arrow_type))
    stage_dir.mkdir(parents=True, exist_ok=True)
    storage.write_table_atomic(rows_to_table(rows, schema), str(stage_dir / name))


def _row(sample_id: str, stage: str, status: str = "ok", reason: str | None = None, parents=(), **columns) -> dict:
    return dict(sample_id=sample_id, parent_ids=list(parents), kind=columns.pop("kind", "pair"), source_uri=f"/data/{sample_id}.jpg",
                status=status, reason=reason, stage=stage, stage_version="1", **columns)


@pytest.fixture
def run(tmp_path) -> Path:
    run = tmp_path / "run"
    _write(run / "01-ingest" / "_input", [_row(f"src{i}", "ingest", kind="source") for i in range(6)], {})
    _write(run / "01-ingest", [_row(f"p{i}", "ingest", parents=[f"src{i}"], instruction=f"edit number {i}",
                                    category="local_change" if i % 2 else "background_change") for i in range(6)],
           {"instruction": pa.string(), "category": pa.string()})
    scored = [
        _row("p0", "edit_score", instruction="make it 100% red", category="background_change", scores={"edit_score": 8.5}),
        _row("p1", "edit_score", "dropped", "edit_score_below_threshold: 4.0 < 6", instruction="add_a hat",
             category="local_change", scores={"edit_score": 4.0}),
        _row("p2", "edit_score", "dropped", "edit_score_below_threshold: 5.5 < 6", instruction="it's O'Brien's cat",
             category="background_change", scores={"edit_score": 5.5}),
        _row("p3", "edit_score", "error", "judge_unparseable: not JSON", instruction="x", category="local_change"),
        _row("p4", "edit_score", "error", None, instruction="y", category="background_change"),
    ]
    extra = {"instruction": pa.string(), "category": pa.string(), "scores": pa.map_(pa.string(), pa.float64())}
    _write(run / "02-edit_score", scored[:3], extra)
    _write(run / "02-edit_score", scored[3:] + [_row("p5", "edit_score", instruction="z", category="local_change",
                                                     scores={"edit_score": 9.0})], extra, "part-00001.parquet")
    return run


def test_counts_agree_with_count_outcomes_and_the_funnel_chains_stages(run):
    catalog = RunCatalog(str(run))
    assert [s.label for s in catalog.stages] == ["01-ingest/_input", "01-ingest", "02-edit_score"]
    counts = catalog.outcome_counts()
    for label in ("01-ingest", "02-edit_score"):
        assert counts[label] == count_outcomes(str(run / label))
    assert counts["02-edit_score"]["dropped"] == {"edit_score_below_threshold": 2}
    assert counts["02-edit_score"]["error"] == {"judge_unparseable": 1, "unspecified": 1}
    funnel = catalog.funnel()
    assert [(f["label"], f["entered"], f["rows"], f["kept"]) for f in funnel] == [
        ("01-ingest", 6, 6, 6), ("02-edit_score", 6, 6, 2)]


def test_filters_are_parameters_and_like_wildcards_are_literal(run):
    catalog = RunCatalog(str(run))

    def ids(**kw) -> list[str]:
        total, rows = catalog.page(SampleFilter(**kw))
        assert total == len(rows)
        return [r["sample_id"] for r in rows]

    assert ids(stage="02-edit_score", reason="edit_score_below_threshold") == ["p1", "p2"]
    assert ids(stage="02-edit_score", status="error") == ["p3", "p4"]
    assert ids(category="background_change", stage="01-ingest") == ["p0", "p2", "p4"]
    assert ids(text="100%") == ["p0"] and ids(text="0%") == ["p0"]  # % is text, not a wildcard
    assert ids(text="add_a") == ["p1"] and ids(text="d_a") == ["p1"]  # _ too
    assert ids(text="O'Brien") == ["p2"]
    assert ids(text="'; DROP VIEW light; --") == []
    assert ids(score="edit_score", score_min=5, score_max=9) == ["p0", "p2", "p5"]
    assert ids(score="edit_score", score_min=8.6) == ["p5"]
    assert ids(text="EDIT NUMBER") == [f"p{i}" for i in range(6)]  # case-insensitive, manifest order
    with pytest.raises(KeyError):
        catalog.page(SampleFilter(stage="99-nope"))


def test_paging_locate_and_whole_rows(run):
    catalog = RunCatalog(str(run))
    total, first = catalog.page(SampleFilter(), page=0, per_page=5)
    _, second = catalog.page(SampleFilter(), page=1, per_page=5)
    assert total == 18 and len(first) == 5 and {r["sample_id"] for r in first}.isdisjoint({r["sample_id"] for r in second})
    history = catalog.locate(["p3"])
    assert [(h["stage"], h["status"]) for h in history] == [("01-ingest", "ok"), ("02-edit_score", "error")]
    row = catalog.row("02-edit_score", "p5")  # in the second part file
    assert row["instruction"] == "z" and dict(row["scores"]) == {"edit_score": 9.0}
    assert catalog.row("02-edit_score", "nope") is None
    assert catalog.score_keys() == {"edit_score": "02-edit_score"}


def test_a_run_that_grows_is_seen_after_refresh(run):
    catalog = RunCatalog(str(run))
    assert catalog.refresh() is False
    _write(run / "03-dedup", [_row("p0", "dedup")], {})
    assert catalog.refresh() is True and catalog.stage("03-dedup") is not None
    assert catalog.outcome_counts()["03-dedup"]["ok"] == 1


def test_file_under_refuses_every_way_out(tmp_path):
    root = tmp_path / "run"
    (root / "a").mkdir(parents=True)
    (root / "a" / "f.txt").write_text("ok")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "out-link").symlink_to(tmp_path / "secret.txt")
    (root / "dir-link").symlink_to(tmp_path)
    (root / "in-link").symlink_to(root / "a" / "f.txt")
    assert file_under(root, "a/f.txt") == (root / "a" / "f.txt").resolve()
    assert file_under(root, "in-link") == (root / "a" / "f.txt").resolve()
    for bad in ["../secret.txt", "a/../../secret.txt", str(tmp_path / "secret.txt"), "/etc/passwd", "out-link",
                "dir-link/secret.txt", "a", "", "a/f.txt\x00", "a\\..\\..\\secret.txt", "C:/x"]:
        assert file_under(root, bad) is None, bad


def test_loopback_hosts():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "example.org", "::"))
