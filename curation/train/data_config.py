"""What the loader reads and how it shapes examples: the data config, and which mixing group each
shard `kind` feeds. Kept apart from the loader (data.py) and the example decoder (examples.py),
which both depend on it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Which mixing group a shard `kind` feeds: images (pairs, session turns), videos (triplets) and
# reference-conditioned edits (quads, image or video).
KIND_GROUPS = {"pair": "image", "session": "image", "triplet": "video", "quad": "reference"}
GROUPS = ("image", "video", "reference")


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shards: str = Field(description="a shards dir (every *.tar under it), a .tar, a brace pattern "
                                    "(train-{000000..000009}.tar) or comma-separated URLs")
    resolution: int = Field(256, ge=16, description="bucket side: each bucket holds about resolution² pixels")
    aspects: list[float] = Field([1.0, 4 / 3, 3 / 4, 16 / 9, 9 / 16], description="bucket aspect ratios (W/H)")
    size_multiple: int = Field(16, gt=0, description="bucket sides are multiples of this (VAE factor × patch size)")
    max_frames: int = Field(81, gt=0, description="videos are cut to at most this many frames")
    frame_counts: list[int] = Field([1, 5, 9, 17, 33, 49, 65, 81], description="allowed clip lengths: a video "
                                    "takes the longest one that fits (4k+1 suits causal video VAEs)")
    frame_stride: int = Field(1, gt=0, description="take every n-th frame of a video")
    max_context: int = Field(3, ge=0, description="session turns: earlier frames given as reference tokens, at most")
    mix: dict[str, float] = Field({"image": 2.0, "video": 1.0, "reference": 1.0},
                                  description="batch ratio per group (normalised; a group without shards is left out)")
    batch_size: int = Field(4, gt=0, description="examples per batch (per rank)")
    shuffle_buffer: int = Field(256, ge=1, description="raw samples held for shuffling (1 = none)")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes (0 = decode in the training process)")
    random_crop: bool = Field(True, description="random crop window inside the bucket (false: centre)")
    seed: int = Field(0, description="shard order, shuffle buffer, crops and mixing derive from it")

    @field_validator("mix")
    @classmethod
    def _known_groups(cls, mix: dict[str, float]) -> dict[str, float]:
        unknown = set(mix) - set(GROUPS)
        if unknown or any(v < 0 for v in mix.values()) or not any(v > 0 for v in mix.values()):
            raise ValueError(f"mix needs non-negative weights for {GROUPS}, one positive; got {mix}")
        return mix
