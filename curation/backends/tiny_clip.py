"""Tiny, randomly initialised CLIP models built from configs (`tiny:clip`, `tiny:open-clip`; see
`curation.backends.models`).

They exist so the embedding backends run end to end offline through the very loaders a real
checkpoint takes: transformers' `from_pretrained`, and open_clip's own `local-dir:` layout
(`open_clip_config.json` + `open_clip_model.safetensors`, what the hub's open_clip repos hold).
Their embeddings are meaningless. Sizes follow the recipe measured in shared/ENVIRONMENT.md (hidden
32, 2 layers, 2 heads, 224 px in 32 px patches, 16-d projection); weights are seeded so a rebuild
gives the same model.
"""

from __future__ import annotations

from pathlib import Path

import torch

SEED = 0
WIDTH = 32  # hidden size of both towers
LAYERS = 2
HEADS = 2
EMBED_DIM = 16  # the shared image-text space
IMAGE_SIZE = 224  # a real CLIP's input, so preprocessing (resize + centre crop) is the real one
PATCH_SIZE = 32
CONTEXT_LENGTH = 77  # CLIP's text length


def build_tiny_clip(target: Path) -> None:
    """transformers `CLIPModel` with a byte-level CLIP tokenizer (no download: every text tokenizes
    to one token per byte) and the stock `CLIPImageProcessor`, saved with `save_pretrained`."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CONTEXT_LENGTH)
    tower = dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS)
    config = CLIPConfig(
        text_config=dict(tower, vocab_size=len(vocab), max_position_embeddings=CONTEXT_LENGTH,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(tower, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE),
        projection_dim=EMBED_DIM,
    )
    torch.manual_seed(SEED)
    CLIPModel(config).eval().save_pretrained(target)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(target)


def build_tiny_open_clip(target: Path) -> None:
    """open_clip `CLIP` from a tiny model config, saved the way open_clip's hub export does
    (`push_to_hf_hub.save_for_hf`, minus the tokenizer: open_clip's built-in BPE tokenizer ships
    with the package, so the config's vocabulary is its 49408 tokens)."""
    from dataclasses import asdict

    import safetensors.torch
    from open_clip import CLIP
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.push_to_hf_hub import save_config_for_hf
    from open_clip.transform import PreprocessCfg

    model_cfg = {
        "embed_dim": EMBED_DIM,
        "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "width": WIDTH, "layers": LAYERS,
                       "head_width": WIDTH // HEADS},
        "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": WIDTH, "heads": HEADS,
                     "layers": LAYERS},
    }
    torch.manual_seed(SEED)
    model = CLIP(**model_cfg).eval()
    set_model_preprocess_cfg(model, asdict(PreprocessCfg()))  # OpenAI CLIP's: 224 px, bicubic, its mean/std
    safetensors.torch.save_file(model.state_dict(), str(target / HF_SAFE_WEIGHTS_NAME))
    save_config_for_hf(model, target / HF_CONFIG_NAME, model_config=model_cfg)
