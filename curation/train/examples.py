"""Raw shard samples -> training examples: decoded, bucketed frames with their instruction.

Only the shard contract (DESIGN.md §5) is assumed: a `json` member naming the kind, `txt`, `src/tgt`
as `.jpg` or `.mp4`, `ref.png`, `mask_src.png`/`mask_tgt.png` for grounded edits, and
`frame_<i>.jpg` + `turns.json` + `mask_<k>_src.png`/`mask_<k>_tgt.png` for sessions (planned into
multi-turn sequences by sessions.py).
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from curation.train import media
from curation.train.data_config import DataConfig, kind_group
from curation.train.sessions import SessionExample, TurnData, plan_sequences


def seed_of(*parts: Any) -> int:
    """A stable 32-bit seed from parts (Python's hash() of strings changes per process)."""
    return zlib.crc32(":".join(map(str, parts)).encode())


class UnusableSample(ValueError):
    """A sample that decodes but cannot make an example: a member its kind needs is missing, or a
    session has no annotated turn. `reason` is the key it is counted under."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Example:
    """One training example: frames (T, H, W, C) uint8 at the bucket size."""

    key: str  # "<sample key>#<turn>"
    group: str
    source: np.ndarray
    target: np.ndarray
    reference: np.ndarray  # (R, H, W, C), R = 0 without references
    instruction: str
    epoch: int = 0  # the stream epoch that made it (a bucket may carry it over into the next)
    region: np.ndarray | None = None  # (1, H, W, 1) uint8 0/255: the edit's grounded region, for the masked loss

    @property
    def batch_key(self) -> tuple[Any, ...]:
        return (self.group, *self.target.shape, self.reference.shape[0], self.region is not None)


def sample_kind(sample: dict[str, Any]) -> str:
    if "json" in sample:
        return json.loads(sample["json"])["kind"]
    if "ref.png" in sample:
        return "quad"
    if "src.mp4" in sample:
        return "triplet"
    if "src.jpg" in sample:
        return "pair"
    return "session"


class ExampleMaker:
    """Raw shard sample -> Examples, by kind. Random choices (crop window, clip start) are seeded
    by (seed, epoch, key), so replaying a stream rebuilds the very same examples."""

    def __init__(self, config: DataConfig):
        self.config = config

    def __call__(self, sample: dict[str, Any], epoch: int) -> list[Example] | list[SessionExample]:
        kind = sample_kind(sample)
        rng = random.Random(seed_of(self.config.seed, epoch, sample["__key__"]))
        examples = self._session(sample, rng) if kind == "session" else [self._edit(sample, kind, rng)]
        for example in examples:
            example.epoch = epoch
        return examples

    def _bucket(self, width: int, height: int) -> media.Bucket:
        c = self.config
        return media.pick_bucket(width, height, c.resolution, c.aspects, c.size_multiple)

    def _position(self, rng: random.Random) -> tuple[float, float]:
        return (rng.random(), rng.random()) if self.config.random_crop else (0.5, 0.5)

    def _image(self, data: bytes, bucket: media.Bucket, position: tuple[float, float]) -> np.ndarray:
        return media.crop(media.decode_image(data, bucket), bucket, position)

    def _session(self, sample: dict[str, Any], rng: random.Random) -> list[Example] | list[SessionExample]:
        frame_keys = sorted((k for k in sample if k.startswith("frame_") and k.endswith(".jpg")),
                            key=lambda k: int(k[len("frame_"):-len(".jpg")]))
        if len(frame_keys) < 2:
            raise UnusableSample("missing_member", f"session has {len(frame_keys)} frames; a turn needs 2")
        if "turns.json" in sample:
            entries = {t["index"]: t for t in json.loads(sample["turns.json"])}
        else:  # sessions written without turns: the txt member's lines, one instruction per turn
            entries = {k: {"instruction": line} for k, line in enumerate(sample.get("txt", b"").decode().splitlines())}
        bucket = self._bucket(*media.image_size(sample[frame_keys[0]]))
        position = self._position(rng)
        frames = [self._image(sample[k], bucket, position) for k in frame_keys]  # each (1, H, W, C)
        if not any(entries.get(k, {}).get("instruction") for k in range(len(frames) - 1)):
            raise UnusableSample("no_annotated_turn", "session has no annotated turn")
        if self.config.session.mode == "sequence":
            turns = [self._turn(sample, k, entries.get(k, {}), bucket, position) for k in range(len(frames) - 1)]
            tokens = (bucket.width // self.config.size_multiple) * (bucket.height // self.config.size_multiple)
            return plan_sequences(sample["__key__"], frames, turns, self.config.session, tokens, rng)
        examples = []
        for k in range(len(frames) - 1):
            instruction = entries.get(k, {}).get("instruction")
            if not instruction:
                continue  # a turn the VLM could not annotate carries no instruction to learn from
            context = frames[max(0, k - self.config.max_context):k]
            reference = np.concatenate(context) if context else np.zeros((0, *frames[k].shape[1:]), np.uint8)
            examples.append(Example(f"{sample['__key__']}#{k}", "image", frames[k], frames[k + 1], reference, instruction))
        return examples

    def _turn(self, sample: dict[str, Any], k: int, entry: dict[str, Any], bucket: media.Bucket,
              position: tuple[float, float]) -> TurnData:
        """Turn k's text, camera label and, when its RoE was found, both masks cropped like the frames
        (a PNG mask decodes to 3 equal channels: VINCIE encodes masks as RGB images)."""
        turn = TurnData(entry.get("instruction"), entry.get("camera"), entry.get("roe"))
        names = (f"mask_{k}_src.png", f"mask_{k}_tgt.png")
        if turn.roe == "found" and all(n in sample for n in names):
            # decoded only if the plan uses them: dropout leaves most maps out of the sequence
            turn.src_mask, turn.tgt_mask = (partial(self._mask, sample[n], bucket, position) for n in names)
        return turn

    def _mask(self, data: bytes, bucket: media.Bucket, position: tuple[float, float]) -> np.ndarray:
        return media.crop(media.decode_mask(data, bucket), bucket, position)

    def _edit(self, sample: dict[str, Any], kind: str, rng: random.Random) -> Example:
        instruction = sample.get("txt", b"").decode()
        position = self._position(rng)
        # checked before any decoding, so a sample short of members costs no decode time
        ext = "mp4" if "tgt.mp4" in sample else "jpg"
        needed = [f"src.{ext}", f"tgt.{ext}"] + (["ref.png"] if kind == "quad" else [])
        missing = [m for m in needed if m not in sample]
        if missing:
            raise UnusableSample("missing_member", f"{kind} sample {sample.get('__key__')} lacks {', '.join(missing)} "
                                                   f"(members: {sorted(k for k in sample if not k.startswith('__'))})")
        if ext == "mp4":
            source, target = self._clip_pair(sample["src.mp4"], sample["tgt.mp4"], rng, position)
        else:
            bucket = self._bucket(*media.image_size(sample["tgt.jpg"]))
            source, target = (self._image(sample[f"{side}.jpg"], bucket, position) for side in ("src", "tgt"))
        if kind == "quad":
            bucket = media.Bucket(target.shape[2], target.shape[1])
            reference = media.letterbox(media.decode_image(sample["ref.png"]), bucket)
        else:
            reference = np.zeros((0, *target.shape[1:]), np.uint8)
        region = self._region(sample, target, position) if self.config.regions else None
        group = kind_group(kind, ext == "mp4", self.config.quads)
        return Example(f"{sample['__key__']}#0", group, source, target, reference, instruction, region=region)

    def _region(self, sample: dict[str, Any], target: np.ndarray, position: tuple[float, float]) -> np.ndarray | None:
        """Where the edit happens, for the masked loss: the union of the grounded source and target
        masks (what leaves and what arrives), cropped like the frames. A video edit's masks are of its
        key frame and stand for every frame. None when the sample carries no masks."""
        names = [n for n in ("mask_src.png", "mask_tgt.png") if n in sample]
        if not names:
            return None
        bucket = media.Bucket(target.shape[2], target.shape[1])
        masks = [media.crop(media.decode_image(sample[n], bucket), bucket, position)[..., :1] for n in names]
        return np.maximum.reduce(masks)

    def _clip_pair(self, src: bytes, tgt: bytes, rng: random.Random,
                   position: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        with media.VideoClip(src) as source, media.VideoClip(tgt) as target:
            span = min(source.frames, target.frames, (c.max_frames - 1) * c.frame_stride + 1)
            fitting = [n for n in c.frame_counts if n <= c.max_frames and (n - 1) * c.frame_stride + 1 <= span]
            if not fitting:
                raise ValueError(f"clip of {min(source.frames, target.frames)} frames fits none of frame_counts {c.frame_counts}")
            count = max(fitting)
            start = rng.randrange(span - (count - 1) * c.frame_stride)
            indices = [start + i * c.frame_stride for i in range(count)]
            bucket = self._bucket(target.width, target.height)
            clips = [media.crop(clip.read(indices, media.cover_size(clip.width, clip.height, bucket)), bucket, position)
                     for clip in (source, target)]
        return clips[0], clips[1]
