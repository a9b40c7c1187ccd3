"""Benchmark the quality checks (`curation.quality`) against decoding their frames, in one run.

    python bench/filters.py [--media DIR] [--videos pyscenedetect/testvideo.mp4 ...] [--frames 8] [--repeat 2]

Footage: the bundled media (examples/media, tests/data) unless `--media DIR` names a directory
laid out as DIR/videos/<name> with DIR/ground_truth.json.

Clips as filter_quality will see them: the shots of ground_truth.json, trimmed one frame each side,
split into pieces of at most 10 s, pieces under 2 s skipped (scene_split's defaults). Per clip,
`--frames` indices from `sample_indices` are decoded at full resolution with `read_frames` and the
clip's recorded pts (verified seeking, as the stage will decode them), then `assess` runs every check
at its defaults. Both are timed in the same process on the same clips; models are loaded and warmed
up first. Prints sampled frames per second for decoding and for the checks, their ratio, and each
check's cost per clip and per sampled frame, so the expensive ones show (text_overlay reads only
3 of the sampled frames by default, so its cost per frame it reads is 8/3 of the figure shown).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_VIDEOS = ["pyscenedetect/testvideo.mp4", "intel-sample-videos/bottle-detection.mp4"]
MIN_CLIP_S, MAX_CLIP_S, TRIM = 2.0, 10.0, 1  # scene_split defaults
STEPS = ("borders", "prepare", "luminance", "blur", "motion", "camera_motion", "text_overlay", "nsfw")


def clip_spans(num_frames: int, cuts: list[int], fps: float) -> list[tuple[int, int]]:
    """[start, end) clips: shots between cuts, trimmed, split into <= 10 s pieces, >= 2 s kept."""
    spans = []
    bounds = [0, *cuts, num_frames]
    for start, end in zip(bounds, bounds[1:]):
        start, end = start + TRIM, end - TRIM
        if (end - start) / fps < MIN_CLIP_S:
            continue
        pieces = int(np.ceil((end - start) / fps / MAX_CLIP_S))
        edges = np.linspace(start, end, pieces + 1).round().astype(int)
        spans += [(int(a), int(b)) for a, b in zip(edges, edges[1:]) if (b - a) / fps >= MIN_CLIP_S]
    return spans


def video_pts(path: str) -> list[int | None]:
    """pts of every frame in decode order (scene_split records these per clip)."""
    from curation.media.decode import iter_frames

    return [pts for _, pts, _ in iter_frames(path, size=(32, 18))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--media", type=Path, default=None,
                        help="media root holding videos/ and ground_truth.json (default: the bundled media)")
    parser.add_argument("--videos", nargs="+", default=DEFAULT_VIDEOS, help="video names (paths under videos/)")
    parser.add_argument("--frames", type=int, default=8, help="frames sampled per clip")
    parser.add_argument("--repeat", type=int, default=2, help="passes over the clips (timings summed)")
    args = parser.parse_args()

    import cv2

    from curation.media.decode import read_frames
    from curation.media.probe import probe_video
    from curation.quality import QualityConfig, assess, load_models, sample_indices

    if args.media:
        truth = {v["file"]: v for v in json.loads((args.media / "ground_truth.json").read_text())["videos"]}
        video_files = {name: args.media / "videos" / name for name in args.videos}
    else:
        import bundled

        truth, video_files = bundled.ground_truth(), bundled.videos()
    cfg = QualityConfig(num_frames=args.frames)
    t0 = time.perf_counter()
    load_models(cfg)
    load_s = time.perf_counter() - t0
    print(f"cpus={os.cpu_count()} load average={os.getloadavg()[0]:.2f} cv2 threads={cv2.getNumThreads()} | "
          f"models loaded in {load_s:.2f} s (RapidOCR + NudeNet, once per worker)\n")

    totals: dict[str, float] = defaultdict(float)
    rows = []
    for name in args.videos:
        path = str(video_files[name])
        info = probe_video(path, 1 << 30)
        fps = float(info.fps)
        pts = video_pts(path)
        spans = clip_spans(len(pts), truth.get(name, {}).get("hard_cuts", []), fps)
        # warm-up on this video's first clip (decoder, ORT sessions, OpenCV buffers)
        idx = sample_indices(*spans[0], args.frames)
        assess(read_frames(path, idx, pts[spans[0][0]:spans[0][1]], first_index=spans[0][0]), cfg,
               times_s=[i / fps for i in idx])

        per: dict[str, float] = defaultdict(float)
        frames_done = clips_done = 0
        for _ in range(args.repeat):
            for start, end in spans:
                idx = sample_indices(start, end, args.frames)
                t = time.perf_counter()
                frames = read_frames(path, idx, pts[start:end], first_index=start)
                per["decode"] += time.perf_counter() - t
                t = time.perf_counter()
                assess(frames, cfg, times_s=[i / fps for i in idx], timings=per)
                per["checks"] += time.perf_counter() - t
                frames_done += len(frames)
                clips_done += 1
        for k, v in per.items():
            totals[k] += v
        totals["frames"] += frames_done
        totals["clips"] += clips_done
        rows.append((f"{name} ({info.width}x{info.height}, {len(spans)} clips x {args.repeat})", per, frames_done, clips_done))
    rows.append((f"all ({int(totals['clips'])} clips)", totals, int(totals["frames"]), int(totals["clips"])))

    for title, per, n_frames, n_clips in rows:
        print(title)
        print(f"  decode alone : {n_frames / per['decode']:7.1f} sampled frames/s  {1000 * per['decode'] / n_clips:7.1f} ms/clip")
        print(f"  all checks   : {n_frames / per['checks']:7.1f} sampled frames/s  {1000 * per['checks'] / n_clips:7.1f} ms/clip")
        both = per["decode"] + per["checks"]
        print(f"  checks/decode: {per['checks'] / per['decode']:.2f}x   decode+checks: {n_frames / both:.1f} frames/s, "
              f"{n_clips / both:.1f} clips/s per process")
        for step in STEPS:
            if step in per:
                print(f"    {step:14s} {1000 * per[step] / n_clips:7.1f} ms/clip {1000 * per[step] / n_frames:6.2f} ms/sampled frame"
                      f"  {100 * per[step] / per['checks']:5.1f}%")
        print()


if __name__ == "__main__":
    main()
