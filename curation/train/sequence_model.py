"""The DiT editor on a whole session: interleaved clean context and noised targets in one pass
(VINCIE, seed 003 §3.2 and App. C.4).

Every segment (a frame or a 3-channel RoE mask) is patch-embedded like any image, then gets its
turn's embedding and a kind embedding (clean image, clean mask, noised image, noised mask); each
token is modulated by its own segment's t (clean context sits at t = 1, the data end of the path).
Text is every turn's instruction and task prompt, encoded piece by piece and joined, with a
learned <TURN>_i token before the instruction of turn i.

Attention masks carry the conditioning rule: a clean segment sees the clean segments up to itself,
a noised target sees the clean segments placed before it and itself, and nothing sees a target
from outside; a segment reads only the text placed before it. So a target never sees its own
clean copy or anything later, and every turn trains in the same forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from curation.train.positions import sincos_3d

MAX_TURNS = 64  # <TURN> and turn-index embeddings; VINCIE's sessions have at most 19 turns


class SessionEmbed(nn.Module):
    """The learned embeddings only session sequences use."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.turn = nn.Embedding(MAX_TURNS, hidden_size)  # the image's turn index
        self.kind = nn.Embedding(4, hidden_size)  # clean image, clean mask, noised image, noised mask
        self.text_turn = nn.Embedding(MAX_TURNS, hidden_size)  # <TURN>_i before turn i's instruction
        for table in (self.turn, self.kind, self.text_turn):
            nn.init.normal_(table.weight, std=0.02)


def segment_mask(order: torch.Tensor, noisy: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(N, S) order/noisy/valid -> (N, S, S) bool, True = segment a (row) may attend to segment b."""
    a_order, b_order = order[:, :, None], order[:, None, :]
    a_noisy, b_noisy = noisy[:, :, None], noisy[:, None, :]
    same = torch.eye(order.shape[1], dtype=torch.bool, device=order.device)[None]
    clean_b = ~b_noisy & valid[:, None, :]
    sees = clean_b & torch.where(a_noisy, b_order < a_order, b_order <= a_order)
    return (sees | same) & (valid[:, :, None] | same)  # padding rows see only themselves (no empty rows)


def _text_context(model: Any, session: dict[str, Any], batch: int, drop_text: torch.Tensor | None,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per session: [null] + for each text piece in order ([<TURN>_i] if an instruction) + its tokens.
    Returns (N, Lt, D) context and (N, Lt) order of each token (-1 for the null token, which every
    segment sees, so no attention row is empty)."""
    states = model.text_embed.proj(session["text"])  # (P, Lp, D)
    mask = session["text_mask"]  # (P, Lp)
    null = model.text_embed.null[0].to(states.dtype)  # (1, D)
    pieces: list[list[torch.Tensor]] = [[null] for _ in range(batch)]
    orders: list[list[torch.Tensor]] = [[torch.full((1,), -1, device=device)] for _ in range(batch)]
    for p in range(states.shape[0]):
        owner, order = int(session["text_owner"][p]), int(session["text_order"][p])
        if drop_text is not None and bool(drop_text[owner]):
            continue  # classifier-free guidance: this session trains without any text
        tokens = states[p][mask[p]]  # (l, D)
        if bool(session["text_instruction"][p]):
            turn = model.session.text_turn.weight[int(session["text_turn"][p])].to(states.dtype)
            tokens = torch.cat([turn[None], tokens])
        pieces[owner].append(tokens)
        orders[owner].append(torch.full((tokens.shape[0],), order, device=device))
    length = max(sum(t.shape[0] for t in ts) for ts in pieces)
    context = states.new_zeros(batch, length, states.shape[-1])
    token_order = torch.full((batch, length), torch.iinfo(torch.long).max, device=device)  # padding: never seen
    for i in range(batch):
        joined = torch.cat(pieces[i])
        context[i, :joined.shape[0]] = joined
        token_order[i, :joined.shape[0]] = torch.cat(orders[i])
    return context, token_order


def sequence_forward(model: Any, x: torch.Tensor, t: torch.Tensor, session: dict[str, Any],
                     drop_text: torch.Tensor | None = None) -> torch.Tensor:
    """x: (N, C, S, H, W) segments (clean context as data, targets noised); t: (N, S), 1 for clean;
    session: the batch's segment tensors (N, S) kind/turn/order/task/valid and its encoded text
    pieces. Returns the velocity (N, C, S, H, W); only the targets' entries are trained."""
    n, channels, s, h, w = x.shape
    if model.config.patch_size[0] != 1:
        raise ValueError(f"session sequences need model.patch_size[0] = 1 (one frame per segment), not {model.config.patch_size[0]}")
    tokens, grid = model.x_embed(x.transpose(1, 2).reshape(n * s, channels, 1, h, w))  # (N*S, P, D)
    per = tokens.shape[1]
    tokens = tokens + sincos_3d(grid, tokens.shape[-1], x.device).to(tokens.dtype).unsqueeze(0)
    noisy = session["task"] >= 0  # (N, S)
    kind = session["kind"] + 2 * noisy.long()  # (N, S)
    tokens = tokens.view(n, s, per, -1) + (model.session.turn(session["turn"]) + model.session.kind(kind))[:, :, None]
    tokens = tokens.flatten(1, 2)  # (N, L = S*P, D)
    c = model.t_embed(t.flatten()).view(n, s, -1)  # (N, S, D): one t per segment, broadcast to its tokens
    self_mask = segment_mask(session["order"], noisy, session["valid"]).repeat_interleave(per, 1).repeat_interleave(per, 2)
    context, text_order = _text_context(model, session, n, drop_text, x.device)  # (N, Lt, D), (N, Lt)
    segment_order = session["order"].repeat_interleave(per, dim=1)  # (N, L)
    cross_mask = text_order[:, None, :] < segment_order[:, :, None]  # (N, L, Lt): text placed before the segment
    cross_mask[:, :, 0] = True  # the null token
    for block in model.blocks:
        tokens = block(tokens, c, context, cross_mask, self_mask)  # (N, L, D)
    out = model.final(tokens, c)  # (N, L, p*C)
    frames = model.unpatchify(out.view(n * s, per, -1), grid)  # (N*S, C, 1, H, W)
    return frames.view(n, s, channels, h, w).transpose(1, 2)  # (N, C, S, H, W)
