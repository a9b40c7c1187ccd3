"""Fixed sin-cos position and time features, shared by the DiT's modules (model.py) and its
session-sequence path (sequence_model.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(L,) positions or times -> (L, dim) sin and cos at geometric frequencies (the Transformer's)."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, device=positions.device) / max(dim // 2, 1))
    angles = positions.float()[:, None] * freqs[None]  # (L, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (L, dim)


def sincos_3d(grid: tuple[int, int, int], dim: int, device: torch.device) -> torch.Tensor:
    """Fixed (T, H, W) sin-cos positions, computed per call so any bucket shape works."""
    axis_dim = (dim // 6) * 2
    t, h, w = torch.meshgrid(*(torch.arange(n, device=device) for n in grid), indexing="ij")
    parts = [sincos_1d(axis.flatten(), axis_dim) for axis in (t, h, w)]  # 3 x (L, axis_dim)
    pos = torch.cat(parts, dim=1)  # (L, 3 * axis_dim)
    return F.pad(pos, (0, dim - pos.shape[1]))  # (L, D)
