"""End-to-end throughput model of `pipeline=sessions`: measured CPU stages, modelled GPU stages, a
sizing table for a large run, and a measurement of Ray Data's streaming overlap.

    CURATE_CACHE=/tmp/e2e-cache python bench/e2e.py [--media all|examples|tests] [--videos PATH ...]
        [--videos-total 1e6 --video-s 60 --fps 30] [--cpu-nodes 16 --cores-per-node 32]
        [--gpu-nodes 4 --gpus-per-node 8 --gpu H100 --vlm qwen2.5-vl-7b] [--no-overlap]

What is MEASURED here (real footage, real code, this machine, this run):
  (a) `pipeline=sessions models=tiny` through Ray, one `runner.run_stage` per stage (what
      `runner.run` does), on the bundled examples/media clips plus the other videos bundled for the
      tests (tests/data/videos). Per stage: `_run.json` wall time and samples/s, and the CPU seconds
      this process tree actually burned (sampled from /proc: the driver, the local raylet/GCS and
      every Ray worker), so "how many cores did the stage really use" is a number, not a guess.
      Baseline in the same run: the CPU stages replayed in this process, one thread, on the very
      same input manifests (models loaded first, untimed) = the per-core cost the model uses. The
      ratio Ray CPU / in-process CPU is Ray's overhead at this (tiny) scale: worker start, model
      setup per worker, read/write tasks.
      Fan-out of the footage: clips per source minute, filter_quality's kept share, sessions per
      clip, frames (turns) per session, dedup's kept share.
  (d) Streaming overlap: PyAV decode of real clip frames as Ray Data `map_batches` tasks feeding a
      SLEEP-BASED STAND-IN "GPU" stage (an actor pool, num_cpus=0.25) that computes nothing, for
      scheduling measurements only. Baseline: decode alone and the stand-in alone on pre-decoded
      data, in the same run.

What is MODELLED (not measured; see ASSUMPTIONS below, each with its source):
  (b) The GPU stages. With models=tiny, annotate (a Qwen-VL class VLM) and ground (Grounding DINO
      + SAM2) run tiny random models on CPU and embed uses phash instead of CLIP, so the rates of
      those models here mean nothing. Their cost per unit comes from published model speeds and
      datasheet arithmetic. (Their CPU side is measured: annotate's frame shrinking to
      vlm.image_max_side, embed's image decode via the phash pass.) dedup's global search at scale
      comes from docs/dedup.md, measured earlier by bench/dedup.py, not in this run.
  (c) The sizing table: work per stage for N source videos, CPU core-hours / GPU-hours, node-hours
      on the given cluster, wall time streamed vs stage after stage, and the bottleneck.

No asserts on timing; every number printed says whether it was measured or assumed.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from curation.core import layout, media_store, storage  # noqa: E402

TEST_VIDEOS = REPO / "tests" / "data" / "videos"  # bundled for the tests (tests/data/LICENSES.md)
EXAMPLES_MANIFEST = REPO / "manifests" / "examples.jsonl"
VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm"}

# ================================================================================================
# ASSUMPTIONS: everything below is MODELLED, not measured by this script. Each constant says
# where it comes from. Change them here (or by flag) when you have a measurement of your own.
# ================================================================================================

# GPU datasheets (dense, no sparsity; SXM parts). bf16 TFLOP/s, HBM TB/s, memory GiB.
GPUS: dict[str, dict[str, float]] = {
    # NVIDIA A100 80GB SXM datasheet: 312 TFLOP/s bf16, 2.0 TB/s HBM2e.
    "A100": {"bf16_tflops": 312.0, "hbm_tbs": 2.04, "mem_gib": 80, "vision_speedup": 1.0},
    # NVIDIA H100 SXM datasheet: 989 TFLOP/s bf16 dense, 3.35 TB/s HBM3.
    "H100": {"bf16_tflops": 989.0, "hbm_tbs": 3.35, "mem_gib": 80, "vision_speedup": 2.0},
    # NVIDIA L4 datasheet: 121 TFLOP/s bf16 dense, 0.3 TB/s GDDR6, 24 GB.
    "L4": {"bf16_tflops": 121.0, "hbm_tbs": 0.30, "mem_gib": 24, "vision_speedup": 0.45},
}
# `vision_speedup` (ENGINEERING ESTIMATE): the fp32 vision models below (our detect/segment/embed
# backends load them in fp32, no autocast) relative to an A100. Between the bandwidth ratio
# (H100/A100 1.6x) and the fp32 FLOP ratio (3.4x); L4 has ~A100's fp32 FLOPs but 1/7 the bandwidth.

# Per-image GPU seconds on ONE A100, at the batch sizes of curation/config/stage/*.yaml.
GROUNDING_DINO_S_PER_IMAGE_A100 = 0.10
# Grounding DINO Swin-T (IDEA-Research/grounding-dino-tiny), ~800x1333 input, fp32. Published: the
# Grounding DINO paper (Liu et al. 2023, App. I) reports 8.37 FPS for Swin-T at batch 1 (0.12 s);
# users report 0.2-0.5 s/image with the HF port on V100/T4/RTX (GroundingDINO issues #50, #132).
# ESTIMATE: 0.10 s/image at detector.batch_size=8 on an A100 (batching recovers ~20%).
SAM2_S_PER_IMAGE_A100 = 0.035
# SAM2.1 hiera-tiny image encoder (1024x1024) + mask decoder for a frame's boxes, fp32 HF port.
# Published: facebookresearch/sam2 README, 91.2 FPS for sam2.1_hiera_tiny on an A100 (torch 2.5.1,
# video mode, compiled) = 11 ms/frame. ESTIMATE: 3x that for the uncompiled fp32 transformers port.
CLIP_S_PER_IMAGE_A100 = 0.0008
# CLIP ViT-B/32 image tower, 224x224: 4.4 GFLOP/image (open_clip model profile). ESTIMATE: fp32 at
# ~6 TFLOP/s effective on an A100 at batch 32 -> ~1,300 images/s. JPEG decode and resize happen on
# the worker's CPU and are counted separately (measured: the phash embed pass does the same decode).

# The annotate VLM, served by vLLM (continuous batching, bf16), one replica per GPU (data parallel).
VLMS: dict[str, dict[str, float]] = {
    # Qwen2.5-VL-7B-Instruct: LM 7.6B params (Qwen2.5-7B), ViT 0.675B (vLLM's Qwen2.5-VL recipe);
    # 14-px patches merged 2x2 -> one token per 28x28 pixels (Qwen2.5-VL processor, smart_resize).
    "qwen2.5-vl-7b": {"lm_params": 7.6e9, "vit_params": 0.675e9, "px_per_token": 28},
    # Qwen3-VL-8B-Instruct: LM ~8.2B, ViT ~0.6B (ESTIMATE from the model card's 8B total); 16-px
    # patches merged 2x2 -> one token per 32x32 pixels (Qwen3-VL processor).
    "qwen3-vl-8b": {"lm_params": 8.2e9, "vit_params": 0.6e9, "px_per_token": 32},
}
PREFILL_MFU = 0.45
# ESTIMATE: share of bf16 peak vLLM prefill reaches on ~2k-token multimodal prompts (40-60% is the
# usual range for 7-8B models); prefill FLOPs = 2 x params per token.
DECODE_TOKENS_PER_S_A100 = 2000.0
# Aggregate output tokens/s of a 7B bf16 model under vLLM on one A100-80GB at large batch. Published:
# Qwen's blog quotes 2,299 tok/s for Qwen1.5-7B with vLLM on one A100 (quoted in QwenLM/Qwen3 #244;
# a user there measured ~1,000 at 1k in / 1k out). Decode is memory-bound: other GPUs scale by HBM
# bandwidth (H100 ~3,300 tok/s, L4 ~300 tok/s).
VLM_OUTPUT_TOKENS = 800
# ESTIMATE: VINCIE-style chain of thought (two frame captions with char*/obj* entities, five change
# fields, a summary): 600-1000 tokens; annotate caps it at vlm.max_tokens=1024.
CHARS_PER_TEXT_TOKEN = 4.0  # ESTIMATE: English prose and JSON in Qwen's BPE, ~4 characters a token
CHAT_OVERHEAD_TOKENS = 30  # ESTIMATE: chat template, default system prompt, vision start/end tokens
REASK_RATE = 0.05  # ESTIMATE: answers failing validation are asked once more (annotate.validation_retries=1)
ANNOTATE_KEEP = 0.95  # ESTIMATE: sessions with at least one valid turn (a real VLM; tiny models say nothing)
FRAME_SIZE = (1280, 720)  # ESTIMATE: typical source frame (720p, 16:9); sent to the VLM at image_max_side
IMAGE_MAX_SIDE = 1024  # vlm.image_max_side default (curation/config/vlm/*.yaml)
CPU_EFFICIENCY = 0.8
# ESTIMATE: share of a CPU node's cores doing stage work at scale (worker start and model load
# amortised; Ray Data read/write tasks and scheduling gaps remain). This run's Ray/in-process CPU
# ratio is printed for comparison, but at a few videos it is dominated by start-up.
GPU_EFFICIENCY = 0.8  # ESTIMATE: GPUs busy with full batches (stragglers, partial batches, model load)
DEDUP_CORE_S_PER_1M = 94.0
# MEASURED EARLIER, not in this run: docs/dedup.md / bench/dedup.py, 1M x 512 fp16 vectors, semantic
# search in 41-53 s on 2 cores (47 s x 2 cores). Cell search work grows as n^1.5.

# ================================================================================================
# Measuring CPU: this process and its descendants (local Ray: raylet, GCS, workers) from /proc
# ================================================================================================


class TreeCpu:
    """CPU seconds used by this process and every descendant, split into driver / Ray workers
    (`ray::` process titles) / Ray system processes. A thread samples /proc every `interval` s and
    keeps each process's last value, so processes that exit still count (minus < `interval` each)."""

    def __init__(self, interval: float = 0.2):
        self.tick = os.sysconf("SC_CLK_TCK")
        self.root = os.getpid()
        self.interval = interval
        self.seen: dict[tuple[int, int], tuple[str, float]] = {}  # (pid, start time) -> (kind, cpu s)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _scan(self) -> None:
        procs = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    data = f.read()
            except OSError:
                continue
            right = data.rfind(")")
            comm = data[data.find("(") + 1:right]
            fields = data[right + 2:].split()
            procs[int(entry.name)] = (int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / self.tick, int(fields[19]))
        children = defaultdict(list)
        for pid, (ppid, *_rest) in procs.items():
            children[ppid].append(pid)
        stack, tree = [self.root], []
        while stack:
            pid = stack.pop()
            tree.append(pid)
            stack.extend(children.get(pid, []))
        with self.lock:
            for pid in tree:
                if pid in procs:
                    _, comm, cpu, start = procs[pid]
                    kind = "driver" if pid == self.root else ("workers" if comm.startswith("ray::") else "ray_system")
                    # a worker's title changes (ray::IDLE -> ray::MapWorker): once a worker, always one
                    old = self.seen.get((pid, start))
                    if old and old[0] == "workers":
                        kind = "workers"
                    self.seen[(pid, start)] = (kind, cpu)

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            self._scan()

    def start(self) -> TreeCpu:
        self._scan()
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join()

    def snapshot(self) -> dict[str, float]:
        self._scan()
        out: dict[str, float] = defaultdict(float)
        with self.lock:
            for kind, cpu in self.seen.values():
                out[kind] += cpu
        return dict(out)


