"""Rectified flow (flow matching on straight paths), kept out of the model as SiT keeps its transport.

Convention: x0 is noise, x1 is data, `x_t = t·x1 + (1−t)·x0`, the velocity target is `x1 − x0`,
and sampling integrates the predicted velocity from t = 0 (noise) to t = 1 (data).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

Velocity = Callable[..., torch.Tensor]  # model(x_t, t, **conditions) -> (N, C, T, H, W)


class FlowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    t_sampling: Literal["uniform", "logit_normal"] = Field(
        "logit_normal", description="training time distribution: uniform on [0, 1], or SD3's logit-normal (more weight mid-path)")
    logit_mean: float = Field(0.0, description="logit-normal location")
    logit_std: float = Field(1.0, gt=0, description="logit-normal scale")
    drop_text: float = Field(0.1, ge=0, le=1, description="rate of training rows without text (classifier-free guidance)")
    drop_source: float = Field(0.05, ge=0, le=1, description="rate of training rows without the source (guidance on the source)")
    sample_steps: int = Field(20, gt=0, description="Euler steps of the preview sampler")
    guidance: float = Field(4.0, ge=0, description="classifier-free guidance scale on the text at sampling (1 = none)")
    region_weight: float = Field(1.0, gt=0, description="edits with grounded masks: loss weight inside the edit's "
                                 "region relative to outside (1 = plain loss)")
    sample_camera: Literal["none", "data"] = Field(
        "none", description="session sampling: write the static camera label before every instruction (VINCIE D.4) or keep the data's")


def compute_xt(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *([1] * (x1.dim() - 1)))  # (N, 1, 1, 1, 1)
    return t * x1 + (1 - t) * x0


def compute_ut(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    return x1 - x0


def sample_t(n: int, config: FlowConfig, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    if config.t_sampling == "uniform":
        return torch.rand(n, generator=generator).to(device)
    normal = torch.randn(n, generator=generator) * config.logit_std + config.logit_mean
    return torch.sigmoid(normal).to(device)


def drop_mask(n: int, rate: float, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    return (torch.rand(n, generator=generator) < rate).to(device)


def training_losses(model: Velocity, x1: torch.Tensor, conditions: dict[str, Any], config: FlowConfig,
                    generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Loss terms for one batch of data latents `x1`. Every random draw (noise, t, condition
    dropout) comes from `generator`, whose state the checkpoint keeps, so resumed runs are exact."""
    n = x1.shape[0]
    x0 = torch.randn(x1.shape, generator=generator, dtype=torch.float32).to(x1.device, x1.dtype)
    t = sample_t(n, config, generator, x1.device)
    drop_text = drop_mask(n, config.drop_text, generator, x1.device)
    drop_source = drop_mask(n, config.drop_source, generator, x1.device)
    conditions = dict(conditions)
    region = conditions.pop("region", None)  # (N, 1, 1, H, W) in [0, 1]: weights the loss, not a model input
    velocity = model(compute_xt(x0, x1, t), t, drop_text=drop_text, drop_source=drop_source, **conditions)
    error = (velocity.float() - compute_ut(x0, x1).float()).pow(2)  # (N, C, T, h, w)
    if region is not None and config.region_weight != 1.0:
        weight = region_weights(region, error.shape[-3:], config.region_weight)  # (N, 1, T, h, w)
        per_sample = (error * weight).flatten(1).mean(1) / weight.expand_as(error).flatten(1).mean(1)  # (N,)
    else:
        per_sample = error.flatten(1).mean(1)  # (N,)
    return {"loss": per_sample.mean(), "mse": per_sample.detach(), "t": t.detach()}


