"""scene_split on one long real video: split across workers against one pass, a bare decode, and the CLI.

    python bench/scene_split_long.py [--frames 24000] [--segment-s 120] [--repeat 2] [--profile]

The video (built once, cached under build/bench/, which .gitignore keeps out of git): the five
bundled redistributable videos (tests/data/LICENSES.md, examples/media/ATTRIBUTION.md) scaled to
640x360, concatenated, looped until it holds at least `--frames` frames, re-encoded as one 25 fps
H.264 stream (libx264 defaults: keyframes every <= 250 frames and at scene changes), like the
27,700-frame 640x360 film of issue 17.

In one run, rounds interleaved so load from other tenants of the machine hits every case alike
(the fastest of each case is kept):
  (a) bare decode: PyAV decoding every frame of the file, FFmpeg threads on both cores, frames
      converted to nothing (the floor the stage approaches);
  (b) the stage's own time inside `process_batch` on that one video row, one pass (unsplit);
  (c) the same, split into segments run as Ray tasks (Ray started before the clock; the driver
      calls the stage, so every Ray CPU is free for segments: `--segment-cpus 1` runs one
      single-threaded segment per core);
  (d) the PySceneDetect CLI (`scenedetect -i V detect-adaptive list-scenes`), whole process, with
      its start-up (`scenedetect version`) measured apart.
Each is printed as a ratio to (a); (b) and (c) also against (d) without its start-up.
`--profile` also prints where one pass spends its time (cProfile, top functions).
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import bundled  # bench/, the script's own directory (puts the repository on sys.path)

REPO = bundled.REPO
BUILD = REPO / "build" / "bench"
SIZE = (640, 360)
RATE = 25


# ---- the long video ----------------------------------------------------------------------------


def build_long_video(min_frames: int) -> Path:
    """The bundled videos at 640x360, looped to >= `min_frames` frames, as one H.264 mp4 (cached)."""
    from curation.media.decode import iter_frames

    out = BUILD / f"long-{min_frames}.mp4"
    if out.exists():
        return out
    BUILD.mkdir(parents=True, exist_ok=True)
    sources = [bundled.videos()[name] for name in sorted(bundled.videos())]
    partial = out.with_suffix(".partial.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=RATE, options={"preset": "veryfast", "crf": "23"})
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        written = 0
        while written < min_frames:
            for source in sources:
                for _, _, image in iter_frames(str(source), size=SIZE, fmt="yuv420p"):
                    frame = av.VideoFrame.from_ndarray(image, format="yuv420p")
                    frame.pts = written
                    container.mux(stream.encode(frame))
                    written += 1
        container.mux(stream.encode(None))
    partial.rename(out)
    return out


# ---- the cases -----------------------------------------------------------------------------------


def bare_decode(path: Path) -> int:
    """Every frame decoded by PyAV with FFmpeg's automatic (frame + slice) threads, converted to nothing."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = 0
        return sum(1 for _ in container.decode(stream))


def video_row(path: Path) -> dict:
    """The row Ingest writes for the file (its probe), as scene_split reads it."""
    from curation.core.schema import make_sample_id
    from curation.media.probe import probe_video

    return dict(sample_id=make_sample_id("video", str(path)), parent_ids=[], kind="video", source_uri=str(path),
                status="ok", reason=None, stage="ingest", stage_version="1", **probe_video(str(path), 1 << 30).model_dump())


def make_stage(segment_s: str | None, segment_cpus: float | None = None):
    """The stage as configured, with `segment_s` ("null": one pass) and `segment_cpus` overridden when given."""
    from curation.core.config import build_stage

    overrides = [f"scene_split.segment_s={segment_s}"] if segment_s else []
    overrides += [f"scene_split.segment_cpus={segment_cpus}"] if segment_cpus else []
    stage = build_stage("scene_split", overrides=overrides)
    stage.ensure_setup()
    return stage


