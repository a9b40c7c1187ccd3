"""The training loop: AdamW with warmup, bf16 autocast, accumulation, clipping, EMA, DDP, and
checkpoints that resume exactly (weights, EMA, optimizer, step, RNG and the data position).

Run it as `curate train ...`, `python -m curation.train ...`, or under
`torchrun --nproc_per_node=N -m curation.train ...` (gloo on CPU, nccl on GPU). Only rank 0
logs, previews and saves.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from curation.train import flow
from curation.train.config import TrainConfig
from curation.train.data import LoaderPosition, build_loader
from curation.train.encoders import LatentCache, load_codec, load_text_encoder, to_pixels
from curation.train.mllm import MLLMConditioner
from curation.train.model import DiTEditor, build_model
from curation.train.session_step import session_inputs, session_preview
from curation.train.sessions import TASKS

log = logging.getLogger("curate.train")
CHECKPOINT = "checkpoint.pt"


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Distributed:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on GPUs, gloo on CPUs)."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but CUDA is not available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Distributed(rank, world_size, target)


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision == "bf16":
        return True
    return precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


class EMA:
    """Exponential moving average of the weights, warmed up as (1 + n) / (10 + n) early on."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_param, param in zip(self.model.parameters(), model.parameters()):
            ema_param.lerp_(param.detach(), 1 - decay)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]


@dataclass
class StepRecord:
    step: int
    loss: float
    keys: list[str]


