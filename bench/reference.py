"""Benchmark the `composite` reference backend against the floor of merely re-encoding the frame.

    python bench/reference.py [--media DIR] [--per-video 6] [--repeat 2] [--rounds 5] [--png-level 1] [--naive]

Real frames: every bundled photo (skimage, OpenCV samples; with `--media DIR`, every image under
DIR/images instead) and `--per-video` frames of each video under examples/media, stored as JPEG
(quality 95) as `ground_edit` stores the target's first frame. Each frame gets two masks derived
from its content, stored as PNG as `ground_edit` stores them:
  region: the largest connected component of an Otsu threshold (bright or dark side, whichever is
          smaller), closed and filled: a ragged object-like region;
  box:    a centred detection-style rectangle over half the width and 70 % of the height (a
          person-sized foreground for background changes).
Per reference, in the same run, on the same frames:
  floor:      JPEG bytes -> RGB, then PNG-encode the whole frame;
  cutout:     JPEG -> RGB, mask PNG -> bool, cutout_reference, PNG-encode the reference;
  background: JPEG -> RGB, mask PNG -> bool, background_reference, PNG-encode the reference;
  background, full-res inpaint (`--naive`): the same with `max_hole_px=0`, what a naive
              inpaint of the whole hole at frame resolution costs.
Each is timed `--repeat` passes over all (frame, mask) pairs per round, rounds interleaved, best
round kept. The PNG settings are the same everywhere (the stage's: `PNG_COMPRESSION`,
`PNG_STRATEGY`); a second table shows what level and zlib strategy cost on the floor. OpenCV runs
on one thread by default: a Ray worker of the stage holds a fraction of one CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from frames import spread_frames  # noqa: E402  (bench/, the script's own directory)

from curation.backends.references.composite import (  # noqa: E402
    PNG_COMPRESSION,
    PNG_STRATEGY,
    background_reference,
    cutout_reference,
    encode_reference_png,
)
from curation.media.jpeg import encode_jpeg  # noqa: E402
from curation.regions.roe import box_mask, decode_mask_png, encode_mask_png  # noqa: E402

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
NAIVE = "background, full-res inpaint"


def real_frames(media: Path | None, videos: Path, per_video: int) -> list[np.ndarray]:
    """RGB uint8: all the photos (grayscale ones as 3 channels), then frames spread over each video."""
    if media is None:
        import bundled

        photos = bundled.images()
    else:
        photos = sorted(p for p in (media / "images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    frames = []
    for path in photos:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is not None:
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    frames.extend(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) for bgr in spread_frames(videos, per_video))
    return frames


def region_mask(image: np.ndarray) -> np.ndarray:
    """Largest component of the smaller side of an Otsu threshold, closed and hole-filled."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    _, bright = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    side = bright if bright.mean() < 0.5 else 1 - bright
    side = cv2.morphologyEx(side, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(side, connectivity=8)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])) if count > 1 else 0
    component = (labels == best).astype(np.uint8)
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(component, contours, -1, 1, thickness=cv2.FILLED)
    return component.astype(bool)


