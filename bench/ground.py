"""Benchmark `ground`'s model work: Grounding DINO + SAM2 on batches of frames vs one frame at a time.

    python bench/ground.py [--media DIR] [--per-video 8] [--batch 8] [--threshold 0.03] [--repeat 2]

Real frames: `--per-video` frames spread over every video under DIR/videos, JPEG-encoded and decoded
as the stage sees them (each video keeps its own size). Each frame is searched for two queries.
In one run, on the same frames, with the same loaded models (tiny random ones by default):
  (a) baseline: detect + segment with batch_size 1, one frame per call;
  (b) ours: detect + segment with batch_size `--batch`, all frames in one call each (the backends
      group same-size frames, as `ground` does with a batch of sessions).
The tiny detector's scores are random, so a low threshold makes it report boxes and SAM2 does real
work; both runs must find the same boxes. Prints frames/s of both and ours/baseline.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from frames import spread_frames  # noqa: E402  (bench/, the script's own directory)

QUERIES = ["a car", "a person in a jacket"]


def real_frames(videos: Path | list[Path], per_video: int, max_side: int | None) -> list[np.ndarray]:
    """`per_video` evenly spaced frames of each video, through a JPEG round trip (RGB uint8)."""
    from curation.media.jpeg import encode_jpeg

    frames = []
    for bgr in spread_frames(videos, per_video):
        if max_side and max(bgr.shape[:2]) > max_side:
            scale = max_side / max(bgr.shape[:2])
            bgr = cv2.resize(bgr, (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        jpeg = encode_jpeg(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), 95)
        frames.append(cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return frames


def detect_and_segment(detector, segmenter, frames: list[np.ndarray], per_call: int) -> tuple[float, int]:
    """(seconds, boxes) for the whole frame list, `per_call` frames handed to each backend call."""
    t0 = time.perf_counter()
    boxes = 0
    for start in range(0, len(frames), per_call):
        chunk = frames[start:start + per_call]
        found = detector.detect(chunk, [QUERIES] * len(chunk))
        masks = segmenter.segment(chunk, [[d.box for d in f] for f in found])
        boxes += sum(len(m) for m in masks)
    return time.perf_counter() - t0, boxes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--media", type=Path, default=None, help="media root holding videos/ (default: the bundled media)")
    parser.add_argument("--per-video", type=int, default=8, help="frames taken from each video")
    parser.add_argument("--max-side", type=int, default=None, help="shrink frames to this longer side (sample_frames.max_side)")
    parser.add_argument("--batch", type=int, default=8, help="batch size of (b)")
    parser.add_argument("--threshold", type=float, default=0.03, help="box and text threshold (low: the tiny detector is random)")
    parser.add_argument("--detector", default="tiny:grounding-dino")
    parser.add_argument("--segmenter", default="tiny:sam2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of (a) and (b), interleaved; the fastest of each is kept")
    args = parser.parse_args()

    os.environ.setdefault("CURATE_CACHE", tempfile.mkdtemp(prefix="curate-bench-"))
    import torch

    from curation.backends.detect import DetectorConfig, GroundingDinoDetector
    from curation.backends.models import resolve_model
    from curation.backends.segment import Sam2Segmenter, SegmenterConfig

    t0 = time.perf_counter()
    for ref in (args.detector, args.segmenter):
        resolve_model(ref)
    build_s = time.perf_counter() - t0
    if args.media:
        videos = args.media / "videos"
    else:
        import bundled

        videos = sorted(bundled.videos().values())
    frames = real_frames(videos, args.per_video, args.max_side)
    if not frames:
        print(f"no frames under {args.media / 'videos' if args.media else 'the bundled media'}", file=sys.stderr)
        return 1
    thresholds = dict(box_threshold=args.threshold, text_threshold=args.threshold)
    runs = {}
    for name, batch in (("baseline", 1), ("ours", args.batch)):
        detector = GroundingDinoDetector(DetectorConfig(model=args.detector, batch_size=batch, device=args.device, **thresholds))
        segmenter = Sam2Segmenter(SegmenterConfig(model=args.segmenter, batch_size=batch, device=args.device))
        runs[name] = (detector, segmenter, 1 if batch == 1 else len(frames))
    detect_and_segment(*runs["ours"][:2], frames[:4], 4)  # warm-up: first-call allocations, lazy inits
    best = {name: float("inf") for name in runs}
    boxes = {}
    for _ in range(args.repeat):
        for name, (detector, segmenter, per_call) in runs.items():
            seconds, boxes[name] = detect_and_segment(detector, segmenter, frames, per_call)
            best[name] = min(best[name], seconds)
    if boxes["ours"] != boxes["baseline"]:
        print(f"WARNING: batched run found {boxes['ours']} boxes, one-at-a-time {boxes['baseline']}")

    sizes = sorted({f"{f.shape[1]}x{f.shape[0]}" for f in frames})
    device = runs["ours"][0].device
    print(f"frames: {len(frames)} real frames ({args.per_video} per video, JPEG round trip), sizes {', '.join(sizes)}")
    print(f"models: detector {args.detector}, segmenter {args.segmenter} on {device}, torch threads {torch.get_num_threads()}, "
          f"best of {args.repeat} rounds")
    if args.detector.startswith("tiny:") or args.segmenter.startswith("tiny:"):
        print(f"note: tiny RANDOM-WEIGHT models (built/resolved in {build_s:.1f} s); box/text threshold {args.threshold} "
              f"so the random detector yields boxes: {boxes['ours']} boxes, {boxes['ours'] / len(frames):.1f} per frame, all segmented")
    print(f"(a) baseline, batch 1       {best['baseline']:7.2f} s  {len(frames) / best['baseline']:7.1f} frames/s")
    print(f"(b) ours, batch {args.batch:<3}         {best['ours']:7.2f} s  {len(frames) / best['ours']:7.1f} frames/s")
    print(f"ours/baseline: {best['baseline'] / best['ours']:.2f}x frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
