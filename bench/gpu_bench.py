"""The measurements of `bench/gpu_check.py`, imported once the environment is set up (carried
wheels, package map): every import here needs pydantic and `curation`.

Each model runs the way a stage worker runs it, without Ray: the stage object is built from its
config and `setup()` loads the model through the repository's backend (Ground: Grounding DINO +
SAM2; Embed: CLIP; Annotate: the local VLM). A feeder thread decodes stored frames (JPEG, as the
GPU stages receive them, made from a bundled 720p video with OpenCV) into batches while the
backend call runs on the main thread, the way a stage's batch loop runs.

GPU busy, two readings over the timed window:
  fwd  - time the GPU spent between the start and the end of the model's forward calls (CUDA
         events recorded by forward hooks), over the window's wall time. Preprocessing, the
         feeder, post-processing and, for `generate`, the host work between decoding steps are
         idle time. On the CPU the same hooks time forward calls with the wall clock.
  nvml - NVML's utilisation (share of time any kernel ran), sampled every 50 ms; GPU only.
"""

from __future__ import annotations

import gc
import io
import json
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import gpu_models
import numpy as np
import torch

from curation.backends.detect import DetectorConfig
from curation.backends.embed import EmbedConfig, make_embedder
from curation.backends.segment import SegmenterConfig
from curation.backends.vlm import VLMConfig, VLMError, VLMRequest, shrink_image
from curation.media.jpeg import decode_image, encode_jpeg
from curation.stages.annotate import Annotate
from curation.stages.ground import Ground

REPO = Path(__file__).resolve().parent.parent
VIDEO = REPO / "examples" / "media" / "pyscenedetect" / "testvideo.mp4"  # 1280x720 H.264, 720 frames
QUERIES = ["a man in a dark jacket", "the white car", "a tree"]  # entity descriptions, as annotate writes them
SECTIONS = ["ground", "embed", "annotate", "train"]
KEEP_BOXES = 10  # boxes per frame a real Grounding DINO keeps on a busy street scene, about


@dataclass
class Settings:
    device: str  # cuda or cpu
    profile: str  # full | tiny
    seconds: float  # timed window per model
    min_batches: int  # timed batches per model, however long they take
    vlm_new_tokens: int  # tokens generated per VLM request
    train_steps: int
    train_cases: int  # how many of train_step's cases to run (0: all)
    budget_s: float  # sections starting after this many seconds are skipped
    json_path: Path | None
    vlm_grammar: bool  # through LocalVLM (needs xgrammar), else model.generate without a grammar
    batch: int | None = None  # every backend's batch size; None: each config's default
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    env: dict[str, Any] = field(default_factory=dict)  # how imports were made to work


@dataclass
class Row:
    model: str
    stage: str
    path: str  # what ran: the backend call measured
    params_m: float
    dtype: str
    batch: int
    batches: int
    seconds: float
    frames_per_s: float
    tokens_per_s: float | None
    busy_fwd: float
    busy_nvml: float | None
    feeder_frames_per_s: float | None  # the feeder thread's own decode rate (while it was busy)
    peak_gib: float | None
    note: str = ""


