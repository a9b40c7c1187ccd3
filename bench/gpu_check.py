"""GPU check: the pipeline's models at real size on the lent GPU machine, in one process, no Ray.

Per model (Grounding DINO-T and SAM2.1 hiera-small through the ground stage, CLIP ViT-B/32 through
embed, a Qwen2.5-VL-3B through annotate's local VLM; random weights from configs, real 720p frames
from a bundled video): frames/s, tokens/s for the VLM, peak GPU memory, and how busy the GPU stays
while a CPU thread decodes and feeds it (goal >= 80%). Then the trainer's MFU from
bench/train_step.py's `gpu` cases. A table on stdout; JSON in $OUT/gpu_check.json when $OUT is
set (the device tool brings $OUT back), else where --json says. See bench/gpu_bench.py for what
each column measures and bench/gpu_env.py for how the imports work on that machine.

Once, here (downloads ~3 MB of cp312 wheels into bench/.gpu_wheels/, which ignores itself):

    .venv/bin/python bench/gpu_check.py --prepare

On the GPU machine, one `run` call (the script stops starting sections after --budget-s, 200 s;
the whole run is meant to take about 3 minutes):

    run(command="set -o pipefail; PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --wheels bench/.gpu_wheels 2>&1 | tee $OUT/gpu_check.log",
        carry=["bench/.gpu_wheels"], timeout_s=420)

(peak GiB is what was allocated while the model ran, with the rest of its stage's models loaded:
the ground stage holds Grounding DINO and SAM2 together, as its worker does.)

CI (tiny models on the CPU, every code path, with the packages the GPU machine lacks refused):

    .venv/bin/python bench/gpu_check.py --cpu --device-imports --json /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import gpu_env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true", help=f"download the carried wheels into {gpu_env.WHEEL_DIR} and stop")
    parser.add_argument("--wheels", type=Path, default=None, help="put the wheels of this folder first on sys.path (the GPU machine)")
    parser.add_argument("--cpu", action="store_true", help="dry run: tiny models (models=tiny) on the CPU, short windows")
    parser.add_argument("--device-imports", action="store_true",
                        help="refuse the packages the GPU machine lacks (Ray, PyAV, omegaconf, xgrammar, ...), as there")
    parser.add_argument("--seconds", type=float, default=None, help="timed window per model (default 8 on GPU, 0 on --cpu)")
    parser.add_argument("--min-batches", type=int, default=None, help="timed batches per model (default 3 on GPU, 1 on --cpu)")
    parser.add_argument("--vlm-new-tokens", type=int, default=None, help="tokens generated per VLM request (default 64, 8 on --cpu)")
    parser.add_argument("--train-steps", type=int, default=None, help="timed trainer steps per case (default 10, 1 on --cpu)")
    parser.add_argument("--train-cases", type=int, default=None, help="how many train_step cases (default all, 1 on --cpu)")
    parser.add_argument("--profile", choices=["full", "tiny"], default=None, help="model sizes (default full on GPU, tiny on --cpu)")
    parser.add_argument("--batch", type=int, default=None, help="every backend's batch size (default: each config's own)")
    parser.add_argument("--only", default=None, help="comma-separated sections: ground,embed,annotate,train (default all)")
    parser.add_argument("--budget-s", type=float, default=200.0, help="skip sections that would start after this many seconds")
    parser.add_argument("--json", type=Path, default=None, help="where the JSON goes (default $OUT/gpu_check.json when $OUT is set)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.prepare:
        wheels = gpu_env.prepare_wheels()
        print("\n".join(f"{w.stat().st_size / 2**20:8.2f} MiB  {w.name}" for w in wheels))
        print(f"{gpu_env.wheels_size(gpu_env.WHEEL_DIR) / 2**20:8.2f} MiB in {gpu_env.WHEEL_DIR} (the limit is 64 MiB with the tree)")
        return
    env: dict[str, object] = {"python": sys.version.split()[0]}
    if args.device_imports:
        gpu_env.refuse_absent_packages()
        env["refused"] = sorted(gpu_env.ABSENT_ON_DEVICE)
    if args.wheels:
        env["wheels"] = gpu_env.install_wheels(args.wheels)
        env["wheels_mib"] = round(gpu_env.wheels_size(args.wheels) / 2**20, 2)
    env["mapped"] = gpu_env.map_repo_packages()
    env["xgrammar"] = not args.device_imports and importlib.util.find_spec("xgrammar") is not None

    # Imported only now: everything in it needs pydantic and the package map set up above.
    import gpu_bench
    import torch

    cpu = args.cpu or not torch.cuda.is_available()
    if not args.cpu and cpu:
        print("no CUDA device: running the CPU dry run (--cpu)", flush=True)
    out = os.environ.get("OUT")
    json_path = args.json or (Path(out) / "gpu_check.json" if out else None)
    settings = gpu_bench.Settings(
        device="cpu" if cpu else "cuda", profile=args.profile or ("tiny" if cpu else "full"),
        seconds=args.seconds if args.seconds is not None else (0.0 if cpu else 8.0),
        min_batches=args.min_batches or (1 if cpu else 3),
        vlm_new_tokens=args.vlm_new_tokens or (8 if cpu else 64),
        train_steps=args.train_steps or (1 if cpu else 10),
        train_cases=args.train_cases if args.train_cases is not None else (1 if cpu else 0),
        budget_s=args.budget_s - (time.perf_counter() - started), json_path=json_path,
        vlm_grammar=bool(env["xgrammar"]), batch=args.batch,
        sections=args.only.split(",") if args.only else list(gpu_bench.SECTIONS), env=env)
    print(f"imports: {env}", flush=True)
    report = gpu_bench.run(settings)
    if report["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
