"""The trainer's streaming loader (curation/train/data.py) against raw tar iteration of the same shards.

Shards: written with the shard stage's own member and tar code (`sample_members`, `write_tar`) from
the media bundled in the repository (examples/media, tests/data): every photo as a pair (source
and target: neighbouring photos), each video's first `--clip-frames` frames as a triplet (src.mp4 and tgt.mp4 re-encoded to H.264),
and sessions of 4 JPEG frames from each video. `--repeat` copies the set under new keys.

Measured, in the same run:
  raw      - `webdataset.tarfile_samples` over the shards: every member's bytes read, nothing
             decoded. The floor a loader cannot beat; it says how much time decoding adds.
  loader   - `build_loader` with 0, 1 and 2 DataLoader workers (then each group alone, 0 workers): decode (PIL draft / PyAV scaling),
             resize to buckets, crop, collate to uint8 tensors; examples/s over `--batches` batches
             after a warm-up batch per worker (a 4-frame session is 3 examples, one per turn; a
             triplet is one example of `--clip-frames` frames).
The ratio loader/raw is printed. Compare the loader's examples/s with the trainer's own (the
`samples_per_s` of metrics.jsonl): the smaller one is the bottleneck.

    .venv/bin/python bench/loader.py [--resolution 256] [--batch-size 4] [--batches 60] [--repeat 2]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from itertools import islice
from pathlib import Path

import av
import numpy as np
from PIL import Image

from curation.shards.writer import MediaOptions, sample_members, write_tar
from curation.train.data import DataConfig, build_loader

VIDEO_SUFFIXES = {".mp4", ".mkv"}


def session_frames(path: Path, count: int) -> list[bytes]:
    """Every 10th frame of a video, as JPEG, until `count` (what a session's frame_<i>.jpg hold)."""
    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % 10 == 0:
                buf = io.BytesIO()
                Image.fromarray(frame.to_ndarray(format="rgb24")).save(buf, "JPEG", quality=90)
                frames.append(buf.getvalue())
            if len(frames) == count:
                break
    return frames


def build_shards(out: Path, clip_frames: int, repeat: int) -> dict[str, int]:
    import bundled  # bench/, the script's own directory

    photos = bundled.images()
    videos = sorted(p for p in bundled.videos().values() if p.suffix.lower() in VIDEO_SUFFIXES)
    media = MediaOptions(max_frames=clip_frames, crf=23)
    base: list[tuple[str, dict[str, bytes]]] = []
    for i, photo in enumerate(photos):
        row = dict(sample_id=f"pair{i}", kind="pair", edit_kind="pair", source_uri=str(photo),
                   target_uri=str(photos[(i + 1) % len(photos)]), instruction=f"edit photo {i}", parent_ids=[])
        base.append((row["sample_id"], sample_members(row, media)))
    for i, video in enumerate(videos):
        row = dict(sample_id=f"triplet{i}", kind="triplet", edit_kind="triplet", source_uri=str(video),
                   target_uri=str(video), instruction=f"edit clip {i}", parent_ids=[])
        base.append((row["sample_id"], sample_members(row, media)))
        frames = session_frames(video, 4)  # the members `sample_members` writes for an annotated session
        turns = [{"index": k, "instruction": f"turn {k}", "camera": "none"} for k in range(len(frames) - 1)]
        members = {f"frame_{k}.jpg": f for k, f in enumerate(frames)}
        members["turns.json"] = json.dumps(turns).encode()
        members["json"] = json.dumps({"kind": "session"}).encode()
        base.append((f"session{i}", members))
    samples = [(f"{key}r{r}", members) for r in range(repeat) for key, members in base]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(samples))
    per_shard = 40
    for s in range(0, len(samples), per_shard):
        write_tar(str(out / f"train-{s // per_shard:06d}.tar"), [samples[i] for i in order[s:s + per_shard]])
    kinds = {"pair": len(photos) * repeat, "triplet": len(videos) * repeat, "session": len(videos) * repeat}
    return kinds


def raw_rate(out: Path, passes: int = 3) -> float:
    import webdataset as wds

    urls = [{"url": str(p)} for p in sorted(out.glob("*.tar"))]
    best = 0.0
    for _ in range(passes):
        start, count = time.perf_counter(), 0
        for sample in wds.tarfile_samples(urls):
            count += sum(len(v) for k, v in sample.items() if not k.startswith("__")) > 0
        best = max(best, count / (time.perf_counter() - start))
    return best


def loader_rate(out: Path, workers: int, args: argparse.Namespace,
                mix: dict[str, float] | None = None) -> tuple[float, dict[str, int]]:
    config = DataConfig(shards=str(out), resolution=args.resolution, batch_size=args.batch_size, num_workers=workers,
                        mix=mix or {"image": 2.0, "video": 1.0, "reference": 0.0},
                        shuffle_buffer=64, max_frames=args.clip_frames)
    loader, _ = build_loader(config)
    batches = iter(loader)
    for _ in range(max(1, workers)):  # warm-up: worker start, first shard open
        next(batches)
    start, examples = time.perf_counter(), 0
    groups: dict[str, int] = {}
    for batch in islice(batches, args.batches):
        examples += len(batch["keys"])
        groups[batch["group"]] = groups.get(batch["group"], 0) + len(batch["keys"])
    return examples / (time.perf_counter() - start), groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--clip-frames", type=int, default=17)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        kinds = build_shards(out, args.clip_frames, args.repeat)
        size = sum(p.stat().st_size for p in out.glob("*.tar")) / 2**20
        print(f"shards: {len(list(out.glob('*.tar')))} tars, {size:.0f} MiB, samples by kind {kinds}")
        raw = raw_rate(out)
        print(f"raw tar iteration (baseline): {raw:8.1f} samples/s")
        for workers in (0, 1, 2):
            rate, groups = loader_rate(out, workers, args)
            print(f"loader, {workers} workers:       {rate:8.1f} examples/s  = {rate / raw:.3f} x raw   "
                  f"(res {args.resolution}, batch {args.batch_size}, examples by group {groups})")
        for group in ("image", "video"):  # where the time goes: each group alone, in-process
            rate, _ = loader_rate(out, 0, args, {"image": float(group == "image"), "video": float(group == "video"),
                                                 "reference": 0.0})
            print(f"  {group} only, 0 workers:     {rate:8.1f} examples/s")


if __name__ == "__main__":
    main()