def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("driver", "workers", "ray_system")}


# ================================================================================================
# (a) the pipeline through Ray, and the CPU stages replayed in-process
# ================================================================================================

CPU_STAGES = ("ingest", "scene_split", "filter_quality", "sample_frames", "annotate_prep", "embed", "shard")
GPU_IN_PRODUCTION = {
    "annotate": "VLM (Qwen-VL class): tiny random Qwen2-VL on CPU here",
    "ground": "Grounding DINO + SAM2: tiny random models on CPU here",
    "embed": "CLIP ViT-B/32 in production; models=tiny uses phash (real, CPU)",
}


def source_videos(args) -> list[Path]:
    if args.videos:
        found = []
        for p in map(Path, args.videos):
            found += sorted(q for q in p.rglob("*") if q.suffix.lower() in VIDEO_SUFFIXES) if p.is_dir() else [p]
        return found
    videos: dict[str, Path] = {}
    if args.media in ("all", "examples"):
        for line in EXAMPLES_MANIFEST.read_text().splitlines():
            if line.strip():
                p = (EXAMPLES_MANIFEST.parent / json.loads(line)["source_uri"]).resolve()
                videos[p.name] = p
    if args.media in ("all", "tests"):
        for p in sorted(TEST_VIDEOS.rglob("*")):
            if p.suffix.lower() in VIDEO_SUFFIXES and p.name not in videos:
                videos[p.name] = p
    return list(videos.values())


