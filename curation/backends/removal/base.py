"""The object-remover protocol: what the `erase` stage hands a backend and gets back.

A remover is built cheaply from config (nothing loads or connects), `open()`ed once per worker,
then given one clip at a time: its frames and, per frame, the mask of the object to remove. It
returns the same number of frames at the same size with the object gone. A clip it cannot erase
raises `RemovalFailed` (a `StageError`: the clip's row gets the reason, the run goes on), carrying
what a paid backend spent on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from curation.backends.usage import VLMUsage
from curation.core.stage import ModelRef, StageError


class RemovalFailed(StageError):
    """One clip could not be erased; `usage` is what a paid backend spent trying."""

    def __init__(self, reason: str, usage: VLMUsage | None = None):
        super().__init__(reason)
        self.usage = usage


class ObjectRemover(ABC):
    """Subclasses set `name` (the config's `backend` value) and implement `remove`."""

    name: ClassVar[str]

    # What the last `remove` call cost (paid backends); None when nothing is billed.
    last_usage: VLMUsage | None = None

    def open(self) -> None:  # noqa: B027 - optional: the temporal fill has nothing to load
        """Load the model / create clients, once per worker (the stage's `setup`)."""

    @abstractmethod
    def remove(self, frames: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        """`frames`: (H, W, 3) uint8 RGB, in time order; `masks`: (H, W) bool, True on the object.
        Returns one (H, W, 3) uint8 RGB frame per input frame with the masked object removed;
        raises `RemovalFailed` for a clip it cannot erase."""

    def model(self) -> ModelRef | None:
        """The model that erases, as `_run.json` records it; None without one."""
        return None

    def describe(self) -> str:
        """What the `removal_backend` column says: the backend and model (loud when its weights
        are random), else the backend's name."""
        model = self.model()
        return model.display if model is not None else self.name

    def close(self) -> None:  # noqa: B027 - optional, like open
        """Release models and clients; a later `open()` starts afresh."""


def check_clip(frames: list[np.ndarray], masks: list[np.ndarray]) -> None:
    """Raise ValueError unless frames and masks pair up one to one at one size."""
    if not frames:
        raise ValueError("no frames to erase")
    if len(frames) != len(masks):
        raise ValueError(f"{len(frames)} frames but {len(masks)} masks")
    shape = frames[0].shape
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"frames must be (H, W, 3) RGB, got {shape}")
    for i, (frame, mask) in enumerate(zip(frames, masks)):
        if frame.shape != shape or frame.dtype != np.uint8:
            raise ValueError(f"frame {i} is {frame.shape} {frame.dtype}, frame 0 is {shape} uint8")
        if mask.shape != shape[:2]:
            raise ValueError(f"mask {i} is {mask.shape}, its frame is {shape[:2]}")


def keep_outside(frame: np.ndarray, filled: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`frame` with the pixels under `hole` taken from `filled`: a generative backend may alter the
    whole image, and only the hole is meant to change."""
    out = frame.copy()
    out[hole] = filled[hole]
    return out
