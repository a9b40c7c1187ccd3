"""The session shards the trainer's VINCIE tests read (tests/fixtures/session_shards.py), as the real
sessions pipeline writes them: read back with WebDataset, without our code, they hold frames,
per-turn instructions and camera labels, and frame-size region-of-edit masks for every turn, some
of them found."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.labels.camera import CAMERA_LABELS
from curation.regions.roe import decode_mask_png

from tests.fixtures.session_shards import build_session_shards

pytestmark = pytest.mark.slow
FRAME = re.compile(r"^frame_(\d+)\.jpg$")
MASK = re.compile(r"^mask_(\d+)_(src|tgt)\.png$")


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local) -> Path:
    return build_session_shards(tmp_path_factory.mktemp("session-shards"))


@pytest.fixture(scope="module")
def samples(shards) -> list[dict]:
    import webdataset as wds

    urls = sorted(str(p) for p in shards.glob("*.tar"))
    assert urls, f"no tars in {shards}"
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def frame_sizes(sample: dict) -> set[tuple[int, int]]:
    """(height, width) of every frame_<i>.jpg of a sample."""
    sizes = set()
    for name in sample:
        if FRAME.match(name):
            with Image.open(io.BytesIO(sample[name])) as image:
                sizes.add((image.height, image.width))
    return sizes


def test_the_shards_dir_holds_tars_an_index_and_a_card_of_sessions(shards, samples):
    card = json.loads((shards / "_dataset.json").read_text())
    assert card["counts_by_kind"] == {"session": card["num_samples"]} and card["num_samples"] == len(samples) >= 2
    index = pq.read_table(shards / "index.parquet").to_pylist()
    assert sorted(r["sample_id"] for r in index) == sorted(s["__key__"] for s in samples)
    assert all(json.loads(s["json"])["kind"] == "session" for s in samples)


def test_each_session_has_its_frames_and_a_turn_per_adjacent_pair(samples):
    instructions = set()
    for sample in samples:
        frames = sorted(int(m.group(1)) for m in map(FRAME.match, sample) if m)
        assert frames == list(range(len(frames))) and len(frames) >= 3, sample["__key__"]
        assert len(frame_sizes(sample)) == 1  # one size per session
        turns = json.loads(sample["turns.json"])
        assert [t["index"] for t in turns] == list(range(len(frames) - 1))
        for turn in turns:
            assert {"index", "instruction", "camera", "roe"} <= set(turn)
            assert isinstance(turn["instruction"], str) and turn["instruction"].strip()
            assert turn["roe"] in ("found", "none")
            instructions.add(turn["instruction"])
        assert sample["txt"].decode().splitlines() == [t["instruction"] for t in turns]
    assert len(instructions) >= 2  # the scripted VLM words each frame pair's instruction from its images


def test_every_turn_has_frame_size_masks_and_found_ones_are_not_empty(samples):
    found = 0
    for sample in samples:
        ((height, width),) = frame_sizes(sample)
        turns = {t["index"]: t for t in json.loads(sample["turns.json"])}
        masks = {(int(m.group(1)), m.group(2)): sample[m.string] for m in map(MASK.match, sample) if m}
        assert set(masks) == {(k, side) for k in turns for side in ("src", "tgt")}, sample["__key__"]
        for (k, _), data in masks.items():
            mask = decode_mask_png(data)
            assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
            if turns[k]["roe"] == "none":
                assert not mask.any()
        for k, turn in turns.items():
            if turn["roe"] == "found":
                found += 1
                assert turn["roe_detections"] and turn["roe_queries"]
                assert any(decode_mask_png(masks[(k, side)]).any() for side in ("src", "tgt"))
    assert found >= 1, "the fixture promises at least one turn with roe=found"


def test_camera_labels_are_vincies_and_not_all_none(samples):
    cameras = [t["camera"] for s in samples for t in json.loads(s["turns.json"])]
    assert set(cameras) <= set(CAMERA_LABELS)
    assert any(c != "none" for c in cameras)