@dataclass
class StageRun:
    name: str
    record: dict[str, Any]
    cpu: dict[str, float]
    stage_dir: str

    @property
    def wall(self) -> float:
        return float(self.record["wall_s"])

    @property
    def work_cpu(self) -> float:
        """Driver + workers: the stage's own work and Ray Data's tasks (raylet/GCS upkeep excluded)."""
        return self.cpu["driver"] + self.cpu["workers"]


def ok_rows(stage_dir: str, columns: list[str] | None = None):
    import pyarrow.compute as pc

    t = storage.read_table(stage_dir, columns=None if columns is None else ["status", *columns])
    return t.filter(pc.equal(t.column("status"), "ok"))


def run_pipeline(cfg, run_dir: str, meter: TreeCpu | None) -> list[StageRun]:
    """`runner.run`, one stage at a time so each stage's CPU can be read off separately."""
    from curation.core.layout import stage_dir_for
    from curation.core.runner import run_stage

    runs = []
    prev = cfg.input
    for position, name in enumerate(cfg.stages, start=1):
        stage_dir = stage_dir_for(run_dir, name, position)
        before = meter.snapshot() if meter else {}
        run_stage(name, cfg, prev, stage_dir)
        cpu = diff(meter.snapshot(), before) if meter else {"driver": math.nan, "workers": math.nan, "ray_system": math.nan}
        runs.append(StageRun(name, storage.read_json(storage.join(stage_dir, "_run.json")), cpu, stage_dir))
        prev = stage_dir
    return runs


@dataclass
class Replay:
    name: str
    units: dict[str, float]  # unit name -> count
    setup_cpu: float
    cpu: float
    wall: float
    extra: dict[str, Any] = field(default_factory=dict)


def replay_cpu_stages(cfg, runs: dict[str, StageRun], work: Path, repeat: int) -> dict[str, Replay]:
    """The CPU stages in this process, one thread, on the inputs they had in the Ray run."""
    import cv2
    import pyarrow.compute as pc
    import torch

    from curation.core.config import build_stage

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    inputs = {
        "ingest": storage.join(runs["ingest"].stage_dir, "_input"),
        "scene_split": runs["ingest"].stage_dir,
        "filter_quality": runs["scene_split"].stage_dir,
        "sample_frames": runs["filter_quality"].stage_dir,
        "embed": runs["ground"].stage_dir,
    }
    out = {}
    run_dir = layout.run_dir_of(runs["ingest"].stage_dir)
    for name, src in inputs.items():
        stage = build_stage(name, cfg)
        stage.bind_run(run_dir, str(work / f"replay-{name}"))  # media references resolve as in the run
        c0 = time.process_time()
        stage.ensure_setup()
        setup = time.process_time() - c0
        tables = []
        for uri in storage.list_files(src, prefix="part-", suffix=".parquet"):
            t = storage.read_table(uri)
            tables.append(t.filter(pc.equal(t.column("status"), "ok")))
        rows = sum(t.num_rows for t in tables)
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(repeat):
            for t in tables:
                stage(t)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        units = {"rows": rows * repeat}
        if name == "scene_split":
            videos = ok_rows(src, ["duration_s", "num_frames"])
            units["source_s"] = float(pc.sum(videos.column("duration_s")).as_py()) * repeat
            units["frames"] = float(pc.sum(videos.column("num_frames")).as_py()) * repeat
        out[name] = Replay(name, units, setup, cpu, wall)

    # shard: the sink's per-shard writer, called directly (the runner fans it out as Ray tasks)
    stage = build_stage("shard", cfg)
    plan = stage.plan(runs["dedup"].stage_dir)
    shards = sorted(set(plan.column("shard").to_pylist()))
    c0, w0 = time.process_time(), time.perf_counter()
    written = 0
    for r in range(repeat):
        for s in shards:
            target = work / f"replay-shard-{r}"
            written += stage.write_shard(s, plan, str(target / "shards"), str(target / "09-shard"))["samples"]
    out["shard"] = Replay("shard", {"rows": written}, 0.0, time.process_time() - c0, time.perf_counter() - w0)

    # annotate's CPU side: each request sends frames k and k+1, each shrunk to vlm.image_max_side
    # by the backend before it is sent (the VLM itself is modelled in (b)). The sizing model assumes
    # 720p frames, which all need the resize, so the rate is taken over the frames larger than
    # image_max_side (frames already small enough pass through untouched and cost ~nothing).
    from PIL import Image

    from curation.backends.vlm import shrink_image

    images = [f for row in media_store.inlined_rows(ok_rows(runs["sample_frames"].stage_dir, ["frames"]), run_dir)
              for f in row["frames"]]
    large = [im for im in images if max(Image.open(io.BytesIO(im)).size) > IMAGE_MAX_SIDE]
    timed = large or images
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(repeat):
        for im in timed:
            shrink_image(im, IMAGE_MAX_SIDE)
    out["annotate_prep"] = Replay("annotate_prep", {"rows": len(timed) * repeat}, 0.0, time.process_time() - c0,
                                  time.perf_counter() - w0, {"images": len(images), "large": len(large)})
    return out


@dataclass
class Fanout:
    source_s: float
    videos: int
    clips_per_min: float
    filter_keep: float
    sessions_per_clip: float
    frames_per_session: float
    dedup_keep: float
    session_sizes: list[tuple[int, int]]

    @property
    def turns_per_session(self) -> float:
        return self.frames_per_session - 1