def centre_box_mask(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    return box_mask((0.25 * width, 0.15 * height, 0.75 * width, 0.85 * height), height, width)


def decode_rgb(jpeg: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def best_of(work: Callable[[], int], repeat: int, rounds: list[float]) -> None:
    """Run `work` `repeat` times, append the wall time to `rounds`."""
    t0 = time.perf_counter()
    for _ in range(repeat):
        work()
    rounds.append(time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--media", type=Path, default=None, help="holds images/ (default: the bundled photos)")
    parser.add_argument("--videos", type=Path, default=REPO / "examples" / "media")
    parser.add_argument("--per-video", type=int, default=6, help="frames taken from each video")
    parser.add_argument("--repeat", type=int, default=2, help="passes over all (frame, mask) pairs per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the fastest of each kind is kept")
    parser.add_argument("--png-level", type=int, default=PNG_COMPRESSION, help="zlib level for every PNG (the stage's by default)")
    parser.add_argument("--naive", action="store_true", help="also time a full-resolution inpaint (max_hole_px=0; slow)")
    parser.add_argument("--threads", type=int, default=1, help="cv2.setNumThreads (a stage worker holds under one CPU)")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)

    frames = real_frames(args.media, args.videos, args.per_video)
    if not frames:
        print(f"no images under {args.media / 'images' if args.media else 'the bundled media'} or videos under {args.videos}",
              file=sys.stderr)
        return 1
    jpegs = [encode_jpeg(f, 95) for f in frames]
    masks = {"region": [encode_mask_png(region_mask(f)) for f in frames], "box": [encode_mask_png(centre_box_mask(f)) for f in frames]}
    pairs = [(jpeg, mask_png) for kind in masks for jpeg, mask_png in zip(jpegs, masks[kind])]
    level = args.png_level

    def floor() -> int:
        return sum(len(encode_reference_png(decode_rgb(jpeg), level)) for jpeg, _ in pairs)

    def composite(make: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[], int]:
        def work() -> int:
            return sum(len(encode_reference_png(make(decode_rgb(jpeg), decode_mask_png(m) > 0), level)) for jpeg, m in pairs)
        return work

    kinds: dict[str, Callable[[], int]] = {
        "floor (decode + PNG)": floor,
        "cutout": composite(cutout_reference),
        "background": composite(background_reference),
    }
    if args.naive:
        kinds[NAIVE] = composite(lambda f, m: background_reference(f, m, max_hole_px=0))
    passes = {k: 1 if k == NAIVE else args.repeat for k in kinds}  # the naive inpaint is slow: one pass shows it
    rounds: dict[str, list[float]] = {k: [] for k in kinds}
    out_bytes = {k: work() for k, work in kinds.items()}  # warm-up, and the output sizes
    for _ in range(args.rounds):
        for name, work in kinds.items():
            best_of(work, passes[name], rounds[name])
    per_ref = {k: min(v) / (passes[k] * len(pairs)) for k, v in rounds.items()}

    sizes = sorted({(f.shape[1], f.shape[0]) for f in frames}, key=lambda s: s[0] * s[1])
    fracs = {k: np.mean([(decode_mask_png(m) > 0).mean() for m in v]) for k, v in masks.items()}
    print(f"frames: {len(frames)} real ({len(sizes)} sizes, {sizes[0][0]}x{sizes[0][1]} .. {sizes[-1][0]}x{sizes[-1][1]}), "
          f"JPEG q95; masks: region (mean {fracs['region']:.0%} of the frame) and box ({fracs['box']:.0%}), "
          f"{len(pairs)} references per pass")
    print(f"PNG level {level} strategy {PNG_STRATEGY}, cv2 threads {cv2.getNumThreads()}, best of {args.rounds} rounds x "
          f"{args.repeat} passes")
    floor_s = per_ref["floor (decode + PNG)"]
    print(f"{'':30} {'ms/ref':>8} {'refs/s':>8} {'ratio':>6} {'KiB/ref':>8}")
    for name in kinds:
        print(f"{name:30} {per_ref[name] * 1e3:8.2f} {1 / per_ref[name]:8.1f} {per_ref[name] / floor_s:5.2f}x "
              f"{out_bytes[name] / len(pairs) / 1024:8.1f}")

    print("\nPNG settings on the floor (decode + encode the whole frame):")
    print(f"{'level':>5} {'strategy':>9} {'ms/frame':>9} {'KiB/frame':>10}")
    for lvl in (1, 3, 6):
        for strategy_name, strategy in (("default", cv2.IMWRITE_PNG_STRATEGY_DEFAULT), ("rle", cv2.IMWRITE_PNG_STRATEGY_RLE)):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                size = sum(len(encode_reference_png(decode_rgb(j), lvl, strategy)) for j in jpegs)
                times.append(time.perf_counter() - t0)
            print(f"{lvl:5} {strategy_name:>9} {min(times) / len(jpegs) * 1e3:9.2f} {size / len(jpegs) / 1024:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
