"""Frozen encoders the DiT trains under: a VAE (pixels <-> latents) and a text encoder.

Each loads from a hub id or a local directory. `identity` (pixel space) and `bytes` (fixed
random byte embeddings) need no weights, for tests and tiny runs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from curation.train.mllm import MLLMConfig

# diffusers VAE classes whose encoders take (N, C, T, H, W) clips; every other class is an image
# VAE that sees each frame on its own.
VIDEO_VAES = {"AutoencoderKLWan", "AutoencoderKLHunyuanVideo", "AutoencoderKLLTXVideo", "AutoencoderKLCogVideoX",
              "AutoencoderKLMochi", "AutoencoderKLQwenImage"}


class EncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vae: str = Field("identity", description="identity (pixel space) or a diffusers VAE: hub id or local dir")
    vae_class: str = Field("AutoencoderKL", description="diffusers class name (AutoencoderKL, AutoencoderKLWan, ...)")
    vae_subfolder: str | None = Field(None, description="subfolder of a pipeline repo holding the VAE (e.g. vae)")
    text: str = Field("bytes", description="bytes (fixed random UTF-8 byte embeddings) or a transformers text "
                                           "encoder (T5, CLIP text, Qwen): hub id or local dir")
    text_subfolder: str | None = Field(None, description="subfolder holding the text encoder (e.g. text_encoder)")
    tokenizer_subfolder: str | None = Field(None, description="subfolder holding the tokenizer (e.g. tokenizer)")
    max_text_tokens: int = Field(64, gt=0, description="instructions are truncated to this many tokens")
    bytes_dim: int = Field(64, gt=0, description="width of the `bytes` text embeddings")
    latent_cache: str | None = Field(None, description="directory caching each example's latents, keyed by the "
                                     "encoder and a hash of its pixels (saves VAE encodes on later epochs)")
    conditioner: Literal["text", "mllm"] = Field("text", description="the DiT's text context: text (the frozen `text` "
                                                 "encoder) or mllm (Qwen2.5-VL with learnable queries, `mllm` below)")
    mllm: MLLMConfig = MLLMConfig()


# ---- VAEs -----------------------------------------------------------------------------------

def to_pixels(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, C, T, H, W) -> float32 in [-1, 1] on the device, the codecs' input range (the
    loader's workers ship uint8, a quarter of the bytes)."""
    return frames.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)


class IdentityCodec:
    """Pixel space: latents are the frames in [-1, 1]."""

    channels = 3
    name = "identity"

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


