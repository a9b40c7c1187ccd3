"""A VINCIE session as one multi-turn training sequence (seed 003 §3.2-3.3, §4.1, D.4).

One example is a whole session: the frames in turn order, each turn's instruction (prefixed with
its camera label), and, for a session that trains with region-of-edit (RoE) maps, the turn's
source/target masks with the fixed prompts that name them. Every turn has one target, chosen per
turn among the three tasks:

- NIP (next-image prediction): a noised copy of frame k+1;
- CSP (current-segmentation prediction): a noised copy of turn k's source RoE mask;
- NSP (next-segmentation prediction): a noised copy of turn k's target RoE mask.

Everything else is clean context. The model sees each target only with the items placed before it
(`order`), which is what "condition on clean context" needs, and the loss sums over the targets, so
one forward pass trains every turn (Eq. 1) rather than one pass per prefix.

Context dropout follows §4.1: per session, RoE maps are used with `roe_probability`; per turn the
current frame, current RoE map and next RoE map leave the context independently. An item a target
is made from is never dropped: CSP and NSP keep the current frame, and a target is never context.
Only turns whose `roe` is `found` can be segmentation targets or show maps.

This module is pure planning over decoded arrays (no I/O), so tests can check each target exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curation.train.data_config import SessionConfig

TASKS = ("nip", "csp", "nsp")
IMAGE, MASK = 0, 1


def camera_prompt(camera: str | None, instruction: str) -> str:
    """The instruction with VINCIE's camera prefix (D.4): `[###CAMERA: pan-left###] ...`; the static
    label is written `None`, as the paper writes it at inference."""
    label = "None" if not camera or camera == "none" else camera
    return f"[###CAMERA: {label}###] {instruction}"


Pixels = np.ndarray | Callable[[], np.ndarray]  # a lazy mask is decoded only if the plan keeps it


@dataclass
class Segment:
    """One frame-sized item of the sequence: an image or a 3-channel mask, clean or noised."""

    pixels: Pixels  # (1, H, W, 3) uint8 (decoded once the sequence is closed)
    kind: int  # IMAGE | MASK
    turn: int
    order: int  # position in the interleaved sequence; an item sees only items of lower order
    task: int = -1  # index into TASKS for a target (noised), -1 for clean context

    @property
    def noisy(self) -> bool:
        return self.task >= 0


@dataclass
class TextPiece:
    """One text item: a turn's instruction (with its camera label) or a task prompt."""

    text: str
    turn: int
    order: int
    camera: str | None = None  # instructions only: the turn's camera label
    instruction: bool = False  # instructions get the turn's <TURN> token before them


@dataclass
class SessionExample:
    """One sequence of consecutive turns of a session."""

    key: str  # "<sample key>#s<first turn>"
    group: str
    segments: list[Segment]
    texts: list[TextPiece]
    epoch: int = 0

    @property
    def batch_key(self) -> tuple[Any, ...]:
        return ("session", *self.segments[0].pixels.shape[1:3])  # sequences of one bucket pad to one length

    @property
    def instruction(self) -> str:
        return " | ".join(t.text for t in self.texts if t.instruction)

    def targets(self) -> list[Segment]:
        return [s for s in self.segments if s.noisy]


@dataclass
class TurnData:
    """What a session sample holds for turn k (frame k -> frame k+1)."""

    instruction: str | None
    camera: str | None = None
    roe: str | None = None  # found | none | unannotated | None (no ground stage)
    src_mask: Pixels | None = None  # (1, H, W, 3) uint8 or a function decoding it; present when roe == found
    tgt_mask: Pixels | None = None

    @property
    def found(self) -> bool:
        return self.roe == "found" and self.src_mask is not None and self.tgt_mask is not None


@dataclass
class _Builder:
    segments: list[Segment] = field(default_factory=list)
    texts: list[TextPiece] = field(default_factory=list)
    order: int = 0

    def image(self, pixels: np.ndarray, kind: int, turn: int, task: int = -1) -> None:
        self.segments.append(Segment(pixels, kind, turn, self.order, task))
        self.order += 1

    def text(self, text: str, turn: int, **kwargs: Any) -> None:
        self.texts.append(TextPiece(text, turn, self.order, **kwargs))
        self.order += 1


def _choose_task(turn: TurnData, with_roe: bool, config: SessionConfig, rng: random.Random) -> int:
    weights = config.tasks.model_dump()
    if not (with_roe and turn.found) or not (weights["csp"] or weights["nsp"]):
        return 0
    total = sum(weights.values())
    draw, cumulative = rng.random() * total, 0.0
    for i, name in enumerate(TASKS):
        cumulative += weights[name]
        if draw < cumulative:
            return i
    return 0


