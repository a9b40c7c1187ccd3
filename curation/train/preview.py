"""Preview grids: one row per example, columns source | target | sample (middle frame of each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def _frame(video: torch.Tensor) -> np.ndarray:
    """(C, T, H, W) in [-1, 1] -> the middle frame as (H, W, 3) uint8."""
    frame = video[:, video.shape[1] // 2].float().clamp(-1, 1)
    return ((frame.permute(1, 2, 0).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)


def save_grid(path: Path, sources: torch.Tensor, targets: torch.Tensor, samples: torch.Tensor,
              instructions: list[str]) -> None:
    """Write the grid atomically; instructions are drawn under each row."""
    rows = []
    for source, target, sample, text in zip(sources, targets, samples, instructions):
        row = np.concatenate([_frame(source), _frame(target), _frame(sample)], axis=1)
        caption = Image.new("RGB", (row.shape[1], 14), "white")
        ImageDraw.Draw(caption).text((2, 1), text[:120], fill="black")
        rows.append(np.concatenate([row, np.asarray(caption)], axis=0))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(np.concatenate(rows, axis=0)).save(tmp)
    tmp.replace(path)