def measure_fanout(runs: dict[str, StageRun]) -> Fanout:
    import pyarrow.compute as pc

    videos = ok_rows(runs["ingest"].stage_dir, ["duration_s"])
    source_s = float(pc.sum(videos.column("duration_s")).as_py())
    clips = ok_rows(runs["scene_split"].stage_dir, ["kind"]).num_rows
    kept = ok_rows(runs["filter_quality"].stage_dir, ["kind"]).num_rows
    sessions = ok_rows(runs["sample_frames"].stage_dir, ["frame_indices", "frame_width", "frame_height"])
    frames = [len(x) for x in sessions.column("frame_indices").to_pylist()]
    sizes = list(zip(sessions.column("frame_width").to_pylist(), sessions.column("frame_height").to_pylist()))
    into_dedup = storage.read_table(runs["dedup"].stage_dir, columns=["status"]).num_rows
    after_dedup = ok_rows(runs["dedup"].stage_dir, ["kind"]).num_rows
    return Fanout(
        source_s=source_s,
        videos=videos.num_rows,
        clips_per_min=clips / (source_s / 60) if source_s else 0.0,
        filter_keep=kept / clips if clips else 0.0,
        sessions_per_clip=sessions.num_rows / kept if kept else 0.0,
        frames_per_session=float(np.mean(frames)) if frames else 0.0,
        dedup_keep=after_dedup / into_dedup if into_dedup else 1.0,
        session_sizes=sizes,
    )


# ================================================================================================
# (b) modelled GPU costs
# ================================================================================================