def timed(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def cpu_timed(fn, *args) -> tuple[float, float, object]:
    """(wall s, CPU s of this process's threads, result): CPU time is what other tenants of a busy
    machine disturb least, for the cases that run in this process."""
    c0 = time.process_time()
    seconds, out = timed(fn, *args)
    return seconds, time.process_time() - c0, out


def cli(scenedetect: str, path: Path, out_dir: Path) -> list[float]:
    """`scenedetect detect-adaptive list-scenes` (the stage's default detector, the CLI's 0.6 s
    minimum scene length): cut times from its CSV."""
    subprocess.run([scenedetect, "-q", "-i", str(path), "-o", str(out_dir), "detect-adaptive", "list-scenes", "-s"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out_dir / f"{path.stem}-Scenes.csv", newline="") as f:
        scenes = list(csv.DictReader(f))
    return [float(s["Start Time (seconds)"]) for s in scenes[1:]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=24_000, help="at least this many frames in the long video")
    parser.add_argument("--segment-s", type=float, default=None, help="segment length for (c) (default: the stage's)")
    parser.add_argument("--segment-cpus", type=float, default=None, help="CPUs per segment task for (c) (default: the stage's)")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds; the fastest of each case is kept")
    parser.add_argument("--no-cli", action="store_true", help="skip the PySceneDetect CLI")
    parser.add_argument("--profile", action="store_true", help="also profile one unsplit pass")
    args = parser.parse_args()

    import ray
    from omegaconf import OmegaConf

    from curation.core.config import CONFIG_DIR
    from curation.core.ray_env import init_ray

    path = build_long_video(args.frames)
    row = video_row(path)
    scenedetect = None if args.no_cli else (shutil.which("scenedetect", path=os.path.dirname(sys.executable))
                                            or shutil.which("scenedetect"))

    setup_unsplit_s, unsplit = timed(make_stage, "null")
    ray_s, _ = timed(init_ray, OmegaConf.load(CONFIG_DIR / "run.yaml").cluster)
    setup_split_s, split = timed(make_stage, None if args.segment_s is None else str(args.segment_s), args.segment_cpus)
    segment_s = split.segment_s
    if scenedetect:
        quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cli_startup_s = min(timed(lambda: subprocess.run([scenedetect, "version"], check=True, **quiet))[0] for _ in range(3))

    best = {k: float("inf") for k in ("bare", "unsplit", "split", "cli", "bare_cpu", "unsplit_cpu")}
    frames = outputs = None
    cli_cuts: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            seconds, cpu, frames = cpu_timed(bare_decode, path)
            best["bare"], best["bare_cpu"] = min(best["bare"], seconds), min(best["bare_cpu"], cpu)
            seconds, cpu, one = cpu_timed(unsplit.process_batch, [row])
            best["unsplit"], best["unsplit_cpu"] = min(best["unsplit"], seconds), min(best["unsplit_cpu"], cpu)
            seconds, many = timed(split.process_batch, [row])
            best["split"] = min(best["split"], seconds)
            if one != many:
                raise SystemExit("split rows differ from one pass")
            outputs = one
            if scenedetect:
                seconds, cli_cuts = timed(cli, scenedetect, path, Path(tmp))
                best["cli"] = min(best["cli"], seconds)
    ray.shutdown()

    shots = sorted({r["shot_start_frame"] for r in outputs})
    print(f"video: {path.relative_to(REPO)}, {frames} frames, {row['width']}x{row['height']}, {row['fps']:g} fps, "
          f"{row['duration_s']:.0f} s; cores={os.cpu_count()}; best of {args.repeat} interleaved rounds")
    print(f"  stage rows: {len(outputs)} clips from {len(shots)} shots; split rows == unsplit rows: True")
    n_segments = -(-frames // max(1, round(segment_s * row["fps"])))
    print(f"(a) bare PyAV decode, auto threads            {best['bare']:7.2f} s  {frames / best['bare']:6.0f} frames/s  "
          f"CPU {best['bare_cpu']:.2f} s")
    print(f"(b) stage, one pass (segment_s=null)          {best['unsplit']:7.2f} s  {best['unsplit'] / best['bare']:5.2f}x (a)  "
          f"CPU {best['unsplit_cpu']:.2f} s = {best['unsplit_cpu'] / best['bare_cpu']:.2f}x (a)'s")
    print(f"(c) stage, {n_segments} segments of {segment_s:g} s as Ray tasks of {split.segment_cpus:g} CPU  {best['split']:7.2f} s  "
          f"{best['split'] / best['bare']:5.2f}x (a)   goal <= 1.3x")
    print(f"    start-up apart: stage build+setup {setup_unsplit_s:.2f} s (one pass), {setup_split_s:.2f} s (split); "
          f"Ray init {ray_s:.2f} s (before the clock, as on a running cluster)")
    if scenedetect:
        cli_run = best["cli"] - cli_startup_s
        print(f"(d) scenedetect CLI detect-adaptive           {best['cli']:7.2f} s  {best['cli'] / best['bare']:5.2f}x (a); "
              f"start-up (`scenedetect version`) {cli_startup_s:.2f} s, without it {cli_run:.2f} s")
        print(f"    stage / CLI without start-up: one pass {best['unsplit'] / cli_run:.2f}x, split {best['split'] / cli_run:.2f}x")
        ours = [c for c in shots if c > 0]
        cli_frames = {round(t * row["fps"]) for t in cli_cuts}  # the built video is constant-rate
        same = sum(any(abs(c - f) <= 1 for f in cli_frames) for c in ours)
        print(f"    cuts: ours {len(ours)}, CLI {len(cli_cuts)}, the same within +-1 frame: {same}")

    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(unsplit.process_batch, [row])
        pstats.Stats(profile).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