class DiffusersCodec:
    """A frozen diffusers VAE. Latents are normalised as the model card says: `latents_mean/std`
    when the config has them (Wan), else `(z − shift_factor) · scaling_factor` (SD, FLUX)."""

    def __init__(self, config: EncoderConfig, device: torch.device):
        import diffusers

        cls = getattr(diffusers, config.vae_class, None)
        if cls is None:
            raise ValueError(f"diffusers has no VAE class {config.vae_class!r}")
        kwargs = {"subfolder": config.vae_subfolder} if config.vae_subfolder else {}
        self.vae = cls.from_pretrained(config.vae, **kwargs).to(device).eval().requires_grad_(False)
        self.video = config.vae_class in VIDEO_VAES
        self.name = f"{config.vae}:{config.vae_subfolder or ''}"
        vae_config = self.vae.config
        self.channels = vae_config.latent_channels if hasattr(vae_config, "latent_channels") else vae_config.z_dim
        mean, std = getattr(vae_config, "latents_mean", None), getattr(vae_config, "latents_std", None)
        if mean is not None and std is not None:
            self.shift = torch.tensor(mean, device=device).view(1, -1, 1, 1, 1)
            self.scale = 1.0 / torch.tensor(std, device=device).view(1, -1, 1, 1, 1)
        else:
            self.shift = getattr(vae_config, "shift_factor", None) or 0.0
            self.scale = getattr(vae_config, "scaling_factor", None) or 1.0

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, H, W) in [-1, 1] -> (N, c, T', h, w)."""
        if self.video:
            z = self.vae.encode(pixels).latent_dist.mode()
        else:
            n, _, t = pixels.shape[:3]
            frames = pixels.transpose(1, 2).flatten(0, 1)  # (N*T, 3, H, W)
            z = self.vae.encode(frames).latent_dist.mode()
            z = z.view(n, t, *z.shape[1:]).transpose(1, 2)  # (N, c, T, h, w)
        return (z - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents / self.scale + self.shift
        if self.video:
            return self.vae.decode(z).sample
        n, _, t = z.shape[:3]
        frames = self.vae.decode(z.transpose(1, 2).flatten(0, 1)).sample  # (N*T, 3, H, W)
        return frames.view(n, t, *frames.shape[1:]).transpose(1, 2)


def load_codec(config: EncoderConfig, device: torch.device) -> IdentityCodec | DiffusersCodec:
    return IdentityCodec() if config.vae == "identity" else DiffusersCodec(config, device)


# ---- text encoders --------------------------------------------------------------------------

class ByteTextEncoder:
    """UTF-8 bytes -> fixed random embeddings (seeded, never trained). Offline and free; the DiT's
    text projection learns what it needs from them. For tests and tiny runs only."""

    name = "bytes"

    def __init__(self, config: EncoderConfig, device: torch.device):
        generator = torch.Generator().manual_seed(0)
        self.dim, self.max_tokens = config.bytes_dim, config.max_text_tokens
        self.table = (torch.randn(257, self.dim, generator=generator) / self.dim ** 0.5).to(device)
        self.positions = (torch.randn(self.max_tokens, self.dim, generator=generator) * 0.1).to(device)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(texts), self.max_tokens, dtype=torch.long)
        for i, text in enumerate(texts):
            data = list(text.encode()[: self.max_tokens - 1])
            ids[i, : len(data) + 1] = torch.tensor([256] + data)  # 256 = start, never masked
        ids = ids.to(self.table.device)
        return self.table[ids] + self.positions[None], ids > 0  # (N, S, E), (N, S)


class TransformersTextEncoder:
    """A frozen transformers encoder's last hidden states: T5 (encoder only), CLIP text, or any
    AutoModel (Qwen); padding tokens are masked out of cross-attention."""

    def __init__(self, config: EncoderConfig, device: torch.device):
        import transformers

        sub = {"subfolder": config.text_subfolder} if config.text_subfolder else {}
        tok_sub = {"subfolder": config.tokenizer_subfolder} if config.tokenizer_subfolder else {}
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(config.text, **tok_sub)
        model_type = transformers.AutoConfig.from_pretrained(config.text, **sub).model_type
        cls = {"t5": transformers.T5EncoderModel, "umt5": transformers.UMT5EncoderModel,
               "mt5": transformers.MT5EncoderModel, "clip": transformers.CLIPTextModel,
               "clip_text_model": transformers.CLIPTextModel}.get(model_type, transformers.AutoModel)
        self.model = cls.from_pretrained(config.text, **sub).to(device).eval().requires_grad_(False)
        model_config = self.model.config
        self.dim = getattr(model_config, "d_model", None) or model_config.hidden_size
        self.max_tokens, self.device = config.max_text_tokens, device
        self.name = f"{config.text}:{config.text_subfolder or ''}"

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_tokens,
                                return_tensors="pt").to(self.device)
        states = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        mask = tokens.attention_mask.bool()
        mask[:, 0] = True  # an empty instruction still attends to something
        return states, mask  # (N, S, E), (N, S)


def load_text_encoder(config: EncoderConfig, device: torch.device) -> ByteTextEncoder | TransformersTextEncoder:
    return ByteTextEncoder(config, device) if config.text == "bytes" else TransformersTextEncoder(config, device)


# ---- latent cache ---------------------------------------------------------------------------

class LatentCache:
    """Latents on disk, one file per (encoder, pixels) pair. Keyed by the pixels' hash, not the
    sample id, so random crops and clip windows can never fetch another crop's latents."""

    def __init__(self, root: str, codec_name: str):
        self.root = Path(root) / hashlib.sha1(codec_name.encode()).hexdigest()[:16]
        self.hits = self.misses = 0

    def encode(self, codec: IdentityCodec | DiffusersCodec, pixels_uint8: torch.Tensor,
               to_model: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Latents of a uint8 batch (N, C, T, H, W); `to_model` maps uint8 to the codec's input."""
        keys = [hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest() for x in pixels_uint8]
        paths = [self.root / k[:2] / f"{k}.pt" for k in keys]
        missing = [i for i, p in enumerate(paths) if not p.is_file()]
        self.hits += len(paths) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = codec.encode(to_model(pixels_uint8[missing])).cpu()
            for i, latent in zip(missing, fresh):
                paths[i].parent.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=paths[i].parent, delete=False) as tmp:
                    torch.save(latent.clone(), tmp)
                os.replace(tmp.name, paths[i])
        return torch.stack([torch.load(p, weights_only=True) for p in paths])
