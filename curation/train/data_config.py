"""What the loader reads and how it shapes examples: the data config, and which mixing group each
shard `kind` feeds. Kept apart from the loader (data.py) and the example decoder (examples.py),
which both depend on it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Which mixing group a shard `kind` feeds: images (pairs, session turns), videos (triplets) and
# reference-conditioned edits (quads, image or video).
KIND_GROUPS = {"pair": "image", "session": "image", "triplet": "video", "quad": "reference"}
GROUPS = ("image", "video", "reference")


def kind_group(kind: str, video: bool, quads: str = "group") -> str | None:
    """The mixing group a sample feeds (None for a kind no group trains). With quads=modality a quad
    feeds its own modality's group: a quad of .mp4 clips the video group, one of .jpg images the image group."""
    if kind == "quad" and quads == "modality":
        return "video" if video else "image"
    return KIND_GROUPS.get(kind)


class SessionTasks(BaseModel):
    """VINCIE's three tasks (seed 003 §3.3) and how often a turn trains each. The paper publishes no
    weights; ours are in train.yaml with their reason."""

    model_config = ConfigDict(extra="forbid")

    nip: float = Field(0.6, ge=0, description="next-image prediction: the turn's target is frame k+1")
    csp: float = Field(0.2, ge=0, description="current-segmentation prediction: the target is turn k's source RoE mask")
    nsp: float = Field(0.2, ge=0, description="next-segmentation prediction: the target is turn k's target RoE mask")


class SessionPrompts(BaseModel):
    """Fixed texts that tell the model which task a target is (ours: the paper's own texts do not carry over)."""

    model_config = ConfigDict(extra="forbid")

    nip: str = "Now apply the edit to the image."
    csp: str = "Mark the regions of the current image that this edit changes."
    nsp: str = "Mark the regions of the next image that this edit changed."


class SessionConfig(BaseModel):
    """How a session becomes a multi-turn training sequence (VINCIE, seed 003 §3.2-3.3, §4.1, D.4)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["sequence", "turns"] = Field(
        "sequence", description="sequence: one example per session (every turn, one forward pass); turns: one "
                                "example per turn with at most max_context earlier frames (the per-turn baseline)")
    max_tokens: int = Field(4096, gt=0, description="visual tokens per sequence, at most (a frame counts "
                            "(H/size_multiple)·(W/size_multiple)); longer sessions are cut at turn boundaries")
    tasks: SessionTasks = SessionTasks()
    prompts: SessionPrompts = SessionPrompts()
    roe_probability: float = Field(0.8, ge=0, le=1, description="a session trains with RoE maps in its context (§4.1: 80%)")
    drop_current_frame: float = Field(0.2, ge=0, le=1, description="per turn: the current frame leaves the context (§4.1)")
    drop_current_roe: float = Field(0.7, ge=0, le=1, description="per turn: the current RoE map leaves the context (§4.1)")
    drop_next_roe: float = Field(0.7, ge=0, le=1, description="per turn: the next RoE map leaves the context (§4.1)")
    camera_prefix: bool = Field(True, description="prefix each instruction with its turn's camera label (D.4)")


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
    max_context: int = Field(3, ge=0, description="session.mode=turns: earlier frames given as reference tokens, at most")
    session: SessionConfig = SessionConfig()
    regions: bool = Field(False, description="decode edits' grounded masks (mask_src/mask_tgt.png) for the masked "
                                             "loss; set from flow.region_weight, not by hand")
    mix: dict[str, float] = Field({"image": 2.0, "video": 1.0, "reference": 1.0},
                                  description="batch ratio per group (normalised; a group without shards is left out)")
    quads: Literal["group", "modality"] = Field(
        "group", description="group: quads (image or video) form the `reference` mixing group; modality: an image quad "
                             "feeds `image` and a video quad `video`, taking their modality's share (InstructX)")
    batch_size: int = Field(4, gt=0, description="examples per batch (per rank)")
    group_batch_size: dict[str, int | None] = Field(
        {}, description="per group, examples per batch (per rank) in place of batch_size; null or absent = batch_size")
    resolution_schedule: list[tuple[int, int]] = Field(
        [], description="[step, resolution] switches: from that many optimizer steps on, buckets hold ~resolution² "
                        "pixels (before the first, `resolution`); the trainer rebuilds its loader at each switch")
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

    @field_validator("group_batch_size")
    @classmethod
    def _group_sizes(cls, sizes: dict[str, int | None]) -> dict[str, int | None]:
        if set(sizes) - set(GROUPS) or any(v is not None and v <= 0 for v in sizes.values()):
            raise ValueError(f"group_batch_size takes a positive size (or null) per group of {GROUPS}; got {sizes}")
        return sizes

    @field_validator("resolution_schedule")
    @classmethod
    def _increasing_steps(cls, schedule: list[tuple[int, int]]) -> list[tuple[int, int]]:
        steps = [step for step, _ in schedule]
        if any(s < 0 for s in steps) or steps != sorted(set(steps)) or any(r < 16 for _, r in schedule):
            raise ValueError(f"resolution_schedule needs [step, resolution] pairs with increasing steps >= 0 and "
                             f"resolutions >= 16; got {schedule}")
        return schedule

    def batch_size_of(self, group: str) -> int:
        return self.group_batch_size.get(group) or self.batch_size

    def at_step(self, step: int) -> DataConfig:
        """This config with the resolution its schedule sets after `step` optimizer steps."""
        resolution = next((r for s, r in reversed(self.resolution_schedule) if s <= step), self.resolution)
        return self if resolution == self.resolution else self.model_copy(update={"resolution": resolution})
