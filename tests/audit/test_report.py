"""`curate report`: the page's numbers against counts made here with plain SQL over the manifests and
against each stage's `_run.json`; thresholds from the stage configs; untrusted text escaped; a run
with nothing to plot but its funnel."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import BaseModel

from curation.audit.catalog import RunCatalog
from curation.audit.report import report_data, write_report
from curation.backends.embed import EmbedConfig
from curation.core.config import build_stage
from curation.core.schema import SampleRow, arrow_schema, rows_to_table

XSS = "<script>alert(1)</script>"


# ------------------------------------------------------------------------------------- helpers

class _Tables(HTMLParser):
    """Rows of one table (`<tr data-stage=...>`): each cell's text under its last class, and the
    data-* attributes of the list items inside the row."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id, self.inside, self.rows = table_id, False, {}
        self.row: dict[str, Any] | None = None
        self.cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.inside = a.get("id") == self.table_id
        elif self.inside and tag == "tr" and "data-stage" in a:
            self.row = self.rows.setdefault(a["data-stage"], {"cells": {}, "items": []})
        elif self.row is not None and tag == "td":
            self.cell = (a.get("class") or "").split()[-1]
            self.row["cells"][self.cell] = ""
        elif self.row is not None and tag == "li":
            self.row["items"].append({k[5:]: v for k, v in a.items() if k.startswith("data-")})

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self.cell = None
        elif tag == "tr":
            self.row = None
        elif tag == "table":
            self.inside = False

    def handle_data(self, data: str) -> None:
        if self.row is not None and self.cell is not None:
            self.row["cells"][self.cell] += data


def html_table(html: str, table_id: str) -> dict[str, dict[str, Any]]:
    parser = _Tables(table_id)
    parser.feed(html)
    return parser.rows


def number(text: str) -> float:
    return float(text.strip().replace(",", "").lstrip("$"))


def stage_dirs(run: Path) -> list[Path]:
    return sorted(d for d in run.glob("[0-9][0-9]-*") if list(d.glob("part-*.parquet")))


def sql_counts(stage_dir: Path) -> dict[str, Any]:
    """Counts by status and reason prefix, straight from the Parquet files (no curate code)."""
    rows = duckdb.sql(
        "SELECT status, coalesce(nullif(trim(split_part(reason, ':', 1)), ''), 'unspecified'), count(*) "
        f"FROM read_parquet('{stage_dir}/part-*.parquet', union_by_name = true) GROUP BY ALL").fetchall()
    counts: dict[str, Any] = {"total": 0, "ok": 0, "dropped": {}, "error": {}}
    for status, reason, n in rows:
        counts["total"] += n
        if status == "ok":
            counts["ok"] += n
        else:
            counts[status][reason] = counts[status].get(reason, 0) + n
    return counts


def run_json(stage_dir: Path) -> dict[str, Any]:
    return json.loads((stage_dir / "_run.json").read_text())


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        image.verify()
    assert 600 <= width <= 2600 and 250 <= height <= 2600, (path.name, image.size)


class _Columns(BaseModel):
    instruction: str | None = None
    category: str | None = None
    scores: dict[str, float] | None = None


def write_stage(run: Path, name: str, rows: list[dict[str, Any]], record: dict[str, Any] | None = None,
                columns: tuple[type[BaseModel], ...] = (_Columns,)) -> None:
    """A stage manifest as a stage writes it: NN-name/part-00000.parquet (+ _run.json when finished)."""
    stage_dir = run / name
    stage_dir.mkdir(parents=True)
    stage = name.split("-", 1)[1]
    full = [{"parent_ids": [], "kind": "image", "source_uri": f"/data/{r['sample_id']}.png", "status": "ok",
             "reason": None, "stage": stage, "stage_version": "1", **r} for r in rows]
    pq.write_table(rows_to_table(full, arrow_schema(SampleRow, *columns)), stage_dir / "part-00000.parquet")
    if record is not None:
        (stage_dir / "_run.json").write_text(json.dumps({"stage": stage, **record}))


# ------------------------------------------------------------------------------------- the audit run

@pytest.fixture(scope="module")
def audit_report(audit_run: Path, tmp_path_factory) -> tuple[Path, str, dict[str, Any]]:
    index = write_report(str(audit_run), str(tmp_path_factory.mktemp("report")))
    return index, index.read_text(), report_data(RunCatalog(str(audit_run)))


@pytest.mark.slow
def test_report_writes_a_page_and_readable_plots(audit_report):
    index, html, data = audit_report
    images = sorted(p.name for p in index.parent.glob("*.png"))
    assert {"funnel.png", "wall_time.png", "api_cost.png", "durations.png", "score_text_area.png",
            "score_motion_px_per_s.png", "score_duplicate_similarity.png"} <= set(images)
    assert images == sorted({"funnel.png", "wall_time.png", "api_cost.png", "durations.png"}
                            | {f"score_{s['name']}.png" for s in data["scores"]})
    for name in images:
        assert f'src="{name}"' in html
        assert_png(index.parent / name)
    # Self-contained: no script, no external resource.
    assert "<script" not in html and "<link" not in html and 'src="http' not in html and "url(" not in html
    assert "RANDOM WEIGHTS" in html  # the tiny detector/segmenter of the ground stage
    assert data["random_weights"] == {"06-ground": ["detector", "segmenter"]}


