"""Shards for the trainer's tests, written by our own `ingest` and `shard` stages from real media.

- `edits/`: the edit fixture dataset (real photos and the Intel car clip with real pixel edits)
  ingested with the generic adapter and sharded: 5 `pair`s and 2 `triplet`s in one tar.
- `sessions/`: sessions of real frames from the example videos, with per-turn instructions as
  `annotate` writes them, sharded by the shard stage (one tar per 2 sessions).
- `quads/`: pairs of the edit fixture with a reference image (a crop of the target), sharded.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
from omegaconf import OmegaConf
from PIL import Image

from curation import manifest as mf
from curation.config import compose
from curation.runner import run
from stages.shard import Shard

from conftest import EXAMPLES, REPO
from edit_fixtures import build_edit_dataset

SESSION_VIDEOS = ("intel-sample-videos/car-detection.mp4", "intel-sample-videos/bottle-detection.mp4")
SESSION_FRAMES = 3
SESSIONS_PER_VIDEO = 3


def _shard_stage(**overrides) -> Shard:
    options = dict(OmegaConf.load(REPO / "curation/config/stage/shard.yaml"))
    options["resources"] = dict(options["resources"])
    options.update(overrides)
    return Shard(**options)


def _jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _video_frames(path: Path, count: int, step: int) -> list[np.ndarray]:
    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % step == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return frames


def _session_rows() -> list[dict]:
    rows = []
    for video in SESSION_VIDEOS:
        frames = _video_frames(EXAMPLES / video, SESSION_FRAMES * SESSIONS_PER_VIDEO, 15)
        height, width = frames[0].shape[:2]
        for s in range(SESSIONS_PER_VIDEO):
            chosen = frames[s * SESSION_FRAMES:(s + 1) * SESSION_FRAMES]
            name = Path(video).stem
            turns = [{"index": k, "instruction": f"Advance the {name} scene {s}.{k}.", "camera": "none",
                      "camera_raw": "static", "annotation": None, "error": None} for k in range(SESSION_FRAMES - 1)]
            rows.append(dict(sample_id=f"sess{name.replace('-', '')}{s}", parent_ids=[f"clip{name}{s}"], kind="session",
                             source_uri=str(EXAMPLES / video), status="ok", reason=None, stage="annotate",
                             stage_version="1", width=width, height=height, frame_width=width, frame_height=height,
                             frames=[_jpeg(f) for f in chosen], frame_indices=[15 * (s * SESSION_FRAMES + k) for k in range(SESSION_FRAMES)],
                             turns=turns))
    return rows


def _write_manifest(rows: list[dict], where: Path) -> str:
    where.mkdir(parents=True, exist_ok=True)
    mf.write_table_atomic(pa.Table.from_pylist(rows), str(where / "part-00000.parquet"))
    return str(where)


def build_training_shards(root: Path) -> dict[str, Path]:
    """Shards dirs by name: edits (pairs + triplets), sessions, quads. Needs a Ray runtime."""
    build_edit_dataset(root / "edit-data")
    run_dir = root / "edit-run"
    run(compose(["stage=ingest", "ingest.adapter=generic", f"input={root / 'edit-data' / 'edits.jsonl'}",
                 f"output={run_dir}", "progress=false"]))
    cfg = OmegaConf.create({"progress": False})
    _shard_stage(max_frames=17, output_dir=str(root / "edits")).run_sink(str(run_dir / "01-ingest"), str(run_dir / "02-shard"), cfg)

    sessions = _write_manifest(_session_rows(), root / "session-run" / "05-annotate")
    _shard_stage(max_count=2, output_dir=str(root / "sessions")).run_sink(sessions, str(root / "session-run" / "06-shard"), cfg)

    pairs = [r for r in mf.read_table(str(run_dir / "01-ingest")).to_pylist() if r["kind"] == "pair" and r["status"] == "ok"]
    quads = []
    for row in pairs[:3]:
        target = np.asarray(Image.open(row["target_uri"]).convert("RGB"))
        h, w = target.shape[:2]
        buf = io.BytesIO()
        Image.fromarray(target[h // 4: 3 * h // 4, w // 3: 2 * w // 3]).save(buf, "PNG")
        quads.append(dict(row, sample_id="q" + row["sample_id"], kind="quad", edit_kind="pair", reference=buf.getvalue()))
    quad_dir = _write_manifest(quads, root / "quad-run" / "05-reference")
    _shard_stage(output_dir=str(root / "quads")).run_sink(quad_dir, str(root / "quad-run" / "06-shard"), cfg)
    return {"edits": root / "edits", "sessions": root / "sessions", "quads": root / "quads"}


def shard_keys(shards_dir: Path) -> dict[str, str]:
    """sample key -> kind, read from the index our shard stage writes."""
    index = pa.parquet.read_table(shards_dir / "index.parquet").to_pylist()
    return {r["sample_id"]: r["kind"] for r in index}


def dataset_card(shards_dir: Path) -> dict:
    return json.loads((shards_dir / "_dataset.json").read_text())
