"""Encoders load by local path through the same code as hub ids: tiny random diffusers VAEs (an
image VAE per frame and Wan's video VAE) and tiny T5 / CLIP-text / Qwen2 text encoders, built
from configs and saved with `save_pretrained`; the latent cache; a training run in latent space."""

from __future__ import annotations

import pytest
import torch

from curation.train.encoders import EncoderConfig, LatentCache, load_codec, load_text_encoder

from tests.fixtures.training import save_text_model, save_vae

CPU = torch.device("cpu")


@pytest.mark.parametrize("kind", ["t5", "clip", "qwen2"])
def test_text_encoders_load_from_a_local_dir(kind, tmp_path):
    dim = save_text_model(kind, tmp_path / kind)
    encoder = load_text_encoder(EncoderConfig(text=str(tmp_path / kind), max_text_tokens=12), CPU)
    states, mask = encoder.encode(["make the cat blue", ""])
    assert encoder.dim == dim and states.shape == (2, 12, dim) and mask.dtype == torch.bool
    assert mask[0].sum() > mask[1].sum() >= 1  # padding is masked; an empty text keeps one token


def test_byte_text_encoder_is_fixed_and_masks_padding():
    encoder = load_text_encoder(EncoderConfig(text="bytes", max_text_tokens=8), CPU)
    a, mask = encoder.encode(["red", "a longer instruction"])
    b, _ = load_text_encoder(EncoderConfig(text="bytes", max_text_tokens=8), CPU).encode(["red", "a longer instruction"])
    assert torch.equal(a, b) and mask.tolist()[0] == [True] * 4 + [False] * 4 and mask[1].all()


@pytest.mark.parametrize("vae_class,latent_frames", [("AutoencoderKL", 5), ("AutoencoderKLWan", 3)])
def test_diffusers_vaes_load_from_a_local_dir_and_round_trip_shapes(vae_class, latent_frames, tmp_path):
    save_vae(vae_class, tmp_path / "vae")
    codec = load_codec(EncoderConfig(vae=str(tmp_path / "vae"), vae_class=vae_class), CPU)
    pixels = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    latents = codec.encode(pixels)
    assert codec.channels == 4 and latents.shape == (2, 4, latent_frames, 8, 8)
    assert codec.decode(latents).shape[:2] == (2, 3) and codec.decode(latents).shape[-2:] == (16, 16)


def test_latent_cache_hits_on_the_same_pixels_only(tmp_path):
    save_vae("AutoencoderKL", tmp_path / "vae")
    codec = load_codec(EncoderConfig(vae=str(tmp_path / "vae")), CPU)
    cache = LatentCache(str(tmp_path / "cache"), codec.name)
    frames = torch.randint(0, 256, (2, 3, 1, 16, 16), dtype=torch.uint8)
    to_model = lambda x: x.float() / 127.5 - 1  # noqa: E731
    first = cache.encode(codec, frames, to_model)
    again = cache.encode(codec, frames, to_model)
    assert (cache.hits, cache.misses) == (2, 2) and torch.equal(first, again)
    assert torch.allclose(first, codec.encode(to_model(frames)), atol=1e-6)
    cache.encode(codec, frames.flip(-1), to_model)
    assert cache.misses == 4