# ---- frames and the feeder ---------------------------------------------------------------------
def stored_frames(count: int) -> list[bytes]:
    """`count` frames spread over the bundled 720p video, stored as JPEG as sample_frames stores them."""
    capture = cv2.VideoCapture(str(VIDEO))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = set(np.linspace(0, total - 1, count).astype(int).tolist())
    frames, index = [], 0
    while len(frames) < len(wanted):
        ok, bgr = capture.read()
        if not ok:
            break
        if index in wanted:
            frames.append(encode_jpeg(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        index += 1
    capture.release()
    if not frames:
        raise RuntimeError(f"OpenCV decoded no frame of {VIDEO}")
    return frames


class Feeder:
    """A CPU thread that makes batches ahead of the model, through a bounded queue."""

    def __init__(self, make_batch: Callable[[int], tuple[Any, int]], depth: int = 3):
        self._make = make_batch
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.busy_s = 0.0  # time spent making batches
        self.frames = 0
        self._thread = threading.Thread(target=self._run, name="gpu-check-feeder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            start = time.perf_counter()
            batch, frames = self._make(i)
            self.busy_s += time.perf_counter() - start
            self.frames += frames
            i += 1
            while not self._stop.is_set():
                try:
                    self._queue.put(batch, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def get(self) -> Any:
        return self._queue.get()

    def rate(self) -> float | None:
        """Frames decoded per second of the thread's work (None: it decodes nothing)."""
        return self.frames / self.busy_s if self.frames and self.busy_s else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def image_batches(frames: list[bytes], batch: int) -> Callable[[int], tuple[list[np.ndarray], int]]:
    def make(i: int) -> tuple[list[np.ndarray], int]:
        return [decode_image(frames[(i * batch + j) % len(frames)], "frame") for j in range(batch)], batch
    return make


# ---- GPU busy -----------------------------------------------------------------------------------
class BusyMeter:
    """Forward-call time of `module` over a window (CUDA events on the GPU, wall clock on the CPU),
    plus NVML utilisation samples on the GPU."""

    def __init__(self, module: torch.nn.Module, device: str):
        self.cuda = device.startswith("cuda")
        self._marks: list[Any] = []
        self._active = False
        self._hooks = [module.register_forward_pre_hook(lambda *_: self._mark()),
                       module.register_forward_hook(lambda *_: self._mark())]
        self._nvml = _NvmlSampler() if self.cuda else None

    def _mark(self) -> None:
        if not self._active:
            return
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())

    def start(self) -> None:
        self._sync()
        self._marks = []
        self._active = True
        self._window = self._now()
        if self._nvml:
            self._nvml.start()

    def stop(self) -> tuple[float, float | None]:
        """(fwd busy fraction, NVML mean utilisation or None)."""
        self._sync()
        end = self._now()
        self._active = False
        nvml = self._nvml.stop() if self._nvml else None
        for hook in self._hooks:
            hook.remove()
        if len(self._marks) % 2:  # a forward still open at the end: nothing to pair it with
            self._marks.pop()
        if self.cuda:
            self._sync()
            busy = sum(a.elapsed_time(b) for a, b in zip(self._marks[::2], self._marks[1::2]))
            wall = self._window.elapsed_time(end)
        else:
            busy = sum(b - a for a, b in zip(self._marks[::2], self._marks[1::2]))
            wall = end - self._window
        return (busy / wall if wall > 0 else 0.0), nvml

    def _now(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


class _NvmlSampler:
    """Mean NVML GPU utilisation over a window; None where NVML cannot be read."""

    def __init__(self):
        self._handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
            try:
                self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
            except pynvml.NVMLError:
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._read = lambda: pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            self._read()
        except Exception:  # noqa: BLE001 - no NVML (library, permissions): the fwd reading stands alone
            self._handle = None

    def start(self) -> None:
        self._samples: list[float] = []
        self._stop = threading.Event()
        if self._handle is not None:
            self._thread = threading.Thread(target=self._run, name="gpu-check-nvml", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._samples.append(self._read() / 100)

    def stop(self) -> float | None:
        self._stop.set()
        if self._handle is None:
            return None
        self._thread.join()
        return sum(self._samples) / len(self._samples) if self._samples else None


# ---- one timed run ------------------------------------------------------------------------------
def timed(call: Callable[[Any], tuple[int, int]], feeder: Feeder, meter: BusyMeter, s: Settings) -> dict[str, Any]:
    """One warm-up batch, then batches until both the window and min_batches are done.
    `call(batch)` returns (frames, generated tokens)."""
    call(feeder.get())
    meter.start()
    start = time.perf_counter()
    batches = frames = tokens = 0
    while batches < s.min_batches or time.perf_counter() - start < s.seconds:
        done_frames, done_tokens = call(feeder.get())
        frames += done_frames
        tokens += done_tokens
        batches += 1
    busy, nvml = meter.stop()
    elapsed = time.perf_counter() - start
    feeder.close()
    return dict(batches=batches, seconds=elapsed, frames_per_s=frames / elapsed, tokens_per_s=tokens / elapsed if tokens else None,
                busy_fwd=busy, busy_nvml=nvml, feeder_frames_per_s=feeder.rate())


def params_m(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def dtype_of(module: torch.nn.Module) -> str:
    return str(next(module.parameters()).dtype).removeprefix("torch.")


# ---- the models ---------------------------------------------------------------------------------
def model_refs(s: Settings, work: Path) -> dict[str, Any]:
    """name -> what its config's `model` names, building full-size checkpoints as they are asked for."""
    if s.profile == "tiny":
        return dict(gpu_models.TINY)
    builders = {"grounding_dino": gpu_models.build_grounding_dino_t, "sam2": gpu_models.build_sam2_small,
                "clip": gpu_models.build_clip_b32}
    refs = {}
    for name, build in builders.items():
        refs[name] = lambda name=name, build=build: (build(work / name, s.device), str(work / name))[1]
    return refs


def batched(s: Settings, key: str) -> dict[str, int]:
    return {key: s.batch} if s.batch else {}


def ref_of(refs: dict[str, Any], name: str) -> str:
    ref = refs[name]
    return ref() if callable(ref) else ref


def run_ground(s: Settings, frames: list[bytes], refs: dict[str, Any]) -> list[Row]:
    """The ground stage's two models, loaded by `Ground.setup()`: Grounding DINO on each frame's
    queries, then SAM2 on three boxes per frame."""
    stage = Ground(detector=DetectorConfig(model=ref_of(refs, "grounding_dino"), device=s.device, **batched(s, "batch_size")),
                   segmenter=SegmenterConfig(model=ref_of(refs, "sam2"), device=s.device, **batched(s, "batch_size")))
    reset_peak(s)
    stage.setup()
    detector, segmenter = stage._detector, stage._segmenter  # what setup() loaded, as the stage's batch call uses them
    rows = []

    batch = stage.detector.batch_size
    feeder = Feeder(image_batches(frames, batch))
    calibrate_box_threshold(detector, feeder.get())
    found = [0, 0]  # boxes, frames

    def detect(images: list[np.ndarray]) -> tuple[int, int]:
        found[0] += sum(map(len, detector.detect(images, [QUERIES] * len(images))))
        found[1] += len(images)
        return len(images), 0

    result = timed(detect, feeder, BusyMeter(detector.model, s.device), s)
    per_frame = found[0] / max(1, found[1])
    rows.append(Row(model="grounding_dino", stage="ground", path="GroundingDinoDetector.detect", params_m=params_m(detector.model),
                    dtype=dtype_of(detector.model), batch=batch, peak_gib=peak(s),
                    note=f"{len(QUERIES)} queries/frame, box_threshold {detector.cfg.box_threshold:.3f} (calibrated), "
                         f"{per_frame:.1f} boxes/frame", **result))

    batch = stage.segmenter.batch_size
    reset_peak(s)
    meter = BusyMeter(segmenter.model, s.device)

    def segment(images: list[np.ndarray]) -> tuple[int, int]:
        height, width = images[0].shape[:2]
        boxes = [(0.1 * width, 0.2 * height, 0.4 * width, 0.9 * height), (0.5 * width, 0.3 * height, 0.9 * width, 0.8 * height),
                 (0.3 * width, 0.1 * height, 0.6 * width, 0.5 * height)]
        return len(segmenter.segment(images, [boxes] * len(images))), 0

    result = timed(segment, Feeder(image_batches(frames, batch)), meter, s)
    rows.append(Row(model="sam2", stage="ground", path="Sam2Segmenter.segment", params_m=params_m(segmenter.model),
                    dtype=dtype_of(segmenter.model), batch=batch, peak_gib=peak(s), note="3 boxes per frame", **result))
    return rows


def calibrate_box_threshold(detector: Any, images: list[np.ndarray], keep: int = KEEP_BOXES) -> None:
    """Random weights put all 900 of Grounding DINO-T's boxes above the default 0.35, and decoding
    900 boxes per frame on the CPU would swamp the measurement; a real checkpoint finds a few. So
    the threshold becomes the median over a batch of each frame's `keep`-th best score."""
    scores = [sorted((d.score for d in found), reverse=True) for found in detector.detect(images, [QUERIES] * len(images))]
    kth = sorted(f[min(keep, len(f)) - 1] for f in scores if f)
    if kth:
        detector.cfg.box_threshold = float(kth[len(kth) // 2])


def run_embed(s: Settings, frames: list[bytes], refs: dict[str, Any]) -> list[Row]:
    """CLIP image embeddings through `Embed.setup()` and the stage's embedder. Where PyAV is missing
    (the GPU machine) the Embed stage cannot be imported (curation.media.representative imports the
    PyAV decoder at module level), so the embedder is made the way the stage makes it."""
    cfg = EmbedConfig(backend="transformers", model=ref_of(refs, "clip"), device=s.device, **batched(s, "batch_size"))
    reset_peak(s)
    try:
        from curation.stages.embed import Embed
    except ModuleNotFoundError as e:
        embedder, stage_note = make_embedder(cfg), f"Embed stage not importable ({e.name} missing): make_embedder(cfg)"
    else:
        stage = Embed(embedder=cfg)
        stage.setup()
        embedder, stage_note = stage.loaded_embedder(), "Embed.setup()"
    batch = cfg.batch_size
    meter = BusyMeter(embedder.model.vision_model, s.device)  # get_image_features runs the vision tower, not forward()
    result = timed(lambda images: (len(embedder.embed_images(images)), 0), Feeder(image_batches(frames, batch)), meter, s)
    row = Row(model="clip", stage="embed", path="HFClipEmbedder.embed_images", params_m=params_m(embedder.model),
              dtype=dtype_of(embedder.model), batch=batch, peak_gib=peak(s), note=stage_note, **result)
    return [row]


def run_vlm(s: Settings, frames: list[bytes], work: Path) -> list[Row]:
    """The annotate stage's request (its real prompt template, two frames per request) through the
    local VLM: `LocalVLM` with its xgrammar-constrained batch when xgrammar is importable, else the
    same model and processor calls with `generate` unconstrained (xgrammar is not on the GPU machine)."""
    reset_peak(s)
    model = None
    if s.profile == "tiny":
        ref = gpu_models.TINY["qwen_vl"]
    else:
        ref = str(work / "qwen_vl")
        model = gpu_models.build_qwen25_vl_3b(work / "qwen_vl", s.device, save_weights=s.vlm_grammar)
    vlm = VLMConfig(backend="local", model=ref, device=s.device, cache=False, max_tokens=s.vlm_new_tokens,
                    **batched(s, "local_batch_size"))
    stage = Annotate(vlm=vlm)
    template = stage.prompt()
    prompt = template.render(caption=None, feedback=None)
    batch = vlm.local_batch_size

    def request_batch(i: int) -> tuple[list[tuple[bytes, bytes]], int]:
        pairs = [(frames[(i * batch + j) % len(frames)], frames[(i * batch + j + 1) % len(frames)]) for j in range(batch)]
        return pairs, 2 * batch

    if s.vlm_grammar:
        model = None  # saved: the backend loads its own copy
        stage.setup()
        backend = stage._backend  # what setup() opened, as the stage's `ask` uses it
        backend._loop().run(backend._ensure_open())  # open() only logs a failure; here it must raise
        module = backend._model

        def feed(i: int) -> tuple[list[tuple[bytes, bytes]], int]:  # the backend shrinks and decodes them in its own threads
            return request_batch(i)[0], 0

        def call(pairs: list[tuple[bytes, bytes]]) -> tuple[int, int]:
            replies = backend.generate_many([VLMRequest(prompt, list(p), template.schema) for p in pairs])
            failed = [r for r in replies if isinstance(r, VLMError)]
            if failed:
                raise RuntimeError(f"VLM request failed: {failed[0]}")
            return 2 * len(pairs), sum(r.usage.completion_tokens for r in replies)

        path = "LocalVLM.generate_many (xgrammar)"
    else:
        module, processor = load_vlm(ref, s.device, model)

        def feed(i: int) -> tuple[list[Any], int]:  # what LocalVLM does per request before batching: shrink, decode
            pairs, n = request_batch(i)
            return [decoded(jpeg, vlm.image_max_side) for pair in pairs for jpeg in pair], n

        def call(images: list[Any]) -> tuple[int, int]:
            return generate_unconstrained(module, processor, prompt, images, s.vlm_new_tokens)

        path = "model.generate, no grammar (no xgrammar)"
    meter = BusyMeter(module, s.device)
    result = timed(call, Feeder(feed), meter, s)
    prompt_tokens = len(load_processor(ref).tokenizer(prompt)["input_ids"])
    row = Row(model="qwen_vl", stage="annotate", path=path, params_m=params_m(module), dtype=dtype_of(module), batch=batch,
              peak_gib=peak(s), note=f"2 frames/request, {prompt_tokens} prompt text tokens, <= {s.vlm_new_tokens} new tokens",
              **result)
    if s.vlm_grammar:
        backend.close()
    return [row]


def load_processor(ref: str) -> Any:
    from transformers import AutoProcessor

    from curation.backends.models import resolve_model

    return AutoProcessor.from_pretrained(resolve_model(ref).path)


def load_vlm(ref: str, device: str, model: Any) -> tuple[Any, Any]:
    """The model and processor as LocalVLM._load makes them (the in-memory model when given)."""
    from transformers import AutoModelForImageTextToText

    from curation.backends.models import resolve_model
    from curation.backends.vlm_local import pick_dtype

    if model is None:
        path = resolve_model(ref).path
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=pick_dtype("auto", device)).to(device).eval()
    processor = load_processor(ref)
    processor.tokenizer.padding_side = "left"
    return model, processor


def decoded(jpeg: bytes, max_side: int | None) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(shrink_image(jpeg, max_side))).convert("RGB")


def generate_unconstrained(model: Any, processor: Any, prompt: str, images: list[Any], new_tokens: int) -> tuple[int, int]:
    """LocalVLM._generate's inputs (its chat template, two images per request), greedy, exactly
    `new_tokens` per request."""
    content = [{"type": "text", "text": prompt}, {"type": "image"}, {"type": "image"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    requests = len(images) // 2
    inputs = processor(text=[text] * requests, images=images, padding=True, return_tensors="pt").to(model.device)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             temperature=None, top_p=None, top_k=None)
    generated = out.shape[1] - inputs["input_ids"].shape[1]
    return len(images), generated * requests


# ---- the trainer --------------------------------------------------------------------------------
def run_train(s: Settings) -> list[dict[str, Any]]:
    """bench/train_step.py's cases in-process: `gpu` on CUDA (DiT-B, bf16 autocast), `cpu` else."""
    import train_step

    device = torch.device(s.device)
    bf16 = device.type == "cuda"
    matmul = train_step.matmul_rate(device, torch.bfloat16 if bf16 else torch.float32, 8192 if bf16 else 512)
    name = torch.cuda.get_device_name() if bf16 else "cpu"
    peak_flops = next((v for k, v in train_step.PEAKS.items() if k in name), None) if bf16 else None
    cases = train_step.CASES["gpu" if bf16 else "cpu"]
    rows = []
    for case in cases[: s.train_cases or None]:
        result = train_step.run_case(case, device, bf16, s.train_steps)
        size, channels, shape, _, batch, refs, _ = case
        rows.append(dict(case=f"{size} {channels}x{'x'.join(map(str, shape))} batch {batch} refs {refs}", **result,
                         matmul_flops_per_s=matmul, mfu_vs_matmul=result["flops_per_s"] / matmul,
                         mfu_vs_peak=result["flops_per_s"] / peak_flops if peak_flops else None))
    for case in train_step.SESSION_CASES["gpu" if bf16 else "cpu"][: s.train_cases or None]:  # multi-turn sessions
        result = train_step.run_session_case(case, device, bf16, s.train_steps)
        size, channels, (h, w), _, sessions, frames, _ = case
        flops = result["sequence_flops_per_s"]
        rows.append(dict(case=f"{size} sessions {sessions}x{frames} frames {channels}x{h}x{w}", **result,
                         tokens_per_s=result["sequence_tokens_per_s"], flops_per_s=flops, matmul_flops_per_s=matmul,
                         mfu_vs_matmul=flops / matmul, mfu_vs_peak=flops / peak_flops if peak_flops else None,
                         sequence_vs_prefix_turns=result["sequence_turns_per_s"] / result["prefix_turns_per_s"]))
    return rows


# ---- memory ---------------------------------------------------------------------------------------
def reset_peak(s: Settings) -> None:
    if s.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak(s: Settings) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if s.device.startswith("cuda") else None


def release(s: Settings) -> None:
    gc.collect()
    if s.device.startswith("cuda"):
        torch.cuda.empty_cache()


# ---- the report -----------------------------------------------------------------------------------
COLUMNS = ["model", "stage", "params_m", "dtype", "batch", "frames_per_s", "tokens_per_s", "busy_fwd", "busy_nvml",
           "feeder_frames_per_s", "peak_gib", "path", "note"]


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}" if isinstance(value, float) else str(value)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def format_row(row: Row) -> str:
    d = asdict(row)
    return (f"{d['model']:<15} {d['stage']:<9} {d['params_m']:>8.1f} {d['dtype']:<9} {d['batch']:>5} {d['frames_per_s']:>9.2f} "
            f"{fmt(d['tokens_per_s']):>10} {pct(d['busy_fwd']):>8} {pct(d['busy_nvml']):>6} {fmt(d['feeder_frames_per_s']):>10} "
            f"{fmt(d['peak_gib']):>8}  {d['path']}; {d['note']}")


HEADER = (f"{'model':<15} {'stage':<9} {'params_M':>8} {'dtype':<9} {'batch':>5} {'frames/s':>9} {'tokens/s':>10} "
          f"{'busy_fwd':>8} {'nvml':>6} {'feeder_f/s':>10} {'peak_GiB':>8}  path; note")


def run(s: Settings) -> dict[str, Any]:
    """Every section in order, the JSON rewritten after each (a timed-out run keeps what it did)."""
    import tempfile

    import transformers

    transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    report: dict[str, Any] = dict(
        device=torch.cuda.get_device_name() if s.device.startswith("cuda") else "cpu", torch=torch.__version__,
        transformers=transformers.__version__, profile=s.profile, settings={k: str(v) for k, v in asdict(s).items() if k != "env"},
        env=s.env, models=[], train=[], skipped=[], errors={})
    work = Path(tempfile.mkdtemp(prefix="gpu_check_models_"))
    frames = stored_frames(24)
    refs = model_refs(s, work)
    print(f"device {report['device']}, torch {torch.__version__}, transformers {transformers.__version__}, profile {s.profile}, "
          f"{len(frames)} frames of {VIDEO.name}", flush=True)
    print(HEADER, flush=True)
    sections: list[tuple[str, Callable[[], Any]]] = [
        ("ground", lambda: run_ground(s, frames, refs)),
        ("embed", lambda: run_embed(s, frames, refs)),
        ("annotate", lambda: run_vlm(s, frames, work)),
        ("train", lambda: run_train(s)),
    ]
    for name, section in sections:
        if name not in s.sections:
            continue
        if time.perf_counter() - started > s.budget_s:
            report["skipped"].append(name)
            print(f"{name}: skipped, past the {s.budget_s:.0f} s budget", flush=True)
            continue
        try:
            out = section()
        except Exception as e:  # noqa: BLE001 - one broken section must not cost the others' figures
            report["errors"][name] = f"{type(e).__name__}: {e}"
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
            continue
        finally:
            release(s)  # the section's models are unreachable once it returns
        if name == "train":
            report["train"] = out
            for t in out:
                peak_part = f", MFU vs peak {t['mfu_vs_peak']:.1%}" if t["mfu_vs_peak"] else ""
                rate = (f"{t['sequence_turns_per_s']:.1f} turns/s = {t['sequence_vs_prefix_turns']:.2f}x per-prefix turns"
                        if "sequence_vs_prefix_turns" in t else f"{t['steps_per_s']:.2f} steps/s")
                print(f"train {t['case']}: {t['params_m']:.1f}M params, {rate}, {t['tokens_per_s']:,.0f} tokens/s, "
                      f"MFU vs matmul {t['mfu_vs_matmul']:.1%}{peak_part}", flush=True)
        else:
            for row in out:
                report["models"].append(asdict(row))
                print(format_row(row), flush=True)
        report["elapsed_s"] = time.perf_counter() - started
        write(report, s.json_path)
    shutil.rmtree(work, ignore_errors=True)
    report["elapsed_s"] = time.perf_counter() - started
    write(report, s.json_path)
    print(f"done in {report['elapsed_s']:.1f} s" + (f"; JSON: {s.json_path}" if s.json_path else ""), flush=True)
    return report


def write(report: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
