"""The trainer's loader on VINCIE session shards: whole-session sequences per second against raw tar
iteration of the same shards.

Shards: written with the shard stage's own member and tar code (`sample_members`, `write_tar`) from
the videos bundled in the repository: sessions of `--short-frames` frames (every 10th frame of each
video, many sessions) and of `--long-frames` frames (one long session per video: VINCIE's sessions
hold up to 20 frames), each turn annotated, with region-of-edit masks as `ground` writes them (a
turn's masks are the moving box of a rectangle here: the loader's cost does not depend on what a
mask shows, only on its PNG size, and these are full-frame PNGs like ground's).

Measured, in the same run:
  raw      - `webdataset.tarfile_samples` over the shards: every member read, nothing decoded (the floor).
  sequence - `build_loader` (data.session.mode=sequence) with 0, 1 and 2 workers: frames and masks decoded,
             cropped to the bucket, planned into sequences (tasks, dropout) and padded: sessions/s.
  turns    - the per-turn examples of the same sessions (mode=turns), examples/s, for comparison.
Printed: sessions/s and their ratio to raw samples/s, for the short and the long sessions apart.

    .venv/bin/python bench/session_loader.py [--resolution 256] [--batches 30] [--repeat 4]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np
from loader import raw_rate, session_frames  # bench/, the script's own directory
from PIL import Image

from curation.shards.writer import sample_members, write_tar
from curation.train.data import DataConfig, build_loader

VIDEO_SUFFIXES = {".mp4", ".mkv"}


def _png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, "PNG")
    return buf.getvalue()


def session_row(key: str, frames: list[bytes]) -> dict:
    """A session row as `ground` leaves it: JPEG frames, annotated turns, a found RoE per turn."""
    width, height = Image.open(io.BytesIO(frames[0])).size
    roe = []
    for k in range(len(frames) - 1):
        masks = []
        for j in (k, k + 1):
            mask = np.zeros((height, width), np.uint8)
            left = (j * width // 10) % (width - width // 4)
            mask[height // 3: 2 * height // 3, left:left + width // 4] = 255
            masks.append(_png(mask))
        roe.append({"turn": k, "outcome": "found", "queries": ["a box"], "detections": [], "src_mask": masks[0],
                    "tgt_mask": masks[1]})
    turns = [{"index": k, "instruction": f"move the box, turn {k}", "camera": "pan-left"} for k in range(len(frames) - 1)]
    return {"sample_id": key, "kind": "session", "frames": frames, "turns": turns, "roe": roe,
            "frame_width": width, "frame_height": height, "parent_ids": []}


def build_shards(out: Path, frames: int, repeat: int, long: bool) -> int:
    import bundled  # bench/, the script's own directory

    samples = []
    for v, video in enumerate(sorted(p for p in bundled.videos().values() if p.suffix.lower() in VIDEO_SUFFIXES)):
        decoded = session_frames(video, frames if long else frames * 8)  # every 10th frame, as JPEG
        chunks = [decoded[:frames]] if long else [decoded[i:i + frames] for i in range(0, len(decoded) - frames + 1, frames)]
        for c, chunk in enumerate(chunks):
            if len(chunk) == frames:
                row = session_row(f"s{v}c{c}", chunk)
                samples.extend((f"{row['sample_id']}r{r}", sample_members(row)) for r in range(repeat))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(samples))
    for s in range(0, len(samples), 16):
        write_tar(str(out / f"train-{s // 16:06d}.tar"), [samples[i] for i in order[s:s + 16]])
    return len(samples)


def loader_rate(out: Path, workers: int, mode: str, args: argparse.Namespace) -> tuple[float, float]:
    """(sessions or examples per second, segments per batch) over `--batches` batches after warm-up."""
    config = DataConfig(shards=str(out), resolution=args.resolution, batch_size=args.batch_size, num_workers=workers,
                        mix={"image": 1.0, "video": 0.0, "reference": 0.0}, shuffle_buffer=32,
                        session={"mode": mode, "max_tokens": 1 << 20})
    loader, _ = build_loader(config)
    batches = iter(loader)
    for _ in range(max(1, workers)):
        next(batches)
    start, count, segments = time.perf_counter(), 0, 0
    for batch in islice(batches, args.batches):
        count += len(batch["keys"])
        segments += batch["frames"].shape[2] if mode == "sequence" else 1
    return count / (time.perf_counter() - start), segments / args.batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--short-frames", type=int, default=4)
    parser.add_argument("--long-frames", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args()
    for label, frames, long in (("short", args.short_frames, False), ("long", args.long_frames, True)):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            count = build_shards(out, frames, args.repeat, long)
            size = sum(p.stat().st_size for p in out.glob("*.tar")) / 2**20
            print(f"{label} sessions: {count} sessions of {frames} frames with RoE masks, "
                  f"{len(list(out.glob('*.tar')))} tars, {size:.0f} MiB")
            raw = raw_rate(out)
            print(f"  raw tar iteration (baseline): {raw:8.1f} sessions/s")
            for workers in (0, 1, 2):
                rate, segments = loader_rate(out, workers, "sequence", args)
                print(f"  sequences, {workers} workers:     {rate:8.2f} sessions/s = {rate / raw:.4f} x raw "
                      f"({segments:.1f} segments per padded batch of {args.batch_size}, res {args.resolution})", flush=True)
            rate, _ = loader_rate(out, 0, "turns", args)
            print(f"  per-turn examples, 0 workers: {rate:8.2f} examples/s = {rate / (frames - 1):.2f} sessions/s", flush=True)


if __name__ == "__main__":
    main()
