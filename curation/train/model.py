"""A small DiT editor: target latents denoised under a text context, a source injected element-wise
and reference frames concatenated as extra tokens.

Layout after DiT's `models.py`: one module per concept, shapes on every line of `forward`, named
sizes in `DIT_SIZES`. The flow-matching maths lives in `flow.py`, never here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from curation.train.positions import sincos_1d, sincos_3d
from curation.train.sequence_model import SessionEmbed, sequence_forward


@dataclass
class DiTConfig:
    in_channels: int = 3  # latent channels (3 in pixel space, 4/16 for SD/Wan-style VAEs)
    patch_size: tuple[int, int, int] = (1, 8, 8)  # (pt, ph, pw) voxels per token
    hidden_size: int = 64  # token width D
    depth: int = 2  # DiT blocks
    num_heads: int = 4  # attention heads (D must divide by it)
    mlp_ratio: float = 4.0  # MLP hidden = D * mlp_ratio
    text_dim: int = 64  # width of the text encoder's hidden states (set from the encoder)


# Named sizes (DiT's S/B widths and depths); `tiny` is for tests and CPU runs.
DIT_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, depth=2, num_heads=4),
    "S": dict(hidden_size=384, depth=12, num_heads=6),
    "B": dict(hidden_size=768, depth=12, num_heads=12),
}


def per_token(v: torch.Tensor, length: int) -> torch.Tensor:
    """Conditioning broadcast over `length` tokens: (N, D) per sample -> (N, 1, D); (N, S, D) per
    segment of length/S tokens each (session sequences) -> (N, L, D), so the adaLN maps run once per
    segment rather than once per token."""
    if v.dim() == 2:
        return v.unsqueeze(1)
    return v if v.shape[1] == length else v.repeat_interleave(length // v.shape[1], dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + per_token(scale, x.shape[1])) + per_token(shift, x.shape[1])


#################################################################################
#                          Positions and embedding layers                       #
#################################################################################

class PatchEmbed3d(nn.Module):
    """(N, C, T, H, W) latents -> (N, L, D) tokens, one per (pt, ph, pw) voxel block."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: tuple[int, int, int], zero_init: bool = False):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        if zero_init:  # Kiwi-Edit: the source path starts silent and is learned in
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        if any(size % patch for size, patch in zip(x.shape[2:], self.proj.kernel_size)):
            raise ValueError(f"latents of shape {tuple(x.shape[2:])} (T, H, W) do not divide into patches {self.proj.kernel_size}")
        x = self.proj(x)  # (N, D, T', H', W')
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid  # (N, L, D)


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> (N, D) via sinusoidal frequencies and an MLP (DiT)."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = sincos_1d(t * 1000.0, self.frequency_size)  # (N, F)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))  # (N, D)