def qwen_visual_tokens(width: int, height: int, max_side: int, px_per_token: int) -> int:
    """Tokens for one image: shrunk to `max_side` (aspect kept, never enlarged, as vlm.shrink_image
    does), then Qwen-VL's smart_resize rounds each side to a multiple of px_per_token."""
    scale = min(1.0, max_side / max(width, height))
    w, h = width * scale, height * scale
    w_bar = max(px_per_token, round(w / px_per_token) * px_per_token)
    h_bar = max(px_per_token, round(h / px_per_token) * px_per_token)
    return (w_bar // px_per_token) * (h_bar // px_per_token)


@dataclass
class VlmCost:
    text_tokens: float
    visual_tokens: float
    output_tokens: float
    prefill_tok_s: float
    vit_tok_s: float
    decode_tok_s: float

    @property
    def gpu_s_per_request(self) -> float:
        # Summed, not overlapped: vLLM's chunked prefill hides some prefill under memory-bound
        # decode steps, so this errs slow (conservative).
        return ((self.text_tokens + self.visual_tokens) / self.prefill_tok_s + self.visual_tokens / self.vit_tok_s
                + self.output_tokens / self.decode_tok_s)


def vlm_cost(gpu: str, vlm: str, output_tokens: float, frame: tuple[int, int], max_side: int) -> VlmCost:
    from curation.prompts.templates import load_template

    g, m = GPUS[gpu], VLMS[vlm]
    prompt = load_template("transition_annotation").render(caption=None, feedback=None)
    text = len(prompt) / CHARS_PER_TEXT_TOKEN + CHAT_OVERHEAD_TOKENS
    visual = 2 * qwen_visual_tokens(*frame, max_side, int(m["px_per_token"]))  # both frames of the turn
    flops = g["bf16_tflops"] * 1e12 * PREFILL_MFU
    return VlmCost(
        text_tokens=text,
        visual_tokens=visual,
        output_tokens=output_tokens,
        prefill_tok_s=flops / (2 * m["lm_params"]),
        # one merged token = 4 ViT patches, each 2 x ViT params FLOPs
        vit_tok_s=flops / (2 * m["vit_params"] * 4),
        decode_tok_s=DECODE_TOKENS_PER_S_A100 * g["hbm_tbs"] / GPUS["A100"]["hbm_tbs"],
    )


# ================================================================================================
# (c) the sizing table
# ================================================================================================


@dataclass
class Row:
    stage: str
    pool: str  # "CPU" | "GPU"
    units: float
    unit: str
    s_per_unit: float  # core-seconds or GPU-seconds per unit
    source: str  # "measured" | "modelled" | ...
    phase: str = "stream"  # "stream" (before the dedup barrier) | "barrier" | "after"
    hours: float = 0.0  # core-hours or GPU-hours
    node_hours: float = 0.0
    wall_h: float = 0.0  # this stage alone on its whole pool


def sizing(args, fan: Fanout, rates: dict[str, float], vlm: VlmCost, prep_note: str = "measured") -> list[Row]:
    g = GPUS[args.gpu]
    clips_per_min = args.clips_per_min if args.clips_per_min is not None else fan.clips_per_min
    filter_keep = args.filter_keep if args.filter_keep is not None else fan.filter_keep
    dedup_keep = args.dedup_keep if args.dedup_keep is not None else fan.dedup_keep
    videos = args.videos_total
    frames = videos * args.video_s * args.fps
    clips = videos * args.video_s / 60 * clips_per_min
    sessions = clips * filter_keep * fan.sessions_per_clip
    turns = fan.turns_per_session
    annotated = sessions * ANNOTATE_KEEP
    kept = annotated * dedup_keep
    vs = g["vision_speedup"]
    rows = [
        Row("ingest", "CPU", videos, "videos", rates["ingest"], "measured"),
        Row("scene_split", "CPU", frames, "frames", rates["scene_split"], "measured"),
        Row("filter_quality", "CPU", clips, "clips", rates["filter_quality"], "measured"),
        Row("sample_frames", "CPU", sessions, "sessions", rates["sample_frames"], "measured"),
        Row("annotate: image prep", "CPU", sessions * turns * (1 + REASK_RATE), "requests", 2 * rates["annotate_prep"],
            prep_note),
        Row("annotate (VLM)", "GPU", sessions * turns * (1 + REASK_RATE), "requests", vlm.gpu_s_per_request, "modelled"),
        Row("ground: G-DINO", "GPU", annotated * 2 * turns, "images", GROUNDING_DINO_S_PER_IMAGE_A100 / vs, "modelled"),
        Row("ground: SAM2", "GPU", annotated * fan.frames_per_session, "images", SAM2_S_PER_IMAGE_A100 / vs, "modelled"),
        Row("embed: CLIP", "GPU", annotated, "images", CLIP_S_PER_IMAGE_A100 / vs, "modelled"),
        Row("embed: decode", "CPU", annotated, "images", rates["embed"], "measured (phash pass)"),
        Row("dedup search", "CPU", annotated, "samples", DEDUP_CORE_S_PER_1M * (annotated / 1e6) ** 0.5 / 1e6,
            "docs/dedup.md", phase="barrier"),
        Row("shard", "CPU", kept, "sessions", rates["shard"], "measured", phase="after"),
    ]
    cpu_cores = args.cpu_nodes * args.cores_per_node
    gpus = args.gpu_nodes * args.gpus_per_node
    for r in rows:
        if r.pool == "CPU":
            r.hours = r.units * r.s_per_unit / 3600 / CPU_EFFICIENCY
            r.node_hours = r.hours / args.cores_per_node
            r.wall_h = r.hours / cpu_cores
        else:
            r.hours = r.units * r.s_per_unit / 3600 / GPU_EFFICIENCY
            r.node_hours = r.hours / args.gpus_per_node
            r.wall_h = r.hours / gpus
    return rows


def fmt(x: float, spec: str) -> str:
    return "-" if math.isnan(x) else format(x, spec)


def human(x: float) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{suffix}"
    return f"{x:.3g}"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


# ================================================================================================
# (d) streaming overlap: real decode tasks feeding a sleep-based stand-in "GPU" actor
# ================================================================================================


def decode_clip_frames(batch):
    """Ray task: decode `frames` frames of each clip with PyAV (pts-verified seeking, as
    sample_frames does), downscaled to 256x144. Real CPU work on real footage. Each frame carries
    its share of the task's wall and CPU seconds, so the consumer can report how busy decode was."""
    from curation.media.decode import read_frames

    w0, c0 = time.perf_counter(), time.process_time()  # a task worker runs one task at a time
    out = []
    for item in batch.to_pylist():
        out += read_frames(item["source_uri"], item["indices"], item["frame_pts"], first_index=item["start"], size=(256, 144))
    n = len(out)
    return {"frame": np.stack(out), "busy": np.full(n, (time.perf_counter() - w0) / n),
            "cpu": np.full(n, (time.process_time() - c0) / n)}


class SleepStandIn:
    """SLEEP-BASED STAND-IN FOR A GPU MODEL, FOR SCHEDULING MEASUREMENTS ONLY: computes nothing,
    sleeps a fixed time per batch (as a GPU forward would keep the actor busy without using its CPU)."""

    def __init__(self, sleep_s: float):
        self.sleep_s = sleep_s

    def __call__(self, batch):
        time.sleep(self.sleep_s)
        return {"n": np.array([len(batch["frame"])]), "busy": np.array([batch["busy"].sum()]),
                "cpu": np.array([batch["cpu"].sum()])}


def overlap(runs: dict[str, StageRun], items_wanted: int, frames_per_item: int, consumer_batch: int,
            sleep_per_batch: float | None) -> dict[str, float]:
    import ray
    import ray.data

    clips = ok_rows(runs["scene_split"].stage_dir, ["source_uri", "start_frame", "end_frame", "frame_pts"]).to_pylist()
    base = []
    for c in clips:
        n = c["end_frame"] - c["start_frame"]
        pts = c["frame_pts"] if c["frame_pts"] is not None and len(c["frame_pts"]) == n else None
        idx = [c["start_frame"] + int((k + 0.5) * n / frames_per_item) for k in range(frames_per_item)]
        base.append({"source_uri": c["source_uri"], "indices": idx, "frame_pts": pts, "start": c["start_frame"]})
    items = [base[i % len(base)] for i in range(items_wanted)]
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    blocks = max(8, items_wanted // 4)

    def decoded():
        return ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            decode_clip_frames, batch_size=4, batch_format="pyarrow", num_cpus=0.5)

    def consumer(ds, sleep_s):
        return ds.map_batches(SleepStandIn, fn_constructor_kwargs={"sleep_s": sleep_s}, batch_size=consumer_batch,
                              batch_format="numpy", num_cpus=0.25, compute=ray.data.ActorPoolStrategy(size=1))

    def drain(ds) -> tuple[float, int, float, float]:
        """Wall seconds to pull every batch through, frames, decode task wall and CPU seconds."""
        t0 = time.perf_counter()
        n, busy, cpu = 0, 0.0, 0.0
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            n += int(b["n"].sum())
            busy += float(b["busy"].sum())
            cpu += float(b["cpu"].sum())
        return time.perf_counter() - t0, n, busy, cpu

    # decode alone (materialised: the stand-in alone then reads these blocks from the object store)
    t0 = time.perf_counter()
    pre = decoded().materialize()
    t_decode = time.perf_counter() - t0
    frames = pre.count()
    busy_alone, cpu_alone = float(pre.sum("busy")), float(pre.sum("cpu"))
    batches = math.ceil(frames / consumer_batch)
    sleep_s = sleep_per_batch if sleep_per_batch is not None else t_decode / batches
    t_consume, n1, _, _ = drain(consumer(pre, sleep_s))
    del pre
    t_pipe, n2, busy_pipe, cpu_pipe = drain(consumer(decoded(), sleep_s))
    return {"items": len(items), "frames": frames, "batches": batches, "sleep_s": sleep_s, "t_decode": t_decode,
            "t_consume": t_consume, "t_pipe": t_pipe, "n_consume": n1, "n_pipe": n2, "busy_alone": busy_alone,
            "cpu_alone": cpu_alone, "busy_pipe": busy_pipe, "cpu_pipe": cpu_pipe}


# ================================================================================================


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = parser.add_argument_group("measurement (a, d)")
    m.add_argument("--media", choices=("all", "examples", "tests"), default="all",
                   help="footage: the bundled examples/media clips, the other videos bundled for the tests (tests/data/videos), "
                        "or both (default)")
    m.add_argument("--videos", nargs="+", help="video files or directories instead of --media")
    m.add_argument("--work", type=Path, help="work directory (default: a temp dir, removed at the end)")
    m.add_argument("--replay-repeat", type=int, default=1, help="passes of the in-process CPU replay (more = steadier)")
    m.add_argument("--cluster-address", default=None,
                   help="cluster.address for the pipeline run (auto, ray://...): CPU sampling then only sees this node")
    m.add_argument("--no-overlap", action="store_true", help="skip (d)")
    m.add_argument("--overlap-items", type=int, default=120, help="(d): clips decoded (the run's clips, cycled)")
    m.add_argument("--overlap-frames", type=int, default=4, help="(d): frames decoded per clip")
    m.add_argument("--overlap-batch", type=int, default=16, help="(d): frames per stand-in batch")
    m.add_argument("--sleep-per-batch", type=float, default=None,
                   help="(d): stand-in seconds per batch (default: chosen so the stand-in alone takes as long as decode alone)")
    s = parser.add_argument_group("sizing model (b, c)")
    s.add_argument("--videos-total", type=float, default=1e6, help="source videos to size for")
    s.add_argument("--video-s", type=float, default=60.0, help="mean source video length, seconds")
    s.add_argument("--fps", type=float, default=30.0, help="mean source frame rate")
    s.add_argument("--cpu-nodes", type=int, default=16, help="CPU nodes: run ingest, scene_split, filter_quality, "
                   "sample_frames, frame prep, dedup, shard")
    s.add_argument("--cores-per-node", type=int, default=32, help="cores per CPU node")
    s.add_argument("--gpu-nodes", type=int, default=4, help="GPU nodes: run the VLM (vLLM), Grounding DINO, SAM2, CLIP")
    s.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per GPU node")
    s.add_argument("--gpu", choices=sorted(GPUS), default="H100", help="GPU type of the GPU nodes")
    s.add_argument("--vlm", choices=sorted(VLMS), default="qwen2.5-vl-7b", help="annotate VLM served with vLLM")
    s.add_argument("--output-tokens", type=float, default=VLM_OUTPUT_TOKENS, help="VLM answer tokens per request")
    s.add_argument("--clips-per-min", type=float, default=None, help="override the measured clips per source minute")
    s.add_argument("--filter-keep", type=float, default=None, help="override filter_quality's measured kept share")
    s.add_argument("--dedup-keep", type=float, default=None, help="override dedup's measured kept share")
    args = parser.parse_args()

    os.environ.setdefault("CURATE_CACHE", "/tmp/e2e-cache")
    from curation.core.config import compose
    from curation.core.ray_env import init_ray

    videos = source_videos(args)
    if not videos:
        sys.exit("no videos found (see --media / --videos)")
    work = args.work or Path(tempfile.mkdtemp(prefix="curate-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    try:
        listing = work / "sources.jsonl"
        listing.write_text("".join(json.dumps({"source_uri": str(v), "dataset": "bench"}) + "\n" for v in videos))
        run_dir = str(work / "run")
        shutil.rmtree(run_dir, ignore_errors=True)  # a reused --work must not resume (nothing would be timed)
        overrides = ["pipeline=sessions", "models=tiny", f"input={listing}", f"output={run_dir}", "progress=false",
                     "ingest.fragment_size=4"]
        if args.cluster_address:
            overrides.append(f"cluster.address={args.cluster_address}")
        cfg = compose(overrides)
        init_ray(cfg.cluster)
        import ray

        logging.getLogger("ray.data").setLevel(logging.WARNING)
        cluster_cpus = ray.cluster_resources().get("CPU", 0)
        print(f"== bench/e2e.py  {time.strftime('%Y-%m-%d %H:%M %Z')} ==")
        print(f"machine: {os.cpu_count()} CPUs, Ray cluster CPUs={cluster_cpus:g}, load average at start "
              f"{os.getloadavg()[0]:.2f}; Ray {ray.__version__}; CURATE_CACHE={os.environ['CURATE_CACHE']}")
        print(f"footage: {len(videos)} videos: " + ", ".join(v.name for v in videos))

        # ---- (a) pipeline through Ray -----------------------------------------------------------
        meter = None if args.cluster_address else TreeCpu().start()
        t0 = time.perf_counter()
        runs_list = run_pipeline(cfg, run_dir, meter)
        pipeline_wall = time.perf_counter() - t0
        if meter:
            meter.close()
        runs = {r.name: r for r in runs_list}
        fan = measure_fanout(runs)

        print(f"\n[a] MEASURED: pipeline=sessions models=tiny through Ray, {pipeline_wall:.1f} s for "
              f"{fan.videos} videos ({fan.source_s:.0f} s of footage)")
        print("    CPU s = driver + Ray workers of this process tree (/proc); busy cores = CPU s / wall;"
              " slots = max workers x num_cpus Ray may schedule")
        rows = []
        for r in runs_list:
            res = r.record["stage_config"]["resources"]
            slots = f"{res['concurrency'][1]}x{res['num_cpus']:g}" if r.name != "shard" else f"tasks x{res['num_cpus']:g}"
            note = GPU_IN_PRODUCTION.get(r.name, "global decision on the driver (finalize)" if r.name == "dedup" else "")
            rows.append([r.name, str(r.record["processed_total"]), str(r.record["counts"]["ok"]), f"{r.wall:.2f}",
                         f"{r.record['samples_per_s']:.2f}" if r.record.get("samples_per_s") else "-",
                         fmt(r.record["processed_total"] / r.work_cpu if r.work_cpu else math.nan, ".2f"),
                         fmt(r.work_cpu, ".1f"), fmt(r.cpu["workers"], ".1f"), fmt(r.cpu["ray_system"], ".1f"),
                         fmt(r.work_cpu / r.wall if r.wall else math.nan, ".2f"), slots, note])
        print_table(["stage", "in", "ok out", "wall s", "samples/s", "per CPU s", "CPU s", "in workers", "ray sys CPU s",
                     "busy cores", "slots", "note"], rows)

        replay = replay_cpu_stages(cfg, runs, work, args.replay_repeat)
        # per-unit CPU cost the model uses (steady state, one core)
        unit_of = {"ingest": "rows", "scene_split": "frames", "filter_quality": "rows", "sample_frames": "rows",
                   "annotate_prep": "rows", "embed": "rows", "shard": "rows"}
        label = {"ingest": "videos", "scene_split": "frames", "filter_quality": "clips", "sample_frames": "sessions",
                 "annotate_prep": f"frames > {IMAGE_MAX_SIDE} px shrunk", "embed": "images (phash)", "shard": "sessions"}
        empty = [k for k in replay if not replay[k].units[unit_of[k]]]
        if empty:
            sys.exit(f"no input rows reached {', '.join(empty)}: nothing to time; give more (or other) footage")
        rates = {k: replay[k].cpu / replay[k].units[unit_of[k]] for k in replay}
        print(f"\n[a] MEASURED baseline: the CPU stages in this process, one thread, same inputs "
              f"(x{args.replay_repeat}); models loaded first (setup CPU s, not in the rate)")
        rows = []
        for k in CPU_STAGES:
            rp = replay[k]
            n = rp.units[unit_of[k]]
            ray_cpu = runs[k].work_cpu if k in runs else math.nan
            extra = ""
            if k == "annotate_prep":
                extra = f"{rp.extra['large']} of the {rp.extra['images']} session frames are larger than {IMAGE_MAX_SIDE} px"
            if k == "scene_split":
                extra = (f"{rp.units['source_s'] / rp.cpu:.1f} source-s/core-s, "
                         f"{rp.units['rows'] / rp.cpu:.2f} videos/core-s")
            rows.append([k, f"{n:g} {label[k]}", f"{rp.setup_cpu:.2f}", f"{rp.cpu:.2f}", f"{rp.wall:.2f}",
                         f"{1000 * rates[k]:.2f}", f"{1 / rates[k]:.2f}",
                         f"{ray_cpu / (rp.cpu / args.replay_repeat):.2f}x" if not math.isnan(ray_cpu) else "-", extra])
        print_table(["stage", "units", "setup CPU s", "CPU s", "wall s", "CPU ms/unit", "units/core-s",
                     "Ray CPU / in-process", "also"], rows)
        print("    Ray CPU / in-process = the Ray run's driver+worker CPU for the stage over this replay's CPU: Ray's "
              "overhead at this scale (worker start, per-worker model setup, read/write tasks), shrinking with more input")
        print(f"\n    fan-out of this footage (MEASURED): {fan.clips_per_min:.2f} clips per source minute, "
              f"filter_quality keeps {fan.filter_keep:.0%}, {fan.sessions_per_clip:.2f} sessions per kept clip, "
              f"{fan.frames_per_session:.2f} frames = {fan.turns_per_session:.2f} turns per session, "
              f"dedup keeps {fan.dedup_keep:.0%}")
        filt = runs["filter_quality"].record["counts"]["dropped"]
        split = runs["scene_split"].record["counts"]["dropped"]
        print(f"    drops: scene_split {split or '-'}, filter_quality {filt or '-'}, dedup "
              f"{runs['dedup'].record['counts']['dropped'] or '-'}")

        # ---- (b) GPU assumptions ------------------------------------------------------------------
        g = GPUS[args.gpu]
        vlm = vlm_cost(args.gpu, args.vlm, args.output_tokens, FRAME_SIZE, IMAGE_MAX_SIDE)
        footage_tokens = [qwen_visual_tokens(w, h, IMAGE_MAX_SIDE, int(VLMS[args.vlm]["px_per_token"]))
                          for w, h in fan.session_sizes if w and h]
        vs = g["vision_speedup"]
        print(f"\n[b] MODELLED (ASSUMPTIONS, not measured): GPU stages on one {args.gpu}; constants and sources at the top of "
              "bench/e2e.py")
        print_table(["stage", "model", "per unit", "GPU s/unit", "units/s per GPU", "from"], [
            ["annotate", f"{args.vlm} on vLLM, bf16", "request (1 turn)", f"{vlm.gpu_s_per_request:.3f}",
             f"{1 / vlm.gpu_s_per_request:.2f}", "tokens below; prefill at MFU, decode anchored on a published A100 rate"],
            ["ground", "Grounding DINO Swin-T, fp32, bs 8", "image", f"{GROUNDING_DINO_S_PER_IMAGE_A100 / vs:.4f}",
             f"{vs / GROUNDING_DINO_S_PER_IMAGE_A100:.1f}", "paper 8.37 FPS (bs 1) -> estimate"],
            ["ground", "SAM2.1 hiera-tiny, fp32, bs 8", "image", f"{SAM2_S_PER_IMAGE_A100 / vs:.4f}",
             f"{vs / SAM2_S_PER_IMAGE_A100:.1f}", "sam2 README 91.2 FPS (A100, compiled) -> estimate"],
            ["embed", "CLIP ViT-B/32 image tower, fp32", "image", f"{CLIP_S_PER_IMAGE_A100 / vs:.5f}",
             f"{vs / CLIP_S_PER_IMAGE_A100:.0f}", "4.4 GFLOP/image -> estimate"],
        ])
        print(f"    VLM request: {vlm.text_tokens:.0f} text tokens (rendered prompt {CHARS_PER_TEXT_TOKEN:g} chars/token) + "
              f"{vlm.visual_tokens:.0f} visual tokens (2 frames of {FRAME_SIZE[0]}x{FRAME_SIZE[1]} at image_max_side="
              f"{IMAGE_MAX_SIDE}, {VLMS[args.vlm]['px_per_token']:g} px/token) -> {vlm.output_tokens:.0f} output tokens")
        print(f"    {args.gpu}: prefill {vlm.prefill_tok_s:,.0f} tok/s ({g['bf16_tflops']:g} TFLOP/s x {PREFILL_MFU}), "
              f"ViT {vlm.vit_tok_s:,.0f} tok/s, decode {vlm.decode_tok_s:,.0f} tok/s -> "
              f"{(vlm.text_tokens + vlm.visual_tokens) / vlm.prefill_tok_s:.3f} + {vlm.visual_tokens / vlm.vit_tok_s:.3f} + "
              f"{vlm.output_tokens / vlm.decode_tok_s:.3f} s per request")
        print(f"    per session: {fan.turns_per_session:.2f} requests (+{REASK_RATE:.0%} re-asks); Grounding DINO 2 images per "
              f"turn (upper bound: every turn names a changed entity in both frames); SAM2 every frame "
              f"({fan.frames_per_session:.2f}; upper bound: something found); CLIP 1 image. {ANNOTATE_KEEP:.0%} of sessions "
              f"keep a valid turn (assumed)")
        if footage_tokens:
            print(f"    (this run's session frames would be {np.mean(footage_tokens):.0f} visual tokens/image on average;"
                  f" the model uses {FRAME_SIZE[0]}x{FRAME_SIZE[1]} = {vlm.visual_tokens / 2:.0f})")

        # ---- (c) sizing ----------------------------------------------------------------------------
        prep = replay["annotate_prep"].extra
        table = sizing(args, fan, rates, vlm, "measured" if prep["large"] else
                       f"measured, but no frame > {IMAGE_MAX_SIDE} px here: pass-through only (too low for 720p)")
        cpu_cores = args.cpu_nodes * args.cores_per_node
        gpus = args.gpu_nodes * args.gpus_per_node
        print(f"\n[c] SIZING: {human(args.videos_total)} videos x {args.video_s:g} s at {args.fps:g} fps on "
              f"{args.cpu_nodes} CPU nodes x {args.cores_per_node} cores ({cpu_cores} cores) + {args.gpu_nodes} GPU nodes "
              f"x {args.gpus_per_node} {args.gpu} ({gpus} GPUs); CPU efficiency {CPU_EFFICIENCY}, GPU efficiency "
              f"{GPU_EFFICIENCY} (assumed)")
        rows = []
        for r in table:
            rows.append([r.stage, r.pool, f"{human(r.units)} {r.unit}",
                         f"{r.s_per_unit * 1000:.3g} ms" if r.s_per_unit < 1 else f"{r.s_per_unit:.3g} s",
                         f"{r.hours:,.0f} {'core-h' if r.pool == 'CPU' else 'GPU-h'}", f"{r.node_hours:,.1f}",
                         f"{r.wall_h:.2f}", r.source])
        print_table(["stage", "pool", "work", "cost/unit", "resource-hours", "node-hours", "wall h (alone)", "rate is"], rows)
        stream = [r for r in table if r.phase == "stream"]
        cpu_h = sum(r.wall_h for r in stream if r.pool == "CPU")
        gpu_h = sum(r.wall_h for r in stream if r.pool == "GPU")
        tail = sum(r.wall_h for r in table if r.phase != "stream")
        sequential = sum(r.wall_h for r in table)
        streamed = max(cpu_h, gpu_h) + tail
        pool = "GPU" if gpu_h >= cpu_h else "CPU"
        top = max((r for r in stream if r.pool == pool), key=lambda r: r.wall_h)
        print(f"    stage after stage (what `curate run` does today: each stage one Ray Data job): {sequential:.1f} h")
        print(f"    streamed (stages concurrent up to the dedup barrier, then dedup + shard): "
              f"max(CPU pool {cpu_h:.1f} h, GPU pool {gpu_h:.1f} h) + {tail:.2f} h = {streamed:.1f} h "
              f"({sequential / streamed:.2f}x faster)")
        share = top.wall_h / (gpu_h if pool == "GPU" else cpu_h)
        print(f"    BOTTLENECK: the {pool} pool, mostly {top.stage} ({share:.0%} of that pool's time)")
        other = cpu_h if pool == "GPU" else gpu_h
        if pool == "GPU":
            need = math.ceil(args.gpu_nodes * gpu_h / max(other, 1e-9))
            print(f"    to balance the pools: ~{need} GPU nodes of {args.gpus_per_node} {args.gpu} (GPU pool = CPU pool "
                  f"{other:.1f} h), or fewer CPU nodes: ~{max(1, math.ceil(args.cpu_nodes * cpu_h / gpu_h))} would keep up "
                  f"with {args.gpu_nodes} GPU nodes")
        else:
            need = math.ceil(args.cpu_nodes * cpu_h / max(other, 1e-9))
            print(f"    to balance the pools: ~{need} CPU nodes of {args.cores_per_node} cores (CPU pool = GPU pool "
                  f"{other:.1f} h)")

        # ---- (d) overlap -------------------------------------------------------------------------
        if not args.no_overlap:
            ov = overlap(runs, args.overlap_items, args.overlap_frames, args.overlap_batch, args.sleep_per_batch)
            print(f"\n[d] MEASURED streaming overlap: PyAV decode of {ov['items']} real clips x {args.overlap_frames} frames "
                  f"(Ray Data map_batches tasks, num_cpus=0.5) -> SLEEP-BASED STAND-IN 'GPU' stage, for scheduling "
                  f"measurements only (1 actor, num_cpus=0.25, {ov['sleep_s'] * 1000:.0f} ms sleep per "
                  f"{args.overlap_batch}-frame batch, {ov['batches']} batches)")
            print(f"    t_decode (decode alone, materialised)      = {ov['t_decode']:6.2f} s  ({ov['frames']} frames)")
            print(f"    t_consume (stand-in alone, pre-decoded)    = {ov['t_consume']:6.2f} s")
            print(f"    t_pipe (decode -> stand-in, streamed)      = {ov['t_pipe']:6.2f} s")
            print(f"    overlap (t_decode + t_consume) / t_pipe    = {(ov['t_decode'] + ov['t_consume']) / ov['t_pipe']:.2f}"
                  f"  (2.0 = perfect overlap of two equal stages, 1.0 = none)")
            print(f"    t_pipe / max(t_decode, t_consume)          = {ov['t_pipe'] / max(ov['t_decode'], ov['t_consume']):.2f}"
                  f"  (1.0 = the slower side fully hides the other)")
            print(f"    decode tasks: {ov['cpu_alone']:.1f} CPU s alone, {ov['cpu_pipe']:.1f} CPU s in the pipeline; running "
                  f"task-seconds / wall = {ov['busy_alone'] / ov['t_decode']:.2f} alone, {ov['busy_pipe'] / ov['t_pipe']:.2f} "
                  f"in the pipeline (decode tasks in flight on average)")
        print(f"\ntotal bench time {time.perf_counter() - t_start:.0f} s")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
