"""Encoders load by local path through the same code as hub ids: tiny random diffusers VAEs (an
image VAE per frame and Wan's video VAE) and tiny T5 / CLIP-text / Qwen2 text encoders, built
from configs and saved with `save_pretrained`; the latent cache; a training run in latent space."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from curation.train.encoders import EncoderConfig, LatentCache, load_codec, load_text_encoder

CPU = torch.device("cpu")


def save_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "make the cat cup blue red add a ball to left of paint car scene brighter".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "<s>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                            bos_token="<s>").save_pretrained(path)


def save_text_model(kind: str, path: Path) -> int:
    import transformers as tf

    torch.manual_seed(0)
    if kind == "t5":
        model = tf.T5EncoderModel(tf.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                                              pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    elif kind == "clip":
        model = tf.CLIPTextModel(tf.CLIPTextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, max_position_embeddings=64, pad_token_id=0,
                                                   bos_token_id=3, eos_token_id=1))
    else:
        model = tf.Qwen2Model(tf.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    model.save_pretrained(path)
    save_tokenizer(path)
    return 32


def save_vae(kind: str, path: Path) -> None:
    import diffusers

    torch.manual_seed(0)
    if kind == "AutoencoderKL":
        vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                                      up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                                      norm_num_groups=8, sample_size=32)
    else:
        vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
                                         latents_mean=[0.1, 0.2, 0.3, 0.4], latents_std=[1.0, 2.0, 1.0, 2.0],
                                         scale_factor_temporal=2, scale_factor_spatial=2)
    vae.save_pretrained(path)


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
