"""End to end through local Ray: `pipeline=rvedit` (RVEDiT, seed 001 §5 / App. D.1) on real photos
and clips with real pixel edits: ingest, a stratified draw per (native category, dataset) made
before anything is paid for, a caption of every kept target, shards. No judge runs. A scripted
OpenAI-compatible server answers the captions and records what it was sent."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from curation.core import storage

from tests.e2e.test_edit_pipelines import run_pipeline, shard_urls
from tests.fixtures.edits import build_edit_dataset
from tests.fixtures.vlm_servers import ok_from_prompt, openai_server

pytestmark = pytest.mark.slow


def test_rvedit_draws_per_native_category_then_captions_only_the_kept_targets(tmp_path, ray_local):
    import webdataset as wds

    root = tmp_path / "edits"
    edits = build_edit_dataset(root)
    out = tmp_path / "rvedit"
    with openai_server(default=ok_from_prompt(lambda prompt: {"caption": "An edited scene."})) as server:
        results = run_pipeline("rvedit", root, out, server, "stratify.per_group=1")
        requests = len(server.requests)
    assert [r.name for r in results] == ["ingest", "stratify", "caption", "shard"]

    drawn = storage.read_table(str(out / "02-stratify")).to_pylist()
    sizes = Counter(e.category_raw for e in edits)  # the dataset's own labels, e.g. "add" twice
    kept = [r for r in drawn if r["status"] == "ok"]
    assert Counter(r["category_native"] for r in kept) == {c: min(1, n) for c, n in sizes.items()}
    (out_of_quota,) = [r for r in drawn if r["status"] == "dropped"]
    assert out_of_quota["reason"].startswith("stratified_out") and out_of_quota["category_native"] == "add"

    # One caption request per kept edit and none for the one drawn out: no judge, no other request.
    assert requests == len(kept)
    captioned = storage.read_table(str(out / "03-caption")).to_pylist()
    assert sorted(r["sample_id"] for r in captioned) == sorted(r["sample_id"] for r in kept)

    samples = [s for urls in shard_urls(out) for s in wds.WebDataset(urls, shardshuffle=False)]
    metas = [json.loads(s["json"]) for s in samples]
    assert sorted(m["instruction"] for m in metas) == sorted(r["instruction"] for r in kept)
    for meta in metas:
        assert meta["caption"] == "An edited scene." and meta["dataset"] == "generic"
        assert meta["licence"] == "unknown" and meta["category_native"] in sizes and "category" in meta
