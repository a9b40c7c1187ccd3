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
    velocity = model(compute_xt(x0, x1, t), t, drop_text=drop_text, drop_source=drop_source, **conditions)
    per_sample = (velocity.float() - compute_ut(x0, x1).float()).pow(2).flatten(1).mean(1)  # (N,)
    return {"loss": per_sample.mean(), "mse": per_sample.detach(), "t": t.detach()}


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
