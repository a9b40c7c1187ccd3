"""Benchmark the `temporal` object remover against the floor of decoding and re-encoding the same frames.

    python bench/erase_temporal.py [--short-clips 8] [--short-frames 32] [--long-frames 360] [--rounds 2] [--no-align]

Real video: examples/media/intel-sample-videos (bottle-detection.mp4, 640x360; car-detection.mp4,
768x432). The object is synthetic: an ellipse a fifth of the frame wide and a third high that
crosses the frame once over the clip (with a slight vertical wobble), the mask `mask_video`
would give for a subject walking through the shot. Two cases, in the same run:
  short: `--short-clips` clips of `--short-frames` frames, spread over bottle-detection.mp4;
  long:  one clip of `--long-frames` frames from the start of car-detection.mp4.
Per case, on the same frames, best of `--rounds`:
  floor:    decode the clip's frames (frame-accurate `read_frames`) + H.264-encode them once
            (`encode_h264`, the erase stage's CRF 18 / preset medium);
  temporal: `TemporalRemover.remove` alone, with erase.yaml's settings;
  stage:    what the erase stage does per clip: decode + remove + encode twice (original, erased).
The goal (issue 21): temporal costs at most 3x the floor.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation.backends.removal import RemovalConfig, make_remover  # noqa: E402
from curation.core.config import CONFIG_DIR  # noqa: E402
from curation.media.decode import read_frames  # noqa: E402
from curation.media.edit_media import encode_h264  # noqa: E402

VIDEOS = REPO / "examples" / "media" / "intel-sample-videos"


def moving_masks(n: int, height: int, width: int) -> list[np.ndarray]:
    """An ellipse (a fifth of the width, a third of the height) crossing the frame over `n` frames."""
    axes = (width // 10, height // 6)
    masks = []
    for t in range(n):
        x = axes[0] + round(t * (width - 2 * axes[0]) / max(1, n - 1))
        y = height // 2 + round(height / 12 * np.sin(t / 6))
        mask = np.zeros((height, width), np.uint8)
        cv2.ellipse(mask, (x, y), axes, 0, 0, 360, 1, -1)
        masks.append(mask.astype(bool))
    return masks


def removal_config(align: bool) -> RemovalConfig:
    options = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "stage" / "erase.yaml"))
    fields = {name: options[name] for name in RemovalConfig.model_fields}
    return RemovalConfig(**{**fields, "align": align})


def best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run_case(name: str, video: Path, spans: list[tuple[int, int]], cfg: RemovalConfig, rounds: int) -> None:
    remover = make_remover(cfg)
    remover.open()
    fps = 25.0
    frames = {span: read_frames(str(video), range(*span)) for span in spans}
    height, width = next(iter(frames.values()))[0].shape[:2]
    masks = {span: moving_masks(span[1] - span[0], height, width) for span in spans}
    n = sum(end - start for start, end in spans)

    def floor() -> None:
        for span in spans:
            encode_h264(read_frames(str(video), range(*span)), fps)

    def temporal() -> None:
        for span in spans:
            remover.remove(frames[span], masks[span])

    def stage() -> None:
        for span in spans:
            clip = read_frames(str(video), range(*span))
            erased = remover.remove(clip, masks[span])
            encode_h264(clip, fps)
            encode_h264(erased, fps)

    floor_s, temporal_s, stage_s = best(floor, rounds), best(temporal, rounds), best(stage, rounds)
    hole = np.mean([m.mean() for span in spans for m in masks[span]])
    print(f"\n{name}: {len(spans)} clip(s), {n} frames of {video.name} ({width}x{height}), object {hole:.1%} of the frame")
    print(f"{'':10} {'s':>7} {'frames/s':>9} {'x floor':>8}")
    for label, seconds in (("floor", floor_s), ("temporal", temporal_s), ("stage", stage_s)):
        print(f"{label:10} {seconds:7.2f} {n / seconds:9.1f} {seconds / floor_s:7.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short-clips", type=int, default=8)
    parser.add_argument("--short-frames", type=int, default=32)
    parser.add_argument("--long-frames", type=int, default=360)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-align", action="store_true", help="erase.align=false: assume a still camera")
    args = parser.parse_args()
    cfg = removal_config(align=not args.no_align)
    print(f"temporal: dilate_px={cfg.dilate_px} samples={cfg.samples} max_offset={cfg.max_offset} align={cfg.align} "
          f"features={cfg.features}; cv2 threads {cv2.getNumThreads()}; best of {args.rounds} rounds")
    bottle, car = VIDEOS / "bottle-detection.mp4", VIDEOS / "car-detection.mp4"
    total = 1189  # bottle-detection.mp4's frames
    step = (total - args.short_frames) // max(1, args.short_clips - 1)
    short = [(i * step, i * step + args.short_frames) for i in range(args.short_clips)]
    run_case("short", bottle, short, cfg, args.rounds)
    run_case("long", car, [(0, args.long_frames)], cfg, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
