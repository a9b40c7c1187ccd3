"""The trainer's side of session sequences: segment latents, text pieces with camera prefixes, and
preview sampling. Kept out of loop.py, which only dispatches on a batch's `layout`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from curation.train import flow
from curation.train.encoders import to_pixels
from curation.train.sessions import camera_prompt

SEGMENT_KEYS = ("kind", "turn", "order", "task")


def session_inputs(trainer: Any, batch: dict[str, Any], camera: str = "data") -> tuple[torch.Tensor, dict[str, Any]]:
    """Latents (N, c, S, h, w) of every segment, each encoded as its own image (also with video VAEs:
    segments are separate frames, not a clip), and the `session` dict the model reads. `camera`:
    `data` prefixes each instruction with its turn's label, `none` with the static label (inference,
    VINCIE D.4); no prefix when data.session.camera_prefix is off."""
    if trainer.config.encoder.conditioner != "text":
        raise ValueError("session sequences need a text encoder (encoder.conditioner=text): an MLLM conditioner "
                         "encodes one instruction per edit, not a session's interleaved turns")
    device = trainer.env.device
    x1 = trainer.encode_frames(batch["frames"])  # (N, c, S, h, w)
    prefix = trainer.config.data.session.camera_prefix
    pieces, owner, turn, order, instruction = [], [], [], [], []
    for i, texts in enumerate(batch["texts"]):
        for piece in texts:
            text = piece["text"]
            if piece["instruction"] and prefix:
                text = camera_prompt(piece["camera"] if camera == "data" else "none", text)
            pieces.append(text)
            owner.append(i)
            turn.append(piece["turn"])
            order.append(piece["order"])
            instruction.append(piece["instruction"])
    text, text_mask = trainer.text_encoder.encode(pieces)  # (P, Lp, E), (P, Lp)
    session = {name: batch[f"segment_{name}"].to(device) for name in SEGMENT_KEYS}
    session.update(valid=batch["valid"].to(device), text=text.float(), text_mask=text_mask.to(device),
                   text_owner=torch.tensor(owner), text_turn=torch.tensor(turn), text_order=torch.tensor(order),
                   text_instruction=torch.tensor(instruction))
    return x1, session


@torch.no_grad()
def session_preview(trainer: Any, batch: dict[str, Any]) -> Path:
    """Sample every target of the first sessions with the EMA model and save a grid of each
    session's first target: the frame before it | the true target | the sample."""
    from curation.train.preview import save_grid

    count = min(trainer.config.preview_count, len(batch["keys"]))
    sliced = ("frames", "valid", "texts", "instruction", "keys", *(f"segment_{name}" for name in SEGMENT_KEYS))
    subset = {k: batch[k][:count] for k in sliced}
    x1, session = session_inputs(trainer, subset, camera=trainer.config.flow.sample_camera)
    noise = torch.randn(x1.shape, generator=torch.Generator().manual_seed(trainer.config.seed)).to(x1)
    with torch.autocast(trainer.env.device.type, dtype=torch.bfloat16, enabled=trainer.bf16):
        latents = flow.sample_session(trainer.ema.model, x1, noise, session, trainer.config.flow.sample_steps,
                                      trainer.config.flow.guidance)
    first = [int((row >= 0).nonzero()[0]) for row in session["task"]]  # each session's first target
    rows = torch.arange(count)
    before = [max(0, j - 1) for j in first]  # the segment placed just before it (context)
    generated = trainer.codec.decode(latents[rows, :, first][:, :, None].float())  # (n, 3, 1, H, W)
    pixels = subset["frames"]
    path = trainer.output / "previews" / f"step_{trainer.step:07d}.png"
    captions = [t["text"] for texts in subset["texts"] for t in texts[:1]]
    save_grid(path, to_pixels(pixels[rows, :, before][:, :, None], generated.device),
              to_pixels(pixels[rows, :, first][:, :, None], generated.device), generated, captions)
    return path