class Trainer:
    """Everything a run holds; `state_dict()` is the checkpoint (torchtitan's Stateful trainer)."""

    def __init__(self, config: TrainConfig, env: Distributed):
        self.config, self.env = config, env
        self.output = Path(config.output)
        self.bf16 = use_bf16(config.precision, env.device)
        self.codec = load_codec(config.encoder, env.device)
        mllm = config.encoder.conditioner == "mllm"  # its queries are the DiT's text context: no text encoder
        self.text_encoder = None if mllm else load_text_encoder(config.encoder, env.device)
        self.latent_cache = LatentCache(config.encoder.latent_cache, self.codec.name) if config.encoder.latent_cache else None
        torch.manual_seed(config.seed)  # the same initial weights on every rank and every run
        self.model: DiTEditor = build_model(config.model.size, patch_size=tuple(config.model.patch_size),
                                            mlp_ratio=config.model.mlp_ratio, in_channels=self.codec.channels,
                                            text_dim=config.encoder.mllm.out_dim if mllm else self.text_encoder.dim).to(env.device)
        # after the DiT, from the same seeded RNG: its queries and connector start alike on every rank and run
        self.conditioner = MLLMConditioner(config.encoder.mllm, env.device, self.bf16) if mllm else None
        self.ema = EMA(self.model, config.optim.ema_decay)
        optim = config.optim
        trained = [{"params": list(self.model.parameters())}]
        if self.conditioner is not None:  # queries, connector, LoRA
            trained.append({"params": [p for p in self.conditioner.parameters() if p.requires_grad]})
        self.optimizer = torch.optim.AdamW(trained, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / max(1, optim.warmup_steps)))
        self.generator = torch.Generator().manual_seed(config.seed * 1_000_003 + env.rank)
        self.step = 0
        self.task_losses: dict[str, float] = {}  # the last step's loss per session task (rank-local)
        self.position = LoaderPosition(config.data.num_workers)
        self.ddp = self.model
        if env.world_size > 1:
            # A batch without references leaves the reference embed unused on that rank.
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                find_unused_parameters=True)

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Model, EMA, optimizer, schedule, step, config, and every rank's data position and RNG."""
        per_rank = {"data": self.position.state_dict(), "rng": self.generator.get_state()}
        ranks = [None] * self.env.world_size
        if self.env.world_size > 1:
            dist.all_gather_object(ranks, per_rank)
        else:
            ranks = [per_rank]
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step, "world_size": self.env.world_size,
                "ranks": ranks, "config": self.config.model_dump(mode="json"),
                **({"conditioner": self.conditioner.trainable_state_dict()} if self.conditioner is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["world_size"] != self.env.world_size:
            raise ValueError(f"checkpoint was written by {state['world_size']} ranks; resume with the same number "
                             f"(this run has {self.env.world_size}) or start a new output=")
        saved_model = state["config"]["model"]
        if saved_model != self.config.model.model_dump(mode="json"):
            raise ValueError(f"checkpoint model {saved_model} differs from this run's {self.config.model.model_dump(mode='json')}")
        if ("conditioner" in state) != (self.conditioner is not None):
            raise ValueError(f"checkpoint was trained with encoder.conditioner={state['config']['encoder'].get('conditioner', 'text')}; "
                             f"resume with it or start a new output=")
        self.model.load_state_dict(state["model"])
        if self.conditioner is not None:
            self.conditioner.load_trainable_state_dict(state["conditioner"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        mine = state["ranks"][self.env.rank]
        self.generator.set_state(mine["rng"])
        self.position = LoaderPosition(self.config.data.num_workers, mine["data"])

    def save(self) -> None:
        state = self.state_dict()  # every rank takes part in the gather
        if not self.env.main:
            return
        self.output.mkdir(parents=True, exist_ok=True)
        tmp = self.output / f".{CHECKPOINT}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.output / CHECKPOINT)

    # ---- one step ----------------------------------------------------------------------------
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        if self.latent_cache is not None:
            return self.latent_cache.encode(self.codec, frames, lambda x: to_pixels(x, self.env.device)).to(self.env.device)
        return self.codec.encode(to_pixels(frames, self.env.device))

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, R, H, W) separate frames (references, session segments) -> (N, c, R, h, w): each is
        its own image, also for video VAEs, which would otherwise compress them as one clip."""
        n, c, r, h, w = frames.shape
        latents = self.encode(frames.transpose(1, 2).reshape(n * r, c, 1, h, w))  # (N*R, c, 1, h', w')
        return latents.view(n, r, *latents.shape[1:]).transpose(1, 2).flatten(2, 3)  # (N, c, R, h', w')

    def conditions(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.conditioner is not None:  # trained: under autocast like the DiT, with gradients
            with torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                text, text_mask = self.conditioner(batch["instruction"], batch["source"], batch["reference"], batch["group"])
        else:
            text, text_mask = self.text_encoder.encode(batch["instruction"])
        reference = batch["reference"]
        ref_latents = self.encode_frames(reference) if reference.shape[2] else None
        conditions = {"text": text.float(), "text_mask": text_mask, "source": self.encode(batch["source"]),
                      "reference": ref_latents}
        if "region" in batch:  # the masked loss's weights (flow.region_weight)
            conditions["region"] = batch["region"].to(self.env.device).float() / 255.0
        return conditions

    def train_step(self, batches: list[dict[str, Any]]) -> float:
        """One optimizer step over `grad_accum` micro-batches; returns the mean loss (across ranks)."""
        total = 0.0
        tasks: list[torch.Tensor] = []
        for i, batch in enumerate(batches):
            session = batch.get("layout") == "session"
            if session:  # a whole session: every turn's target in one pass (sessions.py)
                x1, inputs = session_inputs(self, batch)
            else:
                x1, inputs = self.encode(batch["target"]), self.conditions(batch)
            losses_of = flow.session_losses if session else flow.training_losses
            sync = i == len(batches) - 1 or self.env.world_size == 1
            context = self.ddp.no_sync() if not sync and hasattr(self.ddp, "no_sync") else nullcontext()
            with context, torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                losses = losses_of(self.ddp, x1, inputs, self.config.flow, self.generator)
                (losses["loss"] / len(batches)).backward()
            total += losses["loss"].item() / len(batches)
            if session:
                tasks.append(losses["task_mse"].float().cpu())
        # this rank's mean loss per session task over the step's micro-batches (NaN: the task did not occur)
        self.task_losses = {name: float(v) for name, v in zip(TASKS, torch.stack(tasks).nanmean(0))
                            if not torch.isnan(v)} if tasks else {}
        if self.conditioner is not None and self.env.world_size > 1:
            # Not a DDP wrapper: the conditioner runs in conditions(), outside the DiT's no_sync window.
            self.conditioner.all_reduce_grads()
        if self.config.optim.grad_clip > 0:
            trained = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(trained, self.config.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.step += 1
        if self.env.world_size > 1:
            mean = torch.tensor([total], device=self.env.device)
            dist.all_reduce(mean)
            total = mean.item() / self.env.world_size
        return total

    @torch.no_grad()
    def preview(self, batch: dict[str, Any]) -> Path:
        """Sample with the EMA model from fixed noise and save a grid: source | target | sample."""
        from curation.train.preview import save_grid

        if batch.get("layout") == "session":
            return session_preview(self, batch)
        count = min(self.config.preview_count, len(batch["keys"]))
        subset = {k: v[:count] for k, v in batch.items() if k in ("source", "target", "reference", "instruction")}
        subset["group"] = batch["group"]  # the MLLM conditioner's query set
        conditions = self.conditions(subset)
        x1 = self.encode(subset["target"])
        noise = torch.randn(x1.shape, generator=torch.Generator().manual_seed(self.config.seed)).to(x1)
        with torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            latents = flow.sample(self.ema.model, noise, conditions, self.config.flow.sample_steps, self.config.flow.guidance)
        generated = self.codec.decode(latents.float())
        path = self.output / "previews" / f"step_{self.step:07d}.png"
        save_grid(path, to_pixels(subset["source"], generated.device), to_pixels(subset["target"], generated.device),
                  generated, subset["instruction"])
        return path


def train(config: TrainConfig, keep_records: bool = False) -> list[StepRecord]:
    """Train to `config.steps`, resuming from the output's checkpoint when asked. With
    `keep_records`, returns this process's step records (loss and the example keys it consumed,
    for audits and tests); a long run does not hold them otherwise."""
    from tqdm.auto import tqdm

    env = setup_distributed(config.device)
    logging.basicConfig(level=logging.INFO if env.main else logging.WARNING, format="%(message)s")
    trainer = Trainer(config, env)
    checkpoint = trainer.output / CHECKPOINT
    if config.resume and checkpoint.is_file():
        # On the CPU first: RNG states must stay CPU tensors; load_state_dict moves weights and optimizer state.
        trainer.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False))
        log.info("resumed from %s at step %d", checkpoint, trainer.step)
    if env.main:
        trainer.output.mkdir(parents=True, exist_ok=True)
        (trainer.output / "config.yaml").write_text(OmegaConf.to_yaml(config.model_dump(mode="json")))
        params = sum(p.numel() for p in trainer.model.parameters())
        log.info("model %s: %.2fM parameters; %s, %s, world size %d", config.model.size, params / 1e6,
                 env.device, "bf16 autocast" if trainer.bf16 else "fp32", env.world_size)
    records: list[StepRecord] = []
    if trainer.step >= config.steps:
        log.info("already at step %d of %d; nothing to do", trainer.step, config.steps)
        return records
    data = config.data.at_step(trainer.step)  # a run resumed past a scheduled switch reads at the switched size
    loader, position = build_loader(data, env.rank, env.world_size, trainer.position)
    batches = iter(loader)
    metrics = (trainer.output / "metrics.jsonl").open("a") if env.main else None
    keys_log = None
    if config.log_sample_keys:
        (trainer.output / "sample_keys").mkdir(parents=True, exist_ok=True)
        keys_log = (trainer.output / "sample_keys" / f"rank{env.rank}.jsonl").open("a")
    bar = tqdm(total=config.steps, initial=trainer.step, desc="train", unit="step", disable=not (env.main and config.progress))
    window_start, window_examples = time.perf_counter(), 0
    try:
        while trainer.step < config.steps:
            if config.data.at_step(trainer.step).resolution != data.resolution:
                # A scheduled switch: a new loader continues from the consumed position, so the batches
                # the old one prefetched and the examples waiting in buckets are decoded at the new size.
                data, batches = config.data.at_step(trainer.step), None
                loader, position = build_loader(data, env.rank, env.world_size, position)
                batches = iter(loader)
                log.info("step %d: data.resolution %d from here on (data.resolution_schedule)", trainer.step, data.resolution)
            micro = [next(batches) for _ in range(config.optim.grad_accum)]
            for batch in micro:
                position.consumed(batch)
            loss = trainer.train_step(micro)
            keys = [k for batch in micro for k in batch["keys"]]
            if keep_records:
                records.append(StepRecord(trainer.step, loss, keys))
            window_examples += len(keys) * env.world_size
            bar.update(1)
            if keys_log:
                keys_log.write(json.dumps({"step": trainer.step, "keys": keys}) + "\n")
            if metrics and (trainer.step % config.log_every == 0 or trainer.step == config.steps):
                elapsed = time.perf_counter() - window_start
                line = {"step": trainer.step, "loss": loss, "lr": trainer.scheduler.get_last_lr()[0],
                        "samples_per_s": window_examples / elapsed, "group": micro[-1]["group"], "resolution": data.resolution,
                        "skipped": position.skipped(), "time": time.time(),
                        **{f"loss_{task}": value for task, value in trainer.task_losses.items()}}
                if config.log_sample_keys:
                    line["keys"] = keys
                metrics.write(json.dumps(line) + "\n")
                metrics.flush()
                bar.set_postfix(loss=f"{loss:.4f}", sps=f"{line['samples_per_s']:.1f}")
                if not config.progress:
                    log.info("step %d/%d loss %.4f lr %.2e samples/s %.1f", trainer.step, config.steps, loss,
                             line["lr"], line["samples_per_s"])
                window_start, window_examples = time.perf_counter(), 0
            if config.preview_every and trainer.step % config.preview_every == 0 and env.main:
                trainer.preview(micro[-1])
            if trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps:
                trainer.save()
    finally:
        bar.close()
        for f in (metrics, keys_log):
            if f:
                f.close()
    if env.main:
        log.info("done: step %d, checkpoint %s, skipped samples %s", trainer.step, checkpoint, position.skipped() or "none")
    return records