def region_weights(region: torch.Tensor, size: tuple[int, int, int], inside: float) -> torch.Tensor:
    """(N, 1, 1, H, W) pixel mask in [0, 1] -> (N, 1, T, h, w) loss weights: `inside` where the edit
    happens, 1 elsewhere. The mask is area-pooled to the latent grid (a latent cell partly inside
    gets a partial weight) and stands for every frame of a video."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(region[:, :, 0].float(), size[1:])  # (N, 1, h, w)
    return (1 + (inside - 1) * pooled)[:, :, None].expand(-1, -1, size[0], -1, -1)


def session_losses(model: Velocity, x1: torch.Tensor, session: dict[str, Any], config: FlowConfig,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Session sequences (VINCIE Eq. 1): x1 (N, C, S, h, w) holds every segment's latents; the targets
    (task >= 0) are noised at their own t, clean context stays at t = 1. A session's loss is the sum
    of its targets' losses, averaged over the batch; `task_mse` is the mean loss per task (NIP, CSP,
    NSP: NaN where the batch has none of a task)."""
    n, s = x1.shape[0], x1.shape[2]
    noisy = (session["task"] >= 0) & session["valid"]  # (N, S)
    x0 = torch.randn(x1.shape, generator=generator, dtype=torch.float32).to(x1.device, x1.dtype)
    t = torch.where(noisy, sample_t(n * s, config, generator, x1.device).view(n, s), torch.ones(n, s, device=x1.device))
    drop_text = drop_mask(n, config.drop_text, generator, x1.device)
    xt = torch.where(noisy[:, None, :, None, None], _noise_segments(x0, x1, t), x1)  # (N, C, S, h, w)
    velocity = model(xt, t, session=session, drop_text=drop_text)
    error = (velocity.float() - compute_ut(x0, x1).float()).pow(2).mean(dim=(1, 3, 4))  # (N, S)
    per_session = (error * noisy).sum(1)  # (N,)
    task_mse = torch.stack([error[noisy & (session["task"] == i)].detach().mean() for i in range(3)])
    return {"loss": per_session.mean(), "mse": per_session.detach(), "task_mse": task_mse, "t": t.detach()}


def _noise_segments(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t per segment: (N, C, S, h, w) with t (N, S)."""
    t = t[:, None, :, None, None]
    return t * x1 + (1 - t) * x0


@torch.no_grad()
def sample(model: Velocity, noise: torch.Tensor, conditions: dict[str, Any], steps: int, guidance: float = 1.0) -> torch.Tensor:
    """Euler ODE from noise (t = 0) to data (t = 1). With guidance ≠ 1 each step also runs the
    model without text and extrapolates: v = v_uncond + w·(v_cond − v_uncond)."""
    x = noise
    n = x.shape[0]
    times = torch.linspace(0, 1, steps + 1, device=x.device)
    keep = torch.zeros(n, dtype=torch.bool, device=x.device)
    for i in range(steps):
        t = times[i].expand(n)
        v = model(x, t, drop_text=keep, **conditions)
        if guidance != 1.0:
            v_uncond = model(x, t, drop_text=~keep, **conditions)
            v = v_uncond + guidance * (v - v_uncond)
        x = x + (times[i + 1] - times[i]) * v
    return x


@torch.no_grad()
def sample_session(model: Velocity, x1: torch.Tensor, noise: torch.Tensor, session: dict[str, Any], steps: int,
                   guidance: float = 1.0) -> torch.Tensor:
    """Every target of a session sampled together: targets start from `noise` and follow the Euler ODE
    at one shared t while the clean context stays fixed (teacher-forced: each target sees the true
    earlier frames). Returns (N, C, S, h, w) with the targets replaced by samples."""
    n, s = x1.shape[0], x1.shape[2]
    noisy = (session["task"] >= 0) & session["valid"]
    where = noisy[:, None, :, None, None]
    x = torch.where(where, noise, x1)
    times = torch.linspace(0, 1, steps + 1, device=x.device)
    keep = torch.zeros(n, dtype=torch.bool, device=x.device)
    for i in range(steps):
        t = torch.where(noisy, times[i], torch.ones((), device=x.device)).expand(n, s)
        v = model(x, t, session=session, drop_text=keep)
        if guidance != 1.0:
            v_uncond = model(x, t, session=session, drop_text=~keep)
            v = v_uncond + guidance * (v - v_uncond)
        x = torch.where(where, x + (times[i + 1] - times[i]) * v, x1)
    return x
