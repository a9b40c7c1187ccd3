"""The models `bench/gpu_check.py` measures, by profile, as references the backends load.

`tiny`: the repository's own tiny recipes (`tiny:grounding-dino`, ... in
`curation.backends.models`), the `models=tiny` profile, so the CPU dry run takes the very code path
of CI's pipeline runs.

`full`: real-size architectures with random weights, built from configs written out here (there is
no network on the GPU machine): Grounding DINO-T, SAM2.1 hiera-small, CLIP ViT-B/32 and a
Qwen2.5-VL-3B. They are initialised on the target device (a 3.75B-parameter init on the CPU takes
minutes) and saved with `save_pretrained`, so the backends load them through `from_pretrained` as
they would a downloaded checkpoint. Tokenizers are the tiny ones (a real vocabulary needs the hub):
token ids stay inside the real embedding tables, but the byte-level VLM tokenizer spends about one
token per byte of prompt text, several times what Qwen's own tokenizer would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from curation.backends.tiny_vision import tiny_bert_vocab
from curation.backends.tiny_vlm import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_tokenizer

# name -> the `tiny:` reference its backend resolves.
TINY = {"grounding_dino": "tiny:grounding-dino", "sam2": "tiny:sam2", "clip": "tiny:clip", "qwen_vl": "tiny:qwen2-vl"}
FULL_NAMES = {"grounding_dino": "Grounding DINO-T (172M)", "sam2": "SAM2.1 hiera-small (39M image model)",
              "clip": "CLIP ViT-B/32 (151M)", "qwen_vl": "Qwen2.5-VL-3B (3.75B)"}

# Qwen2.5-VL-3B-Instruct's config.json, as transformers 5 spells it.
QWEN25_VL_3B_TEXT = dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                         num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
                         hidden_act="silu", tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6})
QWEN25_VL_3B_VISION = dict(depth=32, hidden_act="silu", hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3,
                           out_hidden_size=2048, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31])
# Qwen2.5-VL's preprocessor_config.json: 4..16384 merged patches of 28 px.
QWEN_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}


@contextlib.contextmanager
def _built_on(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Parameters created directly on `device` in `dtype`, seeded."""
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_grounding_dino_t(target: Path, device: str) -> None:
    """transformers' GroundingDinoConfig defaults are Grounding DINO-T: Swin-T, BERT-base, 900
    queries, 256 text tokens, 6+6 layers. Real input size (800 short side, 1333 long)."""
    from transformers import (
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    with _built_on(device, torch.float32):
        model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    model.save_pretrained(target)
    tokenizer = BertTokenizerFast(vocab=tiny_bert_vocab(), do_lower_case=True)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=tokenizer).save_pretrained(target)


def build_sam2_small(target: Path, device: str) -> None:
    """SAM2.1 hiera-small: Hiera with [1, 2, 11, 2] blocks, global attention at 7, 10, 13; 1024 px."""
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2ImageProcessor, Sam2Model, Sam2Processor, Sam2VisionConfig

    hiera = Sam2HieraDetConfig(blocks_per_stage=[1, 2, 11, 2], global_attention_blocks=[7, 10, 13])
    with _built_on(device, torch.float32):
        model = Sam2Model(Sam2Config(vision_config=Sam2VisionConfig(backbone_config=hiera))).eval()
    model.save_pretrained(target)
    Sam2Processor(image_processor=Sam2ImageProcessor()).save_pretrained(target)


def build_clip_b32(target: Path, device: str) -> None:
    """transformers' CLIPConfig defaults are ViT-B/32 (224 px) with the 512-wide text tower."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    config = CLIPConfig(text_config=dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id))
    with _built_on(device, torch.float32):
        model = CLIPModel(config).eval()
    model.save_pretrained(target)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(target)


def build_qwen25_vl_3b(target: Path, device: str, save_weights: bool) -> Any:
    """Qwen2.5-VL-3B in bf16 on `device`, with the tiny byte-level tokenizer and Qwen's image
    preprocessing. Saves the processor, and the weights when `save_weights` (7.5 GB: only when the
    backend will load them). Returns the model."""
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = build_tiny_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(QWEN25_VL_3B_TEXT, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=QWEN25_VL_3B_VISION, tie_word_embeddings=True,
                              image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                              vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    with _built_on(device, torch.bfloat16):
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=ids["<|endoftext|>"], eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
                                               pad_token_id=ids["<|endoftext|>"])
    if save_weights:
        model.save_pretrained(target)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=QWEN_PIXELS, patch_size=14, merge_size=2, temporal_patch_size=2),
        video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(target)
    return model
