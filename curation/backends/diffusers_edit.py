"""Instruction-based image editing with a local diffusers pipeline (the `diffusers` reference backend).

The target is a Qwen-Image-Edit class model (`QwenImageEditPipeline`, what Kiwi-Edit used to make
its references), but any `DiffusionPipeline` whose `__call__` takes `image=` and `prompt=` works
(InstructPix2Pix, FLUX Kontext, ...). Sampling options are passed through under the pipeline's own
names and only when set; a set option the pipeline's `__call__` does not take is a config error
at load time, never silently dropped.

Determinism: every image gets its own CPU generator seeded with `seed`, so an image's result does
not depend on which batch it landed in, its position there or the device's RNG (a resumed run
reproduces it). Images are batched only with images of the same size: editing pipelines resize a
batch to one working size (Qwen-Image-Edit takes it from the first image).

`tiny:qwen-image-edit` and `tiny:instruct-pix2pix` are tiny random-weight pipelines built from
configs offline (no tokenizer download: byte-level vocabularies made here) for tests; their edits
are noise.
"""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.backends.models import DEVICE_PATTERN, pick_device, resolve_model
from curation.core.config_change import RUN_ONLY

log = logging.getLogger(__name__)

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class DiffusersEditConfig(BaseModel):
    """Which pipeline, and how it samples. Defaults are Qwen-Image-Edit's recommended settings."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("Qwen/Qwen-Image-Edit", description="hub id, local directory or tiny:qwen-image-edit / tiny:instruct-pix2pix")
    steps: int = Field(50, ge=1, description="num_inference_steps")
    guidance_scale: float | None = Field(
        None, description="the pipeline's guidance_scale (InstructPix2Pix: text CFG; Qwen-Image-Edit: guidance-distilled checkpoints only)")
    true_cfg_scale: float | None = Field(4.0, description="Qwen-Image-Edit's classifier-free guidance (runs only with a negative_prompt)")
    negative_prompt: str | None = Field(" ", description="same for every image; None passes none")
    image_guidance_scale: float | None = Field(None, description="InstructPix2Pix: how closely to follow the input image")
    seed: int = Field(0, description="every image's generator starts from this seed")
    device: str = Field("auto", pattern=DEVICE_PATTERN, json_schema_extra=RUN_ONLY,
                        description="auto (CUDA when the worker has a GPU), cpu, cuda or cuda:N")
    dtype: Dtype = Field("auto", description="auto: bfloat16 on CUDA, float32 on the CPU")
    batch_size: int = Field(1, ge=1, json_schema_extra=RUN_ONLY, description="same-size images per pipeline call")
    working_size: Literal["pipeline", "input"] = Field(
        "pipeline", description="pipeline: its own working resolution (Qwen: ~1 MP at the input's aspect); "
        "input: the input's size, where the pipeline takes height/width. Results are resized to the input's size either way")


# Config fields passed to `__call__` under their own name, when set (not None).
OPTIONAL_CALL_ARGS = ("guidance_scale", "true_cfg_scale", "negative_prompt", "image_guidance_scale")


@dataclass
class LoadedPipeline:
    pipe: Any
    device: str
    random_weights: bool
    accepted: set[str]  # the keyword arguments its __call__ takes


def load_pipeline(cfg: Any, needed: tuple[str, ...], optional: tuple[str, ...], what: str,
                  refused: dict[str, str] | None = None) -> LoadedPipeline:
    """A diffusers pipeline from `cfg.model` (hub id, local directory or tiny:<name>), on `cfg.device`
    in `cfg.dtype` (auto: bfloat16 on CUDA, float32 on the CPU), without progress bars, refused in
    one line when its __call__ lacks an argument it is driven with (`needed`) or one the config
    sets (`optional` fields not None), or when it takes an argument that marks another kind of
    pipeline (`refused`: argument -> what to say): the wrong kind of pipeline fails at load, not mid-run."""
    import torch
    from diffusers import DiffusionPipeline

    device = pick_device(cfg.device)
    resolved = resolve_model(cfg.model)
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    pipe = DiffusionPipeline.from_pretrained(resolved.path, dtype=getattr(torch, dtype)).to(device)
    pipe.set_progress_bar_config(disable=True)
    accepted = set(inspect.signature(type(pipe).__call__).parameters)
    for argument, message in (refused or {}).items():
        if argument in accepted:
            raise ValueError(f"{type(pipe).__name__} {message}")
    for argument in needed:
        if argument not in accepted:
            raise ValueError(f"{type(pipe).__name__}.__call__ takes no {argument}=; not {what}")
    unsupported = [arg for arg in optional if getattr(cfg, arg) is not None and arg not in accepted]
    if unsupported:
        raise ValueError(f"{type(pipe).__name__} does not take {', '.join(unsupported)}; set them to null")
    return LoadedPipeline(pipe, device, resolved.random_weights, accepted)


class DiffusersEditor:
    """Loads the pipeline once (`from_pretrained`, then moved to the device), then `edit` runs it."""

    def __init__(self, cfg: DiffusersEditConfig):
        self.cfg = cfg
        loaded = load_pipeline(cfg, ("image", "prompt", "num_inference_steps", "generator", "output_type"),
                               OPTIONAL_CALL_ARGS, "an image-editing pipeline")
        self.pipe, self.device, self.random_weights = loaded.pipe, loaded.device, loaded.random_weights
        accepted = loaded.accepted
        self.sizes_from_input = cfg.working_size == "input" and {"height", "width"} <= accepted

    def edit(self, images: list[np.ndarray], prompts: list[str]) -> list[np.ndarray]:
        """One edited (H, W, 3) uint8 RGB image per (image, instruction), each at its input's size."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"image {i}: expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
            by_size[image.shape[:2]].append(i)
        out: list[np.ndarray | None] = [None] * len(images)
        for indices in by_size.values():
            for start in range(0, len(indices), self.cfg.batch_size):
                chunk = indices[start:start + self.cfg.batch_size]
                for i, edited in zip(chunk, self._call([images[i] for i in chunk], [prompts[i] for i in chunk])):
                    out[i] = edited
        return out  # type: ignore[return-value]

    def _call(self, images: list[np.ndarray], prompts: list[str]) -> list[np.ndarray]:
        import torch
        from PIL import Image

        height, width = images[0].shape[:2]
        kwargs = {arg: getattr(self.cfg, arg) for arg in OPTIONAL_CALL_ARGS if getattr(self.cfg, arg) is not None}
        if "negative_prompt" in kwargs:  # one per image: Qwen encodes it with each image
            kwargs["negative_prompt"] = [kwargs["negative_prompt"]] * len(images)
        if self.sizes_from_input:
            kwargs.update(height=height, width=width)
        result = self.pipe(
            image=[Image.fromarray(im) for im in images],  # PIL: Qwen-Image-Edit reads `.size` off it
            prompt=list(prompts),
            num_inference_steps=self.cfg.steps,
            generator=[torch.Generator("cpu").manual_seed(self.cfg.seed) for _ in images],
            output_type="np",
            **kwargs,
        )
        edited = []
        for frame in result.images:  # (h, w, 3) float in [0, 1]
            frame = (np.clip(frame, 0.0, 1.0) * 255.0).round().astype(np.uint8)
            if frame.shape[:2] != (height, width):
                shrink = frame.shape[0] * frame.shape[1] > height * width
                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
            edited.append(frame)
        return edited