@pytest.mark.slow
def test_funnel_in_the_page_equals_independent_counts(audit_run, audit_report):
    _, html, _ = audit_report
    shown = html_table(html, "funnel")
    dirs = stage_dirs(audit_run)
    assert list(shown) == [d.name for d in dirs]
    previous_kept = None
    for d in dirs:
        expected, record = sql_counts(d), run_json(d)["counts"]
        assert {k: record[k] for k in ("total", "ok", "dropped", "error")} == expected, d.name
        cells = shown[d.name]["cells"]
        entered = expected["total"] if previous_kept is None else previous_kept
        assert (number(cells["entered"]), number(cells["rows"]), number(cells["kept"])) == (
            entered, expected["total"], expected["ok"]), d.name
        for status in ("dropped", "error"):
            listed = {i["reason"]: int(i["count"]) for i in shown[d.name]["items"] if i["status"] == status}
            assert listed == expected[status], (d.name, status)
            assert number(cells[f"{status}-total"]) == sum(expected[status].values())
        previous_kept = expected["ok"]
    # What the example pipeline is known to drop, so the comparison above is not vacuous.
    assert "too_short" in sql_counts(audit_run / "02-scene_split")["dropped"]
    assert "text_overlay" in sql_counts(audit_run / "03-filter_quality")["dropped"]
    assert "near_duplicate" in sql_counts(audit_run / "08-dedup")["dropped"]


@pytest.mark.slow
def test_tokens_and_cost_equal_the_run_records(audit_run, audit_report):
    _, html, data = audit_report
    expected = {}
    for d in stage_dirs(audit_run):
        usages = [v["usage"] for v in run_json(d).values() if isinstance(v, dict) and "usage" in v]
        if usages:
            expected[d.name] = {k: sum(u[k] for u in usages) for k in ("requests", "prompt_tokens", "completion_tokens", "usd")}
    # One request per turn, each billed as the scripted server answers (tests/audit_fixtures.py) at
    # vlm=openai's list prices; how many turns depends on the sampled frame counts, so count them.
    turns = duckdb.sql(f"SELECT sum(len(turns)) FROM read_parquet('{audit_run}/05-annotate/part-*.parquet')").fetchall()[0][0]
    assert expected["05-annotate"] == {"requests": turns, "prompt_tokens": 1200 * turns, "completion_tokens": 150 * turns,
                                       "usd": pytest.approx(turns * (1200 * 0.40 + 150 * 1.60) / 1e6)}
    assert {u["stage"]: {k: u[k] for k in expected[u["stage"]]} for u in data["usage"]} == expected
    shown = html_table(html, "usage")
    for stage, usage in [*expected.items(), ("total", {k: sum(u[k] for u in expected.values()) for k in expected["05-annotate"]})]:
        cells = shown[stage]["cells"]
        assert number(cells["requests"]) == usage["requests"]
        assert number(cells["prompt-tokens"]) == usage["prompt_tokens"]
        assert number(cells["completion-tokens"]) == usage["completion_tokens"]
        assert number(cells["usd"]) == pytest.approx(usage["usd"], abs=5e-5)  # shown to 4 decimals


@pytest.mark.slow
def test_thresholds_are_those_of_the_stage_configs(audit_run, audit_report):
    _, html, data = audit_report
    cuts = {s["name"]: {c["setting"].rsplit(".", 1)[-1]: c["value"] for c in s["thresholds"]} for s in data["scores"]}
    quality = run_json(audit_run / "03-filter_quality")["stage_config"]["quality"]
    assert cuts["text_area"] == {"max_area_ratio": quality["text_overlay"]["max_area_ratio"]} == {"max_area_ratio": 0.02}
    assert cuts["motion_px_per_s"] == {"min_px_per_s": quality["motion"]["min_px_per_s"]} == {"min_px_per_s": 0.3}
    assert cuts["luma"] == {"min_luma": quality["luminance"]["min_luma"], "max_luma": quality["luminance"]["max_luma"]}
    assert cuts["laplacian_var"] == {"min_laplacian_var": quality["blur"]["min_laplacian_var"]}
    assert cuts["nsfw"] == {"max_score": quality["nsfw"]["max_score"]}
    assert cuts["border_fraction"] == {}
    dedup = run_json(audit_run / "08-dedup")["stage_config"]
    assert dedup["threshold"] is None  # so the line is the embedder's default
    assert cuts["duplicate_similarity"] == {"threshold": EmbedConfig(**dedup["embedder"]).default_threshold()}
    assert 'data-value="0.02"' in html and 'data-value="0.3"' in html
    # The histograms count every row of the stage that wrote the score, dropped ones included.
    text_area = next(s for s in data["scores"] if s["name"] == "text_area")
    assert text_area["stage"] == "03-filter_quality"
    rows = pq.read_table(audit_run / "03-filter_quality", columns=["status", "scores"]).to_pylist()
    scored = [r["status"] for r in rows if "text_area" in dict(r["scores"] or [])]
    kept = scored.count("ok")
    assert {k: sum(v) for k, v in text_area["counts"].items()} == {"kept": kept, "dropped": len(scored) - kept}
    assert 0 < kept < len(scored)  # both sides of the cut are drawn


