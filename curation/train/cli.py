"""Command-line entry for training, shared by `curate train` and `python -m curation.train`."""

from __future__ import annotations

import sys

TRAIN_HELP = """Train the DiT editor on WebDataset shards from any pipeline. Arguments are `key=value` overrides:

\b
  curate train shards=runs/example/shards model=tiny steps=200
  curate train shards='s3://bucket/shards/train-{000000..000099}.tar' model=B encoder=pretrained \\
      encoder.vae=/ckpt/sd-vae encoder.text=/ckpt/t5-base data.resolution=512 steps=100000
  torchrun --nproc_per_node=8 -m curation.train shards=... model=B encoder=pretrained

\b
Groups: model=tiny|S|B, encoder=identity|pretrained, mix=kiwi_stage3|instructx (the papers'
kind ratios), preset=vincie|instructx|kiwi_stage2|kiwi_stage3|imvideoedit (a paper's published settings). `shards=X` is data.shards=X.
Sections: data.* (buckets, frames, mix ratios, workers), flow.* (t sampling, CFG dropout, sampler),
optim.* (lr, warmup, accumulation, clipping, EMA), encoder.* (VAE, text encoder, latent cache).
Every key is documented in curation/config/train/train.yaml. Rerunning the same command resumes
exactly from <output>/checkpoint.pt (resume=false starts over)."""


def main(overrides: list[str]) -> int:
    """Compose, validate and train; config errors exit with 2 and a one-line reason."""
    from curation.train.config import TrainConfigError, compose_train

    if any(a in ("-h", "--help") for a in overrides):
        print(TRAIN_HELP.replace("\b\n", ""))
        return 0
    try:
        config = compose_train(overrides)
    except TrainConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from curation.train.loop import train

    try:
        train(config)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


def one_line(error: Exception) -> str:
    """The reason alone: an error raised in a DataLoader worker arrives with the worker's traceback
    in its message, ending in `module.Class: reason`."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    if len(lines) == 1:
        return lines[0]
    name, _, reason = lines[-1].partition(": ")
    return reason if reason and name.replace(".", "").replace("_", "").isalnum() else lines[-1]
