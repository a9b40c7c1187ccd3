"""Training-step throughput of the DiT editor: forward + backward + AdamW on synthetic latents.

Per case (model size, latent shape, batch): steps/s, tokens/s (target tokens, plus reference tokens
when the case has some), and model FLOPs utilisation. FLOPs per step are counted, not estimated:
`torch.utils.flop_counter.FlopCounterMode` over one real step (matmuls, attention, convolutions).

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

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    elapsed = (time.perf_counter() - start) / steps
    pt, ph, pw = patch
    tokens = batch * (t // pt) * (h // ph) * (w // pw) * (1 + refs / max(t, 1) if refs else 1)
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "steps_per_s": 1 / elapsed,
            "tokens_per_s": tokens / elapsed, "flops_per_s": flops / elapsed, "flops_per_step": flops}


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


if __name__ == "__main__":
    main()
