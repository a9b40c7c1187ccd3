"""The shard contract (DESIGN.md §5): which tar members a manifest row becomes, and writing them.

This module is all the trainer-facing format knows about; it never imports a stage.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core import media_store
from curation.core.schema import media_ext

SHARD_SCHEMA_VERSION = 1
# Columns never copied into the `json` member: media bytes (they are members of their own) and
# per-frame timestamp lists that only the decoder needs.
# `turns` and `roe` have their own members (turns.json, mask_<k>_{src,tgt}.png).
_NOT_METADATA = {"frames", "frame_pts", "masks", "reference", "embedding", "thumbnail", "turns", "roe",
                 "mask_src", "mask_tgt", "src_frame", "tgt_frame"}
# Kinds made of a source and a target (and, for quads, a reference); `edit_kind` says whether the
# media are images (pair) or videos (triplet).
EDIT_KINDS = ("pair", "triplet", "quad")
# Fields every sample's json has, null when no stage wrote them (`caption`: the caption stage, which
# a pipeline may leave out): a field only some samples have splits the schema HF `datasets` infers.
ALWAYS_IN_METADATA = ("caption",
                      # provenance: where a sample came from, under which licence, what made its generated media
                      "dataset", "category", "category_native", "licence", "generator", "dataset_captions")
EXIF_ORIENTATION = 0x0112
MAX_IMAGE_PIXELS = 1 << 27
_RESOLUTIONS = (144, 240, 360, 480, 576, 720, 1080, 1440, 2160)
_ASPECTS = {"1x1": 1.0, "4x3": 4 / 3, "3x4": 3 / 4, "16x9": 16 / 9, "9x16": 9 / 16, "21x9": 21 / 9, "9x21": 9 / 21}


def metadata(row: dict[str, Any]) -> dict[str, Any]:
    """The versioned `json` member: everything a trainer or auditor needs that is not media."""
    meta = {
        k: _maps_as_dicts(v)
        for k, v in row.items()
        if k not in _NOT_METADATA and not _is_media(v) and not k.startswith("_")
    }
    meta.update({k: None for k in ALWAYS_IN_METADATA if k not in meta})
    meta["schema_version"] = SHARD_SCHEMA_VERSION
    meta["lineage"] = row.get("parent_ids") or []
    return meta


def _is_media(value: Any) -> bool:
    """Encoded media (a frame, a mask, a clip) or a list of them: members of their own, or not
    shipped at all (a clip's per-frame masks), never text in the json."""
    if isinstance(value, (bytes, bytearray)):
        return True
    return isinstance(value, list) and bool(value) and isinstance(value[0], (bytes, bytearray))


def _maps_as_dicts(value: Any) -> Any:
    """Arrow maps arrive from `to_pylist` as lists of (key, value) tuples, at any depth (e.g. each
    frame judgement's `scores`); JSON readers (HF `datasets` among them) need objects there."""
    if isinstance(value, list):
        if value and all(isinstance(item, tuple) and len(item) == 2 for item in value):
            return {k: _maps_as_dicts(v) for k, v in value}
        return [_maps_as_dicts(item) for item in value]
    if isinstance(value, dict):
        return {k: _maps_as_dicts(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class MediaOptions:
    """How edit media become members: video clips are re-encoded to H.264, capped in frames."""

    max_frames: int = 81  # Kiwi-Edit and Wan-style trainers take at most 81 frames
    crf: int = 18  # x264 quality; 18 is visually lossless for training data


def sample_members(row: dict[str, Any], media: MediaOptions = MediaOptions()) -> dict[str, bytes]:
    """Tar members (extension -> bytes) for one sample, by kind. Raises ValueError if media is
    missing, or a decoder's StageError if an edit's files cannot be read."""
    members: dict[str, bytes] = {}
    if row.get("instruction"):
        members["txt"] = str(row["instruction"]).encode()
    frames = row.get("frames")
    if row["kind"] == "session":
        if not frames:
            raise ValueError("session has no frames")
        for i, jpeg in enumerate(frames):
            members[f"frame_{i}.jpg"] = jpeg
        if row.get("turns"):
            members.update(session_turn_members(row))
    elif row["kind"] in EDIT_KINDS:
        members.update(edit_members(row, media))
    else:
        raise ValueError(f"kind {row['kind']!r} has no shard layout (shardable: session, {', '.join(EDIT_KINDS)})")
    members["json"] = json.dumps(metadata(row), sort_keys=True, default=str).encode()
    return members


def session_turn_members(row: dict[str, Any]) -> dict[str, bytes]:
    """`turns.json` (per turn: instruction, camera label, parsed annotation, RoE outcome and boxes)
    and, once `ground` ran, `mask_<k>_src.png` / `mask_<k>_tgt.png` for every turn k.

    Every turn gets both masks, all-zero when no region of edit was found (`roe: none`): members
    are then the same for every session of a frame count, which HF `datasets` requires, and
    `turns.json` says which masks are real.
    """
    members: dict[str, bytes] = {}
    roe_by_turn = {r["turn"]: r for r in row.get("roe") or []}
    turns = []
    for turn in row["turns"]:
        k = turn["index"]
        entry = {
            "index": k,
            "instruction": turn.get("instruction"),
            "camera": turn.get("camera"),
            "camera_raw": turn.get("camera_raw"),
            "annotation": json.loads(turn["annotation"]) if turn.get("annotation") else None,
            "error": turn.get("error"),
        }
        if row.get("roe") is not None:
            roe = roe_by_turn.get(k) or {"outcome": "unannotated", "queries": [], "detections": []}
            entry["roe"] = roe["outcome"]
            entry["roe_queries"] = roe.get("queries") or []
            entry["roe_detections"] = roe.get("detections") or []
            empty = None
            for side in ("src", "tgt"):
                mask = roe.get(f"{side}_mask")
                if mask is None:
                    empty = empty or zero_mask_png(int(row["frame_width"]), int(row["frame_height"]))
                    mask = empty
                members[f"mask_{k}_{side}.png"] = mask
        turns.append(entry)
    members["turns.json"] = json.dumps(turns, ensure_ascii=False).encode()
    instructions = [t["instruction"] for t in turns if t["instruction"]]
    if instructions:
        members["txt"] = "\n".join(instructions).encode()
    return members


def edit_members(row: dict[str, Any], media: MediaOptions) -> dict[str, bytes]:
    """`src`/`tgt` as `.jpg` (pairs: the original JPEG bytes when they are JPEG) or `.mp4` (triplets:
    both clips streamed through H.264 re-encoding, cut to the same frame count <= max_frames), `ref.png`
    for quads, and `mask_src.png`/`mask_tgt.png` once `ground_edit` ran (all-zero for the side it
    did not ground, so every sample of a kind has the same members, as HF `datasets` requires)."""
    from curation.media.edit_media import transcode_clip_pair

    members: dict[str, bytes] = {}
    if edit_media_kind(row) == "pair":
        members["src.jpg"] = image_as_jpeg(row["source_uri"])
        members["tgt.jpg"] = image_as_jpeg(row["target_uri"])
    else:
        clip = transcode_clip_pair(row["source_uri"], row["target_uri"], media.max_frames, crf=media.crf)
        members["src.mp4"], members["tgt.mp4"] = clip.source, clip.target
    if row["kind"] == "quad":
        if not row.get("reference"):
            raise ValueError("quad has no reference image")
        members["ref.png"] = row["reference"]
    if row.get("edit_boxes") is not None:
        for side, (w, h) in (("src", (row.get("width"), row.get("height"))),
                             ("tgt", (row.get("target_width"), row.get("target_height")))):
            mask = row.get(f"mask_{side}")
            members[f"mask_{side}.png"] = mask if mask is not None else zero_mask_png(int(w), int(h))
    return members


def edit_media_kind(row: dict[str, Any]) -> str:
    """pair (images) or triplet (videos) for any edit row, quads included."""
    kind = row.get("edit_kind") or row["kind"]
    if kind not in ("pair", "triplet"):
        raise ValueError(f"edit row of kind {row['kind']!r} has no edit_kind (pair or triplet)")
    return kind


def image_as_jpeg(uri: str, quality: int = 95) -> bytes:
    """An upright JPEG file's own bytes (no re-encoding loss); anything else (other formats, or a
    JPEG whose EXIF says to rotate it, which readers that ignore EXIF would show sideways while
    masks were made upright) is decoded upright and encoded once."""
    from PIL import Image

    from curation.core import storage
    from curation.media.edit_media import load_image
    from curation.media.jpeg import encode_jpeg

    data = storage.read_bytes(uri)
    if data[:3] == b"\xff\xd8\xff":
        with Image.open(io.BytesIO(data)) as image:
            if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
                return data
    # Ingest already refused oversized headers; this bound only guards against a file swapped since.
    return encode_jpeg(load_image(uri, max_pixels=MAX_IMAGE_PIXELS), quality)


def zero_mask_png(width: int, height: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.zeros((height, width), np.uint8))
    if not ok:
        raise ValueError("PNG encoder refused an empty mask")
    return buf.tobytes()


# Bytes per sample beyond its media: the json (and txt) members plus tar headers and padding.
_METADATA_ALLOWANCE = 4096


def estimated_tar_bytes(table: pa.Table, run_dir: str | None = None) -> np.ndarray:
    """Per-row bytes the samples will take in a tar, without reading any media: each binary value,
    or each item of a list of binaries, is one member (its Arrow buffer length); so is each media
    reference (its file's size, listed from the media store; relative ones resolve under `run_dir`)."""
    total = np.full(table.num_rows, _METADATA_ALLOWANCE, dtype=np.int64)
    for field in table.schema:
        column = table.column(field.name)
        is_list = pa.types.is_list(field.type)
        value_type = field.type.value_type if is_list else field.type
        if media_ext(field) is not None and pa.types.is_string(value_type):
            refs = (pc.list_flatten(column) if is_list else column).to_pylist()
            found = media_store.sizes([r for r in refs if r], run_dir)
            missing = [r for r in refs if r and r not in found]
            if missing:
                raise FileNotFoundError(f"{len(missing)} media files of column {field.name} are missing, e.g. "
                                        f"{media_store.resolve(missing[0], run_dir)}")
            lengths = np.array([found[r] if r else 0 for r in refs], np.int64)
        elif pa.types.is_binary(value_type) or pa.types.is_large_binary(value_type):
            lengths = pc.fill_null(pc.binary_length(pc.list_flatten(column) if is_list else column), 0).to_numpy()
        else:
            continue
        rows = pc.list_parent_indices(column).to_numpy() if is_list else np.arange(table.num_rows)
        np.add.at(total, rows, 512 + -(-lengths // 512) * 512)
    return total


def bucket_key(width: int | None, height: int | None, num_frames: int | None) -> str:
    """Resolution / aspect / frame-count bucket, e.g. `r720_a16x9_f4`, so a trainer can stream one shape."""
    width, height = width or 0, height or 0
    short = min(width, height)
    resolution = max((r for r in _RESOLUTIONS if r <= short), default=_RESOLUTIONS[0])
    aspect = width / height if height else 1.0
    aspect_name = min(_ASPECTS, key=lambda k: abs(_ASPECTS[k] - aspect))
    return f"r{resolution}_a{aspect_name}_f{num_frames or 1}"


def write_tar(path: str, samples: list[tuple[str, dict[str, bytes]]]) -> list[tuple[str, int, int]]:
    """Write `(key, members)` samples to a tar; returns (key, byte offset of its first header, span bytes).

    Members of a sample are contiguous and named `<key>.<ext>` as WebDataset expects; metadata
    (owner, mode, mtime) is fixed so the same input writes byte-identical shards.
    """
    index: list[tuple[str, int, int]] = []
    with open(path, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            if "." in key or "/" in key:
                raise ValueError(f"sample key {key!r} must not contain '.' or '/' (WebDataset splits on them)")
            start = raw.tell()
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mode = 0o444
                info.uname = info.gname = "curate"
                info.mtime = 0
                tar.addfile(info, io.BytesIO(data))
            index.append((key, start, raw.tell() - start))
    return index
