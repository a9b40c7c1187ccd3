"""The reference-synthesizer protocol: what the `reference` stage hands a backend and gets back.

A synthesizer is built cheaply from config (nothing loads or connects), `open()`ed once per
worker, then given a batch of inputs at a time. It never raises for one bad sample: each input
gets an image or a failure reason, and what it cost when it was a paid call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from curation.backends.usage import VLMUsage
from curation.core.stage import ModelRef


@dataclass(frozen=True)
class ReferenceInput:
    """One sample's material, as `ground_edit` left it."""

    frame: np.ndarray  # (H, W, 3) uint8 RGB: the target's first frame
    mask: np.ndarray  # (H, W) bool: the edited object (object mode) or the foreground to remove (background mode)
    mode: str  # object | background
    prompt: str | None = None  # the edit instruction, for synthesizers that take one (`takes_prompt`)
    cache_salt: str = ""  # what else identifies the prompt (its template's hash): part of a response cache key


@dataclass(frozen=True)
class Synthesized:
    """One input's outcome: its reference, or why there is none (the sample becomes a retryable error)."""

    image: np.ndarray | None = None  # (h, w, 3) uint8 RGB
    reason: str | None = None  # set exactly when image is None
    usage: VLMUsage | None = None  # what a paid call cost, success or not; None when nothing is billed

    def __post_init__(self) -> None:
        if (self.image is None) == (self.reason is None):
            raise ValueError("a synthesized reference holds an image or a failure reason, exactly one")


class ReferenceSynthesizer(ABC):
    """Subclasses set `name` (the config's `backend` value) and implement `synthesize`."""

    name: ClassVar[str]
    # Whether it reads `ReferenceInput.prompt`: a model is instructed, the composite maths is not.
    takes_prompt: ClassVar[bool] = True
    # Whether its references are the target frame's own pixels (a cutout, or the frame with a hole
    # filled): a trainer can learn to copy the target from them, so the shard json says so.
    copies_target_pixels: ClassVar[bool] = False

    def open(self) -> None:  # noqa: B027 - optional: composite has nothing to load
        """Load the model / create clients, once per worker (a stage's `setup`)."""

    @abstractmethod
    def synthesize(self, items: list[ReferenceInput]) -> list[Synthesized]:
        """One outcome per input, in input order; a failure is returned, never raised."""

    def model(self) -> ModelRef | None:
        """The model that makes the references, as `_run.json` records it; None without one."""
        return None

    def generator(self) -> str:
        """What the shard json records as the reference's maker (its provenance): the model id for a
        local model, `<provider>:<model>` for an API, whose terms then apply; else the backend's name."""
        return self.name

    def describe(self) -> str:
        """What the `reference_backend` column says made a reference: the model as people read
        it (loud when its weights are random), else the backend's name."""
        model = self.model()
        return model.display if model is not None else self.name

    def close(self) -> None:  # noqa: B027 - optional, like open
        """Release clients; a later `open()` starts afresh."""
