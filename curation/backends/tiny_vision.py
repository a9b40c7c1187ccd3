"""Tiny, randomly initialised Grounding DINO and SAM2 built from configs (`tiny:grounding-dino`,
`tiny:sam2`; see `curation.backends.models`).

They exist so `ground` runs end to end offline through the very `from_pretrained` path a real
checkpoint takes. Their boxes and masks are meaningless. Sizes follow the recipes measured in
shared/ENVIRONMENT.md; weights are seeded so a rebuild gives the same model.
"""

from __future__ import annotations

from pathlib import Path

import torch

SEED = 0

# Grounding DINO's modeling code hard-codes these BERT ids ([CLS], [SEP], ".", "?" delimit phrases),
# so the tiny vocabulary must put them where bert-base-uncased has them.
BERT_SPECIAL = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}
VOCAB_SIZE = 1100

# Words entity descriptions are made of, so tiny-model queries tokenise to real ids, not all [UNK].
COMMON_WORDS = """
a an the and or of in on at to with without from by for into onto over under near next behind front
left right top bottom middle center side back up down out off is are was be being has have his her
its their this that these those it he she they them one two three four five six some many few all
man woman men women person people boy girl child children kid baby guy lady player worker driver rider
dog cat bird horse cow sheep fish animal cockatoo parrot duck chicken
car truck bus bike bicycle motorcycle train boat plane vehicle wheel tire road street sidewalk lane
house building wall door window roof floor ceiling room kitchen table chair sofa couch bed desk shelf
lamp light screen tv television computer laptop phone keyboard mouse monitor camera book paper sign
bottle cup glass mug plate bowl box bag basket can jar pot pan knife fork spoon food bread fruit apple
banana orange water drink coffee tea ball toy hat cap helmet shirt t-shirt jacket coat dress skirt
pants jeans shorts shoe shoes boot boots sock glove scarf tie suit uniform glasses sunglasses watch
ring necklace hair head face eye eyes nose mouth ear hand hands arm arms leg legs foot feet finger body
tree trees grass flower flowers plant leaf leaves branch bush garden park field forest mountain hill
sky cloud clouds sun moon star snow rain river lake sea ocean beach sand rock stone ground background
red green blue yellow black white gray grey brown pink purple orange dark light bright pale golden
silver colorful striped spotted wooden metal plastic glass leather small large big little tall short
long wide narrow old young new open closed empty full round square wet dry clean dirty hot cold
sitting standing walking running holding wearing looking smiling talking eating drinking playing
moving turning jumping driving riding carrying lying waving pointing reading writing opening closing
logo text letter number word poster picture frame painting mirror curtain fence gate bridge tower pole
wire cable rope chain stick bat racket net goal flag banner stage crowd audience team group pair
""".split()
EXTRA_TOKENS = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(",;:!'\"-()/&") + ["##s", "##es", "##ed", "##ing", "##ly"]


def tiny_bert_vocab() -> dict[str, int]:
    """Token -> id with BERT's special ids in place, common words and letters in the free slots,
    and `[unusedN]` filling the rest up to VOCAB_SIZE."""
    vocab = dict(BERT_SPECIAL)
    taken = set(vocab.values())
    free = (i for i in range(VOCAB_SIZE) if i not in taken)
    for token in dict.fromkeys(COMMON_WORDS + EXTRA_TOKENS):  # ordered, deduplicated
        if token not in vocab:
            vocab[token] = next(free)
    for i in free:
        vocab[f"[unused{i}]"] = i
    return vocab


def build_tiny_grounding_dino(target: Path) -> None:
    """Tiny Swin backbone + 1-layer BERT + 1/2-layer DINO encoder/decoder, saved with its processor."""
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    torch.manual_seed(SEED)
    backbone = SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=7,
                          out_indices=[2, 3, 4], out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128, pad_token_id=0)
    config = GroundingDinoConfig(
        # 2 decoder layers: 1 fails the tied-weights check.
        backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
        num_queries=10, max_text_len=64,
    )
    model = GroundingDinoForObjectDetection(config).eval()
    tokenizer = BertTokenizerFast(vocab=tiny_bert_vocab(), do_lower_case=True)  # vocab_file= is ignored in transformers 5
    # Small input size: the tiny model is for plumbing tests, not accuracy (the real one uses 800/1333).
    images = GroundingDinoImageProcessor(size={"shortest_edge": 256, "longest_edge": 448})
    model.save_pretrained(target)
    GroundingDinoProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(target)


def build_tiny_sam2(target: Path) -> None:
    """Tiny Hiera backbone at 128 px + prompt encoder / mask decoder at hidden 32, saved with its processor."""
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2ImageProcessor,
        Sam2MaskDecoderConfig,
        Sam2Model,
        Sam2Processor,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    torch.manual_seed(SEED)
    hiera = Sam2HieraDetConfig(hidden_size=12, image_size=[128, 128], blocks_per_stage=[1, 1, 1, 1],
                               embed_dim_per_stage=[12, 24, 48, 96], num_attention_heads_per_stage=[1, 1, 1, 1])
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[96, 48, 24, 12],
                              backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]], fpn_hidden_size=32)
    config = Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=32, image_size=128, patch_size=16),
        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    model = Sam2Model(config).eval()
    images = Sam2ImageProcessor(size={"height": 128, "width": 128}, mask_size={"height": 32, "width": 32})
    model.save_pretrained(target)
    Sam2Processor(image_processor=images).save_pretrained(target)
