"""Provenance end to end through local Ray: an edit dataset's rows carry their dataset, normalised and
native categories and licence from ingest to every shard sample's json; `_dataset.json` counts them,
`ingest.licences` filters on them, and `curate report` shows them."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from curation.audit.catalog import RunCatalog
from curation.audit.report import report_data, write_report
from curation.core import storage
from curation.core.config import compose
from curation.core.runner import run

from tests.fixtures.edits import build_edit_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("edits")
    return root, build_edit_dataset(root)


def _run(root: Path, out: Path, *extra: str):
    # pipeline=pairs without its judge: ingest straight to shards, nothing generated.
    return run(compose(["pipeline=pairs", "stages=[ingest,shard]", f"input={root / 'edits.jsonl'}", f"output={out}",
                        "shard.max_frames=24", "progress=false", *extra]))


def _shard_samples(out: Path) -> list[dict]:
    import webdataset as wds

    tars = sorted(str(t) for t in (out / "shards").rglob("*.tar"))
    return [json.loads(s["json"]) for s in wds.WebDataset(tars, shardshuffle=False)] if tars else []


def _report_rows(html: str, table_id: str) -> dict[str, tuple[int, int]]:
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.DOTALL).group(1)
    return {value: (int(before.replace(",", "")), int(after.replace(",", "")))
            for value, before, after in re.findall(
                r'<tr data-value="([^"]+)">.*?class="n before">([\d,]+)</td>\s*<td class="n after">([\d,]+)</td>', table, re.DOTALL)}


def test_shards_carry_dataset_categories_and_licence_and_the_card_counts_them(dataset, tmp_path, ray_local):
    root, edits = dataset
    out = tmp_path / "run"
    # The generic adapter knows no licence: the user states it, and the filter keeps that licence.
    _run(root, out, "ingest.licence=CC-BY-4.0", "ingest.licences=[cc-by-4.0,apache-2.0]")

    samples = _shard_samples(out)
    assert len(samples) == len(edits)
    by_instruction = {s["instruction"]: s for s in samples}
    for edit in edits:
        meta = by_instruction[edit.instruction]
        assert meta["dataset"] == "generic" and meta["licence"] == "cc-by-4.0"
        assert meta["category_native"] == edit.category_raw  # as the dataset wrote it, beside the normalised name
        assert meta["generator"] is None  # nothing in this run generated media
        assert meta["dataset_captions"] == []
    assert by_instruction["Make the coffee cup blue."]["category"] == "local_change"  # "replace"
    assert by_instruction["Make the scene brighter."]["category"] == "other"  # "mystery tweak": no mapping knows it
    # Every sample's json has the same keys, so HF `datasets` infers one schema.
    assert len({tuple(sorted(s)) for s in samples if s["kind"] == "pair"}) == 1

    card = json.loads((out / "shards" / "_dataset.json").read_text())
    assert card["counts_by_licence"] == {"cc-by-4.0": len(edits)}
    assert card["counts_by_generator"] == {"none": len(edits)}
    assert card["counts_by_dataset"] == {"generic": len(edits)}
    assert card["counts_by_category_native"] == dict(sorted(Counter(e.category_raw for e in edits).items()))
    assert card["counts_by_category"] == dict(sorted(Counter(s["category"] for s in samples).items()))

    # `curate report` shows the licences: before the filter (ingest, all rows) and in the shards.
    html = write_report(str(out)).read_text()
    assert _report_rows(html, "provenance-licence") == {"cc-by-4.0": (len(edits), len(edits))}
    assert _report_rows(html, "provenance-dataset") == {"generic": (len(edits), len(edits))}
    assert report_data(RunCatalog(str(out)))["provenance"]["licence"]["after_stage"].endswith("shard")


def test_licence_filter_drops_unlisted_licences_with_a_reason(dataset, tmp_path, ray_local):
    root, edits = dataset
    out = tmp_path / "run"
    results = _run(root, out, "ingest.licences=[cc-by-4.0]")  # the generic rows' licence is `unknown`
    assert [r.name for r in results] == ["ingest", "shard"]
    ingested = storage.read_table(str(out / "01-ingest")).to_pylist()
    assert len(ingested) == len(edits)
    assert {(r["status"], r["reason"]) for r in ingested} == {
        ("dropped", "licence_excluded: unknown (ingest.licences keeps cc-by-4.0)")}
    assert all(r["num_frames"] is None for r in ingested)  # dropped before probing
    assert _shard_samples(out) == []
    funnel = json.loads((out / "_summary.json").read_text())["_funnel"]
    assert funnel[0]["dropped"] == {"licence_excluded": len(edits)}
    html = write_report(str(out)).read_text()
    assert _report_rows(html, "provenance-licence") == {"unknown": (len(edits), 0)}
