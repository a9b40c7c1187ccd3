"""Leak-free splits: the sessions pipeline on the bundled videos, cut into short clips so each video
makes several sessions, sharded with `shard.splits`. No video has samples on both sides, each
split has its own shards, and `_dataset.json` counts the samples of each split."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from curation.core import storage
from curation.core.config import compose
from curation.core.runner import run, run_stage
from curation.shards.splits import assign_split, check_ratios, unit_hash

from tests.fixtures.media import REPO

RATIOS = {"train": 0.5, "val": 0.5}  # even, so three videos can land on both sides


def test_a_group_keeps_its_split_whatever_else_is_split():
    ratios = {"train": 0.9, "val": 0.1}
    alone = assign_split("videos/a.mp4", ratios, seed=3)
    assert all(assign_split("videos/a.mp4", ratios, seed=3) == alone for _ in range(3))
    shares = Counter(assign_split(f"videos/{i}.mp4", ratios, seed=3) for i in range(20000))
    assert abs(shares["val"] / 20000 - 0.1) < 0.01
    assert 0 <= unit_hash(0, "x") < 1 and unit_hash(0, "x") != unit_hash(1, "x")
    for bad in ({"train": 0.9, "val": 0.05}, {"train": 1.0, "va/l": 0.0}, {}):
        with pytest.raises(ValueError):
            check_ratios(bad)


@pytest.mark.slow
def test_no_source_video_has_samples_on_both_sides_of_a_split(tmp_path, ray_local):
    out = tmp_path / "run"
    base = ["pipeline=sessions", f"input={REPO / 'manifests' / 'examples.jsonl'}", f"output={out}", "progress=false",
            "scene_split.max_clip_s=2.0", "scene_split.min_clip_s=1.0", "sample_frames.mode=count",
            "sample_frames.count_max_frames=2", "sample_frames.max_side=64"]
    run(compose([*base, "stages=[ingest,scene_split,sample_frames]"]))
    sessions = storage.read_table(str(out / "03-sample_frames"), columns=["source_uri", "kind", "status"]).to_pylist()
    per_video = Counter(r["source_uri"] for r in sessions if r["status"] == "ok" and r["kind"] == "session")
    assert len(per_video) >= 2 and max(per_video.values()) >= 2, per_video  # several sessions per video
    # The first seed that puts the videos on both sides, so the check below has two sides to compare.
    seed = next(s for s in range(100) if len({assign_split(v, RATIOS, s) for v in per_video}) == 2)

    cfg = compose([*base, f"shard.splits={json.dumps(RATIOS)}", f"shard.split_seed={seed}", "shard.bucket=false"])
    run_stage("shard", cfg, str(out / "03-sample_frames"), str(out / "04-shard"))

    sharded = storage.read_table(str(out / "04-shard"), columns=["sample_id", "source_uri", "status", "split", "shard"])
    rows = [r for r in sharded.to_pylist() if r["status"] == "ok"]
    assert len(rows) == sum(per_video.values())
    sides: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        sides[row["source_uri"]].add(row["split"])
        assert Path(row["shard"]).name.startswith(f"{row['split']}-")  # shards are written per split
    assert all(len(s) == 1 for s in sides.values()), sides
    assert set().union(*sides.values()) == set(RATIOS)  # both sides hold samples

    card = json.loads((out / "shards" / "_dataset.json").read_text())
    assert card["splits"] == dict(Counter(r["split"] for r in rows))
    assert sum(card["splits"].values()) == card["num_samples"] == len(rows)
    assert card["split_by"] == {"key": "source_uri", "seed": seed, "ratios": RATIOS}
    assert {s["split"] for s in card["shards"]} == set(RATIOS)
    tars = sorted(p.name for p in (out / "shards").glob("*.tar"))
    assert {t.split("-")[0] for t in tars} == set(RATIOS)