def _turn_items(b: _Builder, k: int, frames: list[np.ndarray], turn: TurnData, task: int, with_roe: bool,
                config: SessionConfig, rng: random.Random) -> None:
    """Append turn k in sequence order: frame k, instruction, [maps with their prompts], target."""
    prompts = config.prompts
    if task != 0 or rng.random() >= config.drop_current_frame:
        b.image(frames[k], IMAGE, k)
    b.text(turn.instruction or "", k, camera=turn.camera, instruction=True)
    # (task, prompt, pixels, kind, context dropout) in sequence order; the turn ends with its target
    items = [(1, prompts.csp, turn.src_mask, MASK, config.drop_current_roe),
             (2, prompts.nsp, turn.tgt_mask, MASK, config.drop_next_roe)] if with_roe and turn.found else []
    items.append((0, prompts.nip, frames[k + 1], IMAGE, 1.0))
    for item_task, prompt, pixels, kind, drop in items:
        if item_task == task:
            b.text(prompt, k)
            b.image(pixels, kind, k, task=task)
            return
        if rng.random() >= drop:  # a map shown as context, with its prompt
            b.text(prompt, k)
            b.image(pixels, kind, k)


def plan_sequences(key: str, frames: list[np.ndarray], turns: list[TurnData], config: SessionConfig,
                   tokens_per_frame: int, rng: random.Random, group: str = "image") -> list[SessionExample]:
    """Sequences of one session: runs of consecutive annotated turns (a turn without an instruction
    has nothing to learn and breaks the run), each cut at turn boundaries to `max_tokens`."""
    with_roe = rng.random() < config.roe_probability
    budget = max(1, config.max_tokens // max(1, tokens_per_frame))  # frames per sequence
    sequences: list[SessionExample] = []
    current: _Builder | None = None
    first = 0

    def close() -> None:
        if current is not None and current.segments:
            for segment in current.segments:
                if callable(segment.pixels):
                    segment.pixels = segment.pixels()
            sequences.append(SessionExample(f"{key}#s{first}", group, current.segments, current.texts))

    for k, turn in enumerate(turns):
        if not turn.instruction:
            close()
            current = None
            continue
        task = _choose_task(turn, with_roe, config, rng)
        trial = _Builder()
        _turn_items(trial, k, frames, turn, task, with_roe, config, rng)
        if current is not None and len(current.segments) + len(trial.segments) > budget:
            close()  # a turn is never split: it opens the next sequence
            current = None
        if current is None:
            current, first = _Builder(), k
        _append(current, trial)
    close()
    return sequences


def _append(current: _Builder, turn: _Builder) -> None:
    """Move a turn built on its own (orders from 0) to the end of the sequence."""
    for segment in turn.segments:
        segment.order += current.order
        current.segments.append(segment)
    for piece in turn.texts:
        piece.order += current.order
        current.texts.append(piece)
    current.order += turn.order


def collate_sessions(examples: list[SessionExample]) -> dict[str, Any]:
    """Sequences of one bucket -> padded tensors. `frames` (N, 3, S, H, W) uint8 holds every segment
    (images and masks) in sequence order; per-segment tensors (N, S) say what each one is, and
    `valid` marks the padding. Texts stay strings: the trainer encodes them (camera prefixes are
    applied there, so inference can write the static label)."""
    import torch

    length = max(len(e.segments) for e in examples)
    height, width = examples[0].segments[0].pixels.shape[1:3]
    frames = np.zeros((len(examples), length, height, width, 3), np.uint8)
    per_segment = {name: torch.full((len(examples), length), fill, dtype=torch.long)
                   for name, fill in (("kind", 0), ("turn", 0), ("order", 0), ("task", -1))}
    valid = torch.zeros((len(examples), length), dtype=torch.bool)
    for i, example in enumerate(examples):
        for j, segment in enumerate(example.segments):
            frames[i, j] = segment.pixels[0]
            for name in per_segment:
                per_segment[name][i, j] = getattr(segment, name)
            valid[i, j] = True
    texts = [[{"text": t.text, "turn": t.turn, "order": t.order, "camera": t.camera, "instruction": t.instruction}
              for t in e.texts] for e in examples]
    return {"layout": "session", "frames": torch.from_numpy(frames).permute(0, 4, 1, 2, 3), "valid": valid,
            **{f"segment_{name}": value for name, value in per_segment.items()}, "texts": texts,
            "instruction": [e.instruction for e in examples], "keys": [e.key for e in examples], "group": examples[0].group}
