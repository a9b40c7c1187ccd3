"""Training-step throughput of the DiT editor: forward + backward + AdamW on synthetic latents.

Per case (model size, latent shape, batch): steps/s, tokens/s (target tokens, plus reference tokens
when the case has some), and model FLOPs utilisation. FLOPs per step are counted, not estimated:
`torch.utils.flop_counter.FlopCounterMode` over one real step (matmuls, attention, convolutions).

Multi-turn sessions (VINCIE): a batch of whole-session sequences (clean context and noised targets of
every turn in one pass, `flow.session_losses`) against the same sessions as per-turn examples with
every earlier frame as reference tokens (one pass per prefix, the only way the per-turn trainer can
give a turn its whole context). Both print turns/s (targets trained per second) and their ratio.

Baselines, measured in the same run on the same device and dtype:
  matmul  - a square `--matmul-size` GEMM's achieved FLOP/s: what this device really sustains.
            MFU vs matmul = achieved step FLOP/s / this.
  peak    - the datasheet dense bf16 peak (`--peak-tflops`, default from the GPU name: H100/H200
            989, A100 312, L40S 362); GPUs only. MFU vs peak = achieved step FLOP/s / this.

    .venv/bin/python bench/train_step.py                   # CPU: tiny in pixel space (fp32)
    .venv/bin/python bench/train_step.py --cases gpu       # GPU: B in bf16 autocast, image and video latents
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from curation.train import flow
from curation.train.model import build_model

# name: (size, channels, (T, H, W) latents, patch, batch, reference frames, text tokens)
CASES = {
    "cpu": [("tiny", 3, (1, 256, 256), (1, 8, 8), 4, 0, 64), ("tiny", 3, (17, 128, 224), (1, 8, 8), 1, 0, 64)],
    "gpu": [("B", 4, (1, 64, 64), (1, 2, 2), 32, 0, 128),        # 512² images through a /8 VAE
            ("B", 4, (1, 64, 64), (1, 2, 2), 32, 1, 128),        # + a reference image (Kiwi-Edit quads)
            ("B", 16, (21, 60, 104), (1, 2, 2), 1, 0, 128)],     # 81 x 480x832 frames through Wan's VAE
}
# name: (size, channels, (h, w) latents, patch, sessions per batch, frames per session, text tokens per piece)
SESSION_CASES = {
    "cpu": [("tiny", 3, (64, 64), (1, 8, 8), 2, 6, 16), ("tiny", 3, (32, 32), (1, 8, 8), 2, 20, 16)],
    "gpu": [("B", 16, (32, 32), (1, 2, 2), 4, 6, 32),    # 512² frames through a /16 VAE, 6-frame sessions
            ("B", 16, (32, 32), (1, 2, 2), 1, 20, 32)],  # one 20-frame session (VINCIE's longest)
}
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(step: Callable[[], None], device: torch.device, steps: int) -> tuple[float, float]:
    """(FLOPs of one step, counted; seconds per step over `steps` timed steps after a warm-up)."""
    with FlopCounterMode(display=False) as counter:
        step()
    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return counter.get_total_flops(), (time.perf_counter() - start) / steps


def run_case(case, device: torch.device, bf16: bool, steps: int) -> dict[str, float]:
    size, channels, (t, h, w), patch, batch, refs, text_tokens = case
    torch.manual_seed(0)
    model = build_model(size, in_channels=channels, patch_size=patch, text_dim=768 if size != "tiny" else 64).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x1 = torch.randn(batch, channels, t, h, w, device=device)
    text_dim = model.config.text_dim
    conditions = {"text": torch.randn(batch, text_tokens, text_dim, device=device),
                  "text_mask": torch.ones(batch, text_tokens, dtype=torch.bool, device=device),
                  "source": torch.randn_like(x1),
                  "reference": torch.randn(batch, channels, refs, h, w, device=device) if refs else None}
    generator = torch.Generator().manual_seed(0)
    config = flow.FlowConfig()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = flow.training_losses(model, x1, conditions, config, generator)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    flops, elapsed = time_step(step, device, steps)
    pt, ph, pw = patch
    tokens = batch * (t // pt) * (h // ph) * (w // pw) * (1 + refs / max(t, 1) if refs else 1)
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "steps_per_s": 1 / elapsed,
            "tokens_per_s": tokens / elapsed, "flops_per_s": flops / elapsed, "flops_per_step": flops}


def session_layout(frames: int, seed: int = 0, maps: bool = True) -> dict[str, torch.Tensor]:
    """Segment structure of one session planned as the loader plans it (RoE maps, the paper's
    dropout), from 1-pixel stand-in frames: only the layout matters here."""
    import random

    import numpy as np

    from curation.train.data_config import SessionConfig
    from curation.train.sessions import TurnData, collate_sessions, plan_sequences

    pixel = [np.zeros((1, 1, 1, 3), np.uint8) for _ in range(frames)]
    turns = [TurnData(f"turn {k}", "none", "found", pixel[0], pixel[0]) for k in range(frames - 1)]
    config = SessionConfig(roe_probability=float(maps), max_tokens=1 << 20)
    (sequence,) = plan_sequences("bench", pixel, turns, config, 1, random.Random(seed))
    return collate_sessions([sequence])


def _session_batch(layouts: list[dict], text_tokens: int, text_dim: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Planned layouts padded into one batch's `session` dict, with random text states."""
    length = max(layout["frames"].shape[2] for layout in layouts)
    session: dict[str, torch.Tensor] = {}
    for name, fill in (("kind", 0), ("turn", 0), ("order", 0), ("task", -1), ("valid", False)):
        key = name if name == "valid" else f"segment_{name}"
        rows = [torch.nn.functional.pad(layout[key], (0, length - layout[key].shape[1]), value=fill) for layout in layouts]
        session[name] = torch.cat(rows).to(device)
    pieces = [(i, t) for i, layout in enumerate(layouts) for t in layout["texts"][0]]
    session.update(text=torch.randn(len(pieces), text_tokens, text_dim, device=device),
                   text_mask=torch.ones(len(pieces), text_tokens, dtype=torch.bool, device=device),
                   text_owner=torch.tensor([i for i, _ in pieces]), text_turn=torch.tensor([t["turn"] for _, t in pieces]),
                   text_order=torch.tensor([t["order"] for _, t in pieces]),
                   text_instruction=torch.tensor([t["instruction"] for _, t in pieces]))
    return session