class SourceInjection(nn.Module):
    """Kiwi-Edit eq. 1: tokens + γ(t) · PatchEmbed_src(source), the patch embed zero-initialised.

    γ(t) starts at 1 for every t (zero weights, bias 1), so at init the output ignores the source
    while gradients already reach the source patch embed; γ then learns how much source each
    noise level wants.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.embed = PatchEmbed3d(config.in_channels, config.hidden_size, config.patch_size, zero_init=True)
        self.gamma = nn.Sequential(nn.SiLU(), nn.Linear(config.hidden_size, 1))
        nn.init.zeros_(self.gamma[1].weight)
        nn.init.ones_(self.gamma[1].bias)

    def forward(self, tokens: torch.Tensor, source: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        src_tokens, _ = self.embed(source)  # (N, L, D)
        gamma = self.gamma(c)  # (N, 1)
        return tokens + gamma.unsqueeze(1) * src_tokens  # (N, L, D)


class ReferenceEmbed(nn.Module):
    """Reference frames (a quad's reference image, a session's earlier frames) become extra
    tokens appended to the sequence, with their own positions and a learned type embedding."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.embed = PatchEmbed3d(config.in_channels, config.hidden_size, config.patch_size)
        self.type_embed = nn.Parameter(torch.zeros(1, 1, config.hidden_size))

    def forward(self, reference: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.embed(reference)  # (N, R, D)
        pos = sincos_3d(grid, tokens.shape[-1], tokens.device).to(tokens.dtype)  # (R, D)
        return tokens + pos.unsqueeze(0) + self.type_embed  # (N, R, D)


class TextEmbed(nn.Module):
    """Text encoder states -> (N, S, D) context; dropped rows (classifier-free guidance) get a
    learned null context."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(config.text_dim, config.hidden_size), nn.GELU(approximate="tanh"),
                                  nn.Linear(config.hidden_size, config.hidden_size))
        self.null = nn.Parameter(torch.randn(1, 1, config.hidden_size) * 0.02)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, drop: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        context = self.proj(text)  # (N, S, D)
        if drop is not None and bool(drop.any()):
            context = torch.where(drop[:, None, None], self.null.to(context.dtype).expand_as(context), context)
            text_mask = text_mask | drop[:, None]  # (N, S): the null context is attended in full
        return context, text_mask


#################################################################################
#                                Attention and blocks                           #
#################################################################################

class Attention(nn.Module):
    """Multi-head attention over `context` (self-attention when it is the input), on SDPA."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(hidden_size, hidden_size)
        self.kv = nn.Linear(hidden_size, 2 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n, length, dim = x.shape
        q = self.q(x).view(n, length, self.num_heads, -1).transpose(1, 2)  # (N, h, L, d)
        k, v = self.kv(context).view(n, context.shape[1], 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # 2 x (N, h, S, d)
        # (N, S) masks keys for every query; (N, L, S) masks per query (session sequences). True = attend
        attn_mask = None if mask is None else mask[:, None, None, :] if mask.dim() == 2 else mask[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (N, h, L, d)
        return self.out(out.transpose(1, 2).reshape(n, length, dim))  # (N, L, D)


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention, then cross-attention to the text, then an MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.self_attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.cross_attn = Attention(hidden_size, num_heads)
        self.norm3 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, hidden_size))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor,
                self_mask: torch.Tensor | None = None) -> torch.Tensor:
        """c: (N, D), or (N, S, D) when each of S equal segments of the tokens has its own t (sessions)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)  # 6 x (N, [S,] D)
        h = modulate(self.norm1(x), shift_msa, scale_msa)  # (N, L, D)
        x = x + per_token(gate_msa, x.shape[1]) * self.self_attn(h, h, self_mask)  # (N, L, D)
        x = x + self.cross_attn(self.norm2(x), context, context_mask)  # (N, L, D)
        x = x + per_token(gate_mlp, x.shape[1]) * self.mlp(modulate(self.norm3(x), shift_mlp, scale_mlp))  # (N, L, D)
        return x


class FinalLayer(nn.Module):
    """adaLN then a linear map from each token back to its (pt, ph, pw, C) voxels."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(config.hidden_size, math.prod(config.patch_size) * config.in_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.hidden_size, 2 * config.hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # 2 x (N, [S,] D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (N, L, pt*ph*pw*C)


#################################################################################
#                                   The editor                                  #
#################################################################################

class DiTEditor(nn.Module):
    """Predicts the flow velocity of the target latents given t, text, source and references."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        if config.hidden_size % config.num_heads:
            raise ValueError(f"hidden_size {config.hidden_size} is not divisible by num_heads {config.num_heads}")
        self.config = config
        self.x_embed = PatchEmbed3d(config.in_channels, config.hidden_size, config.patch_size)
        self.t_embed = TimestepEmbedder(config.hidden_size)
        self.text_embed = TextEmbed(config)
        self.source = SourceInjection(config)
        self.reference = ReferenceEmbed(config)
        self.session = SessionEmbed(config.hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(config.hidden_size, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self.final = FinalLayer(config)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's init: xavier linears, adaLN-Zero gates and the output layer at zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for patch in (self.x_embed, self.reference.embed):
            nn.init.xavier_uniform_(patch.proj.weight.view(patch.proj.weight.shape[0], -1))
            nn.init.zeros_(patch.proj.bias)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final.adaLN_modulation[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.source.gamma[1].weight)  # re-applied after the xavier pass: γ(t) starts at 1
        nn.init.ones_(self.source.gamma[1].bias)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        pt, ph, pw = self.config.patch_size
        t, h, w = grid
        n = tokens.shape[0]
        x = tokens.view(n, t, h, w, pt, ph, pw, self.config.in_channels)  # (N, T', H', W', pt, ph, pw, C)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (N, C, T', pt, H', ph, W', pw)
        return x.reshape(n, self.config.in_channels, t * pt, h * ph, w * pw)  # (N, C, T, H, W)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, source: torch.Tensor | None = None,
                reference: torch.Tensor | None = None, drop_text: torch.Tensor | None = None,
                drop_source: torch.Tensor | None = None, session: dict | None = None) -> torch.Tensor:
        """x, source: (N, C, T, H, W); t: (N,); text: (N, S, E); text_mask: (N, S) bool, True = token;
        reference: (N, C, R, H, W) or None; drop_*: (N,) bool, the conditions classifier-free
        guidance trains without (a dropped source is zeros).

        With `session` (segment tensors and text pieces, see sequence_model.py), x is a whole session
        (N, C, S, H, W) of clean context and noised targets and t is (N, S): one pass trains every turn."""
        if session is not None:
            return sequence_forward(self, x, t, session, drop_text)
        if drop_source is not None:
            source = source * (~drop_source).to(source.dtype)[:, None, None, None, None]  # (N, C, T, H, W)
        tokens, grid = self.x_embed(x)  # (N, L, D)
        tokens = tokens + sincos_3d(grid, tokens.shape[-1], x.device).to(tokens.dtype).unsqueeze(0)  # (N, L, D)
        c = self.t_embed(t)  # (N, D)
        tokens = self.source(tokens, source, c)  # (N, L, D)
        num_target = tokens.shape[1]
        if reference is not None and reference.shape[2] > 0:
            tokens = torch.cat([tokens, self.reference(reference)], dim=1)  # (N, L + R, D)
        context, context_mask = self.text_embed(text, text_mask, drop_text)  # (N, S, D), (N, S)
        for block in self.blocks:
            tokens = block(tokens, c, context, context_mask)  # (N, L + R, D)
        out = self.final(tokens[:, :num_target], c)  # (N, L, pt*ph*pw*C)
        return self.unpatchify(out, grid)  # (N, C, T, H, W)



def build_model(size: str, **overrides) -> DiTEditor:
    """A DiT editor of a named size; `overrides` sets any other `DiTConfig` field."""
    if size not in DIT_SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {', '.join(DIT_SIZES)}")
    return DiTEditor(DiTConfig(**{**DIT_SIZES[size], **overrides}))
