"""A held-out set (a benchmark) as vectors, for the dedup stage's leakage check.

It is given as a manifest directory (`part-*.parquet`, e.g. a benchmark ingested with curate) or
as WebDataset shards (a directory holding `*.tar`, a tar file, or a brace/glob pattern). Each
held-out sample is represented the way training samples are (`curation.media.representative`):
a manifest row by its representative image, a shard sample by its `ref.png`, else its target
(`tgt.jpg`, first frame of `tgt.mp4`), else its middle `frame_<i>.jpg`. Vectors a manifest
already carries are reused when the same embedder made them from the same image.

Benchmarks are small (thousands of samples), so they are embedded on the driver, once per run.
"""

from __future__ import annotations

import glob
import io
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc

from curation.core import layout, media_store, storage
from curation.media.jpeg import decode_image
from curation.media.representative import pixel_hash

EMBED_BATCH = 64


@dataclass
class ReferenceSet:
    ids: list[str]  # held-out sample ids (shard keys)
    vectors: np.ndarray  # (n, d) float16, unit rows
    hashes: list[str | None]  # pixel hashes (None where the vector was reused without one)


def load_reference_set(uri: str, embed_rows: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
                       embed_images: Callable[[list[np.ndarray]], np.ndarray]) -> ReferenceSet:
    """Vectors of every held-out sample. `embed_rows` is the dedup stage's own row embedder (reuse
    included), `embed_images` its embedder for decoded shard images: one model for both sides."""
    if os.path.isdir(uri) and layout.manifest_parts(uri):
        return _from_manifest(uri, embed_rows)
    tars = _tar_files(uri)
    if not tars:
        raise ValueError(f"dedup.reference_set={uri!r} is neither a manifest directory (part-*.parquet) nor WebDataset shards (*.tar)")
    return _from_shards(tars, embed_images)


def _from_manifest(uri: str, embed_rows: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> ReferenceSet:
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    hashes: list[str | None] = []
    for part in layout.manifest_parts(uri):
        table = storage.read_table(part, filter=pc.field("status") == "ok")
        rows = media_store.inlined_rows(table, layout.manifest_run_dir(part))
        for start in range(0, len(rows), EMBED_BATCH):
            for row in embed_rows(rows[start:start + EMBED_BATCH]):
                if row.get("status") != "ok":
                    raise ValueError(f"held-out sample {row['sample_id']} in {uri} cannot be embedded: {row.get('reason')}")
                ids.append(row["sample_id"])
                vectors.append(np.asarray(row["embedding"], np.float16))
                hashes.append(row.get("content_hash"))
    return ReferenceSet(ids, _stack(vectors), hashes)


def _from_shards(tars: list[str], embed_images: Callable[[list[np.ndarray]], np.ndarray]) -> ReferenceSet:
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    hashes: list[str | None] = []
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if batch:
            vectors.extend(embed_images([image for _, image in batch]))
            ids.extend(key for key, _ in batch)
            hashes.extend(pixel_hash(image) for _, image in batch)
            batch.clear()

    for key, members in _shard_samples(tars):
        batch.append((key, _shard_image(key, members)))
        if len(batch) >= EMBED_BATCH:
            flush()
    flush()
    return ReferenceSet(ids, _stack(vectors), hashes)


def _tar_files(uri: str) -> list[str]:
    if os.path.isdir(uri):
        return sorted(glob.glob(os.path.join(uri, "**", "*.tar"), recursive=True))
    if uri.endswith(".tar") and os.path.isfile(uri):
        return [uri]
    if "{" in uri:
        import braceexpand

        return sorted(p for pattern in braceexpand.braceexpand(uri) for p in glob.glob(pattern))
    return sorted(glob.glob(uri))


def _shard_samples(tars: list[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    import webdataset as wds

    for sample in wds.WebDataset(tars, shardshuffle=False, empty_check=False):
        yield sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")}


_FRAME = re.compile(r"^frame_(\d+)\.jpg$")


def _shard_image(key: str, members: dict[str, bytes]) -> np.ndarray:
    """The member standing for a shard sample, as the training side's `media=auto` picks it."""
    for name in ("ref.png", "tgt.jpg"):
        if name in members:
            return decode_image(members[name], f"{key}/{name}")
    if "tgt.mp4" in members:
        return _first_video_frame(members["tgt.mp4"], key)
    frames = sorted((int(m.group(1)), name) for name in members if (m := _FRAME.match(name)))
    if frames:
        return decode_image(members[frames[len(frames) // 2][1]], f"{key}/{frames[len(frames) // 2][1]}")
    raise ValueError(f"held-out shard sample {key} has no image member (ref.png, tgt.jpg, tgt.mp4, frame_<i>.jpg)")


def _first_video_frame(data: bytes, key: str) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            return frame.to_ndarray(format="rgb24")
    raise ValueError(f"held-out shard sample {key}: tgt.mp4 has no frame")


def _stack(vectors: list[np.ndarray]) -> np.ndarray:
    if not vectors:
        raise ValueError("the reference set holds no sample")
    return np.stack(vectors).astype(np.float16, copy=False)