def run_session_case(case, device: torch.device, bf16: bool, steps: int) -> dict[str, float]:
    """Whole-session sequences (with RoE maps as VINCIE trains, and without: the same frames the
    per-prefix examples hold) vs per-prefix examples of the same sessions: turns/s and tokens/s."""
    size, channels, (h, w), patch, sessions, frames, text_tokens = case
    torch.manual_seed(0)
    text_dim = 768 if size != "tiny" else 64
    model = build_model(size, in_channels=channels, patch_size=patch, text_dim=text_dim).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    config = flow.FlowConfig()
    per_frame = (h // patch[1]) * (w // patch[2])

    def sequence_step(maps: bool):
        session = _session_batch([session_layout(frames, seed, maps) for seed in range(sessions)], text_tokens, text_dim, device)
        x1 = torch.randn(sessions, channels, session["task"].shape[1], h, w, device=device)

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = flow.session_losses(model, x1, session, config, generator)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        trained = int(((session["task"] >= 0) & session["valid"]).sum())
        return step, trained, int(session["valid"].sum()) * per_frame

    def prefix_step() -> None:  # turn k of every session: frame k+1 from frame k, frames 0..k-1 as references
        for k in range(frames - 1):
            target = torch.randn(sessions, channels, 1, h, w, device=device)
            conditions = {"text": torch.randn(sessions, text_tokens, text_dim, device=device),
                          "text_mask": torch.ones(sessions, text_tokens, dtype=torch.bool, device=device),
                          "source": torch.randn_like(target),
                          "reference": torch.randn(sessions, channels, k, h, w, device=device) if k else None}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = flow.training_losses(model, target, conditions, config, generator)["loss"]
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    prefix_tokens = sessions * sum(k + 1 for k in range(frames - 1)) * per_frame  # target (+ source) + k references
    variants = {"sequence": sequence_step(True), "plain": sequence_step(False),
                "prefix": (prefix_step, sessions * (frames - 1), prefix_tokens)}
    result = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    for name, (step, trained, tokens) in variants.items():
        flops, elapsed = time_step(step, device, steps)
        result.update({f"{name}_turns_per_s": trained / elapsed, f"{name}_tokens_per_s": tokens / elapsed,
                       f"{name}_flops_per_s": flops / elapsed})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", choices=sorted(CASES), default=None, help="default: gpu on CUDA, else cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 5 on CPU, 20 on GPU)")
    parser.add_argument("--matmul-size", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cases = args.cases or ("gpu" if device.type == "cuda" else "cpu")
    bf16 = device.type == "cuda"
    dtype = torch.bfloat16 if bf16 else torch.float32
    matmul = matmul_rate(device, dtype, args.matmul_size or (8192 if device.type == "cuda" else 2048))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAKS.items() if k in name), None)
    print(f"device: {name}, {'bf16 autocast' if bf16 else 'fp32'}; matmul baseline {matmul / 1e12:.3f} TFLOP/s"
          + (f"; datasheet peak {peak / 1e12:.0f} TFLOP/s" if peak and device.type == "cuda" else ""))
    for case in CASES[cases]:
        result = run_case(case, device, bf16, args.steps or (20 if device.type == "cuda" else 5))
        size, channels, shape, patch, batch, refs, _ = case
        line = (f"{size:>4} latents {channels}x{'x'.join(map(str, shape))} patch {'x'.join(map(str, patch))} batch {batch}"
                f" refs {refs}: {result['params_m']:.1f}M params, {result['steps_per_s']:.2f} steps/s, "
                f"{result['tokens_per_s']:,.0f} tokens/s, {result['flops_per_step'] / 1e12:.3f} TFLOP/step, "
                f"MFU vs matmul {result['flops_per_s'] / matmul:.1%}")
        if peak and device.type == "cuda":
            line += f", MFU vs peak {result['flops_per_s'] / peak:.1%}"
        print(line, flush=True)
    for case in SESSION_CASES[cases]:
        result = run_session_case(case, device, bf16, args.steps or (20 if device.type == "cuda" else 3))
        size, channels, (h, w), patch, sessions, frames, _ = case
        print(f"{size:>4} sessions: {sessions} x {frames} frames, latents {channels}x{h}x{w}, patch {'x'.join(map(str, patch))}",
              flush=True)
        for name, label in (("sequence", "sequence, RoE maps (VINCIE)"), ("plain", "sequence, frames only"),
                            ("prefix", "per-prefix turns (baseline)")):
            line = (f"     {label:<28} {result[f'{name}_turns_per_s']:8.1f} turns/s {result[f'{name}_tokens_per_s']:>12,.0f} "
                    f"tokens/s  MFU vs matmul {result[f'{name}_flops_per_s'] / matmul:.1%}")
            if peak and device.type == "cuda":
                line += f", vs peak {result[f'{name}_flops_per_s'] / peak:.1%}"
            if name != "prefix":
                line += f"  = {result[f'{name}_turns_per_s'] / result['prefix_turns_per_s']:.2f}x baseline turns/s"
            print(line, flush=True)


if __name__ == "__main__":
    main()
