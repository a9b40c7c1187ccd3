"""A tiny, randomly initialised Qwen2-VL (model, tokenizer, image processor) built offline.

It exists so the `local` VLM backend runs through exactly the `from_pretrained` + `generate` +
grammar-constrained decoding path of a real checkpoint on a CPU in seconds. Its outputs are
meaningless.

Why the tokenizer and generation config look the way they do: a random model under a JSON
grammar rarely chooses to close a string, so greedy decoding runs to `max_tokens` and the JSON
never finishes (measured: 8 of 8 generations hit 1024 tokens, none parsed). Two things make
every generation short and complete (about 45 tokens for the annotation schema):
- a byte-level BPE vocabulary (any text is representable) with multi-character tokens for the
  JSON structure and the annotation's keys, so grammar-forced text costs few tokens;
- a `sequence_bias` in the checkpoint's `generation_config.json`, in tiers, so that ending a
  string and its object beats ending a string, which beats starting or continuing one. It belongs
  to this checkpoint only (real checkpoints carry their own generation config), so the backend's
  code path is the one a real model takes.
"""

from __future__ import annotations

import json
from pathlib import Path

SEED = 0
# Special tokens; ids follow the byte-level vocabulary and the merges.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Multi-character tokens: JSON structure (json.dumps' default separators) and the words the VINCIE
# annotation schema forces, so forced text costs few tokens.
STRUCTURE_BIAS: dict[str, float] = {
    # Logit bias per token, in tiers 2 apart, so that a random model closes whatever it opens: its
    # own logits span under 1 at any step (std ~0.1), so the tiers decide. Outputs stay meaningless.
    # 16: end a key and give it an empty object (an empty change map); invalid where the object
    # needs keys (a caption needs "scene").
    '": {}': 16.0, '": {}, "': 16.0,
    # 14: end a string and its object.
    '"}': 14.0, '"}, "': 14.0, '"}}': 14.0,
    # 12: end a key and start its value.
    '": {"': 12.0, '": "': 12.0, '": ': 12.0,
    # 10: end a string.
    '"': 10.0, '""': 10.0, '", "': 10.0, '"", "': 10.0,
    # 4: an empty object, beaten by any string end (inside a string `{}` is just text).
    "{}": 4.0, '{}, "': 4.0,
    # 0: a token without a bias.
    '{"': 0.0,
}
WORDS = [
    "frame1_caption", "frame2_caption", "scene", "character_change", "object_change",
    "global_change", "camera_change", "other_change", "summary_change", "char", "obj",
    " the", " a", " and", " of", " to", " in", "ing", "ed", " is", " person", " camera", "none",
]
# Longer words win over their own prefixes (forced text in few tokens) but never over a string end.
WORD_BIAS_PER_CHAR = 0.2
MULTI_CHAR_TOKENS = [t for t in STRUCTURE_BIAS if len(t) > 1] + WORDS

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what the ByteLevel pre-tokenizer uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _byte_level_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary (256 byte symbols, then every prefix of each multi-char token) and the merges
    that build them left to right."""
    to_unicode = _bytes_to_unicode()
    vocab = {to_unicode[b]: b for b in range(256)}
    merges: list[tuple[str, str]] = []
    for text in MULTI_CHAR_TOKENS:
        symbols = [to_unicode[b] for b in text.encode()]
        prefix = symbols[0]
        for sym in symbols[1:]:
            if prefix + sym not in vocab:
                vocab[prefix + sym] = len(vocab)
                merges.append((prefix, sym))
            prefix += sym
    return vocab, merges


def build_tiny_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    """Byte-level BPE over ~420 tokens with Qwen's special tokens and a chat template that
    places one image placeholder per `{"type": "image"}` part (the processor expands it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _byte_level_bpe()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    # No regex split: merges may cross spaces and punctuation (`", "`), like the JSON they model.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_qwen2_vl(target: Path) -> None:
    """Save a tiny random Qwen2-VL checkpoint and its processor into `target` (deterministic)."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    target = Path(target)
    tokenizer = build_tiny_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab_size = len(tokenizer)
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1e4},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(SEED)
    model = Qwen2VLForConditionalGeneration(config).eval()
    to_unicode = _bytes_to_unicode()
    biases = {**{w: WORD_BIAS_PER_CHAR * len(w) for w in WORDS}, **STRUCTURE_BIAS}
    bias = [[[tokenizer.convert_tokens_to_ids("".join(to_unicode[b] for b in text.encode()))], value]
            for text, value in biases.items() if value]
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        sequence_bias=bias,
    )
    model.save_pretrained(target)

    # 56x56 .. 112x112 pixels: at most 64 patches, 16 image tokens per image after the 2x2 merge.
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112}, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    # The processor requires a video processor even though we only send images.
    video_processor = Qwen2VLVideoProcessor(
        size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112}, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor = Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, chat_template=CHAT_TEMPLATE
    )
    processor.save_pretrained(target)
    (target / "tiny_model.json").write_text(json.dumps({"random_weights": True, "seed": SEED}) + "\n")