# ------------------------------------------------------------------------------------- synthetic runs

def test_untrusted_text_is_escaped_in_page_and_plots(tmp_path):
    run = tmp_path / "run"
    bad_category = f"{XSS}$x_{{"  # a lone "$" would also break matplotlib's mathtext
    write_stage(run, "01-ingest", [
        {"sample_id": "a", "category": bad_category, "instruction": f"paint it {XSS}"},
        {"sample_id": "b", "category": "local_change", "instruction": "make it red"}], {"wall_s": 1.0})
    write_stage(run, "02-edit_score", [
        {"sample_id": "a", "category": bad_category, "instruction": f"paint it {XSS}", "status": "dropped",
         "reason": f"{XSS}: $1 < $2", "scores": {"edit_score": 2.0, "<b>x</b>": 1.0}},
        {"sample_id": "b", "category": "local_change", "instruction": "make it red", "scores": {"edit_score": 9.0}}],
        {"wall_s": 2.0, "thresholds": [{"score": "edit_score", "value": 6.0, "setting": "threshold", "column": False}]})
    index = write_report(str(run))
    assert index == run / "report" / "index.html"
    html = index.read_text()
    assert "<script" not in html and "<b>x</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html_table(html, "funnel")["02-edit_score"]["items"] == [
        {"status": "dropped", "reason": XSS, "count": "1"}]
    assert (index.parent / "score__b_x__b_.png").is_file() and (index.parent / "categories.png").is_file()
    assert 'data-value="6.0"' in html  # edit_score's threshold, from its _run.json


def test_a_bare_run_says_what_it_lacks_and_reruns_cleanly(tmp_path):
    run = tmp_path / "run"
    write_stage(run, "01-ingest", [{"sample_id": "a"}, {"sample_id": "b", "status": "error", "reason": "decode_failed: moov"}],
                {"wall_s": 1.5, "samples_per_s": 1.33, "processed_total": 2, "random_weights": []}, columns=())
    write_stage(run, "02-filter_quality", [{"sample_id": "a", "status": "dropped", "reason": None}],
                columns=())  # unfinished: no _run.json
    out = tmp_path / "out"
    out.mkdir()
    (out / "score_gone.png").write_bytes(b"stale")  # a plot an earlier report wrote
    index = write_report(str(run), str(out))
    html = index.read_text()
    for note in ("no-scores", "no-categories", "no-usage", "no-durations"):
        assert f'id="{note}"' in html
    assert "RANDOM WEIGHTS" not in html
    data = report_data(RunCatalog(str(run)))
    assert (data["scores"], data["categories"], data["durations"], data["usage"]) == ([], None, None, [])
    assert [f["dropped"] for f in data["funnel"]] == [{}, {"unspecified": 1}]
    assert [f["error"] for f in data["funnel"]] == [{"decode_failed": 1}, {}]
    assert html_table(html, "timing")["02-filter_quality"]["cells"]["wall-s"].strip() == "unfinished"
    assert sorted(p.name for p in out.iterdir()) == ["funnel.png", "index.html", "wall_time.png"]
    assert write_report(str(run), str(out)) == index and sorted(p.name for p in out.iterdir()) == [
        "funnel.png", "index.html", "wall_time.png"]


def test_disabled_checks_draw_no_threshold(tmp_path):
    """A stage records only the cuts its enabled checks apply; the report draws what it recorded."""
    run = tmp_path / "run"
    stage = build_stage("filter_quality", overrides=["filter_quality.quality.text_overlay.enabled=false",
                                                     "filter_quality.quality.motion.min_px_per_s=0.5"])
    write_stage(run, "01-filter_quality", [{"sample_id": "a", "scores": {"text_area": 0.1, "motion_px_per_s": 2.0}}],
                {"thresholds": [t.model_dump() for t in stage.thresholds()]})
    scores = {s["name"]: s["thresholds"] for s in report_data(RunCatalog(str(run)))["scores"]}
    assert scores == {"text_area": [],
                      "motion_px_per_s": [{"setting": "quality.motion.min_px_per_s", "value": 0.5, "stage": "01-filter_quality"}]}
