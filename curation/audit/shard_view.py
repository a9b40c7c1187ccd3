"""A sample inside the shards: which tar holds it, its members, and the examples the trainer
makes of it (`curation.train.examples.ExampleMaker`, the trainer's own decoding, centre crop).

The tar and byte range come from `shards/index.parquet`; only that range is read.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from curation.core import storage

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ShardEntry:
    sample_id: str
    shard: str      # path relative to the shards dir
    offset: int
    length: int
    kind: str | None


def shards_dir(run_dir: str, shard_run: dict[str, Any]) -> str:
    """Where the shard stage wrote (its `_run.json` says; `<run>/shards` by default)."""
    return shard_run.get("shards_dir") or storage.join(run_dir, "shards")


def lookup(cursor: Any, shards: str, sample_id: str) -> ShardEntry | None:
    index = storage.join(shards, "index.parquet")
    if "://" in shards or not storage.exists(index):
        return None
    found = cursor.execute('SELECT sample_id, shard, "offset", length, kind FROM read_parquet(?) '
                           "WHERE sample_id = ?", [index, sample_id]).fetchone()
    return ShardEntry(*found) if found else None


@lru_cache(maxsize=16)  # a shard page and each of its images read the same sample
def read_members(shards: str, entry: ShardEntry) -> dict[str, bytes]:
    """The sample's tar members as WebDataset groups them: {"__key__": key, ext: bytes}. Cached: do not mutate."""
    from webdataset.tariterators import base_plus_ext

    fs, path = storage.resolve(storage.join(shards, entry.shard))
    with fs.open_input_file(path) as f:
        f.seek(entry.offset)
        data = f.read(entry.length)
    sample: dict[str, Any] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = base_plus_ext(member.name)
            sample.setdefault("__key__", key)
            if key == sample["__key__"]:
                sample[ext] = tar.extractfile(member).read()
    return sample


def member_rows(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """What the shard page lists per member: name, size, and its text when it is small text."""
    rows = []
    for ext in sorted(k for k in sample if k != "__key__"):
        data: bytes = sample[ext]
        text = None
        if ext.endswith(("json", "txt")):
            text = data.decode("utf-8", "replace")
            if ext.endswith("json"):
                try:
                    text = json.dumps(json.loads(text), indent=2)
                except ValueError:
                    pass
        rows.append({"ext": ext, "bytes": len(data), "text": text, "image": ext.endswith(IMAGE_EXTS)})
    return rows


@dataclass(frozen=True)
class TrainerView:
    """The examples the trainer makes of a sample, as the shard page shows them."""

    examples: tuple[dict[str, Any], ...]  # index, instruction, group, target shape, reference count
    images: tuple[bytes, ...]             # one JPEG per example (source | target | references)
    problem: str | None                   # why the trainer would skip the sample, if it would


@lru_cache(maxsize=16)  # the page and each example image need the same decode
def trainer_view(shards: str, entry: ShardEntry) -> TrainerView:
    """Decode the sample with the trainer's own ExampleMaker (default data config, centre crop, epoch 0)."""
    from curation.train.data_config import DataConfig
    from curation.train.examples import ExampleMaker

    try:
        examples = ExampleMaker(DataConfig(shards=shards, random_crop=False))(read_members(shards, entry), 0)
    except Exception as e:  # noqa: BLE001 - the page shows why the trainer would skip it
        return TrainerView((), (), f"{type(e).__name__}: {e}")
    info = tuple(_describe(i, ex) for i, ex in enumerate(examples))
    return TrainerView(info, tuple(example_jpeg(ex) for ex in examples), None)


def _describe(index: int, example: Any) -> dict[str, Any]:
    if hasattr(example, "segments"):  # a whole-session sequence: targets of every turn, the rest context
        height, width = example.segments[0].pixels.shape[1:3]
        context = sum(not s.noisy for s in example.segments)
        return {"index": index, "instruction": example.instruction, "group": example.group,
                "shape": [len(example.segments), height, width, 3], "references": context,
                "targets": len(example.segments) - context}
    return {"index": index, "instruction": example.instruction, "group": example.group,
            "shape": list(example.target.shape), "references": len(example.reference)}


def example_jpeg(example: Any) -> bytes:
    """source | target | references (middle frame of each), the instruction under them; a session
    sequence shows its segments in order, each target labelled with its task."""
    def middle(frames: np.ndarray) -> np.ndarray:
        return frames[frames.shape[0] // 2]

    if hasattr(example, "segments"):
        from curation.train.sessions import TASKS

        tiles = [s.pixels[0] for s in example.segments]
        label = " | ".join(TASKS[s.task] if s.noisy else ("mask" if s.kind else f"frame {s.turn}") for s in example.segments)
    else:
        tiles = [middle(example.source), middle(example.target)] + [r for r in example.reference]
        label = f"source | target | {len(example.reference)} reference(s)"
    row = np.concatenate(tiles, axis=1)
    caption = Image.new("RGB", (row.shape[1], 16), "white")
    ImageDraw.Draw(caption).text((3, 2), label, fill="black")
    out = io.BytesIO()
    Image.fromarray(np.concatenate([row, np.asarray(caption)], axis=0)).save(out, "JPEG", quality=90)
    return out.getvalue()


def member_jpeg(sample: dict[str, Any], ext: str) -> bytes | None:
    if ext not in sample or not ext.endswith(IMAGE_EXTS):
        return None
    image = Image.open(io.BytesIO(sample[ext])).convert("RGB")
    image.thumbnail((640, 640))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=88)
    return out.getvalue()