# ---------------------------------------------------------------------------------------------
# Tiny random-weight pipelines (tiny:<name>, built once by models.resolve_model)
# ---------------------------------------------------------------------------------------------

SEED = 0
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins a byte-level BPE uses for bytes: with them as the whole
    vocabulary any text tokenizes (one token per byte) and nothing has to be downloaded."""
    from tokenizers.pre_tokenizers import ByteLevel

    return sorted(ByteLevel.alphabet())


def build_tiny_qwen_image_edit(target: Path) -> None:
    """QwenImageEditPipeline at hidden sizes 16-48: Qwen2.5-VL text encoder (2 layers), a 2-block
    MMDiT, and a Wan-style VAE at 8x downscale with 4 base channels, the cheapest that keeps the
    pipeline's ~1 MP working size affordable on a CPU (its conv3d layers at full resolution
    dominate: ~1.5 s per image here)."""
    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline, QwenImageTransformer2DModel
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2Tokenizer,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = Qwen2Tokenizer(vocab={s: i for i, s in enumerate(_byte_symbols())}, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text_config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1e6},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    # 56x56 .. 112x112 pixels for the text encoder's view of the image: at most 16 image tokens.
    vision_size = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=vision_size, patch_size=14, merge_size=2, temporal_patch_size=2),
        video_processor=Qwen2VLVideoProcessor(size=vision_size, patch_size=14, merge_size=2, temporal_patch_size=2),
        tokenizer=tokenizer,
    )
    torch.manual_seed(SEED)
    z_dim = 4
    pipe = QwenImageEditPipeline(
        text_encoder=Qwen2_5_VLForConditionalGeneration(text_config).eval(),
        tokenizer=tokenizer,
        processor=processor,
        transformer=QwenImageTransformer2DModel(
            patch_size=2, in_channels=4 * z_dim, out_channels=z_dim, num_layers=2, attention_head_dim=16,
            num_attention_heads=3, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
        ),
        # The pipeline's scale factor is 2 ** len(temperal_downsample); it must equal the VAE's
        # spatial downscale 2 ** (len(dim_mult) - 1).
        vae=AutoencoderKLQwenImage(base_dim=4, z_dim=z_dim, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                   temperal_downsample=[False, True, True], latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    pipe.save_pretrained(target)


def tiny_sd_parts(unet_in_channels: int, sample_size: int) -> dict[str, Any]:
    """The parts of a tiny random Stable-Diffusion-family pipeline (text-to-image, InstructPix2Pix,
    inpainting: they differ in the UNet's input channels): a 2-layer CLIP text encoder with a
    byte-level tokenizer (nothing downloaded), a 2-level UNet at 16-32 channels and a 3-level KL
    VAE (4x downscale), seeded so every build is the same."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )).eval()
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=unet_in_channels, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 16, 16], layers_per_block=1, norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
    )
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet}


def build_tiny_instruct_pix2pix(target: Path) -> None:
    """StableDiffusionInstructPix2PixPipeline: `tiny_sd_parts` with a UNet of 8 input channels
    (noise + image latents)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(
        **tiny_sd_parts(unet_in_channels=8, sample_size=32), scheduler=EulerAncestralDiscreteScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(target)
