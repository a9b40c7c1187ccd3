"""Decoding shard members into uint8 frames at a bucket's size: images are 1-frame videos.

Only the shard contract (DESIGN.md §5) is assumed: `.jpg`/`.png` images, H.264 `.mp4` clips.
Decoders resize while decoding where they can (JPEG draft mode, PyAV's scaler), because decode,
not the model, bounds a CPU loader.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

MAX_PIXELS = 1 << 27  # refuse decompression bombs above ~134 MP (a PIL error, counted as a decode failure)


@dataclass(frozen=True)
class Bucket:
    """Output frame size; every sample in a batch shares one."""

    width: int
    height: int


def pick_bucket(width: int, height: int, resolution: int, aspects: list[float], multiple: int) -> Bucket:
    """The bucket of ~resolution² pixels whose aspect (W/H) is nearest the frame's, in log space."""
    if width <= 0 or height <= 0:
        raise ValueError(f"frame has no size ({width}x{height})")
    aspect = min(aspects, key=lambda a: abs(math.log(a) - math.log(width / height)))
    bucket_w = max(multiple, round(resolution * math.sqrt(aspect) / multiple) * multiple)
    bucket_h = max(multiple, round(resolution / math.sqrt(aspect) / multiple) * multiple)
    return Bucket(bucket_w, bucket_h)


def cover_size(width: int, height: int, bucket: Bucket) -> tuple[int, int]:
    """The smallest size with the frame's aspect that covers the bucket (to be cropped to it)."""
    scale = max(bucket.width / width, bucket.height / height)
    return max(bucket.width, math.ceil(width * scale - 1e-6)), max(bucket.height, math.ceil(height * scale - 1e-6))


def crop(frames: np.ndarray, bucket: Bucket, position: tuple[float, float]) -> np.ndarray:
    """(T, H, W, C) covering frames -> (T, bucket.height, bucket.width, C); position in [0, 1]² picks the window."""
    extra_h, extra_w = frames.shape[1] - bucket.height, frames.shape[2] - bucket.width
    top, left = round(extra_h * position[1]), round(extra_w * position[0])
    return frames[:, top:top + bucket.height, left:left + bucket.width]


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone (upright: shards store upright images)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def decode_image(data: bytes, cover: Bucket | None = None) -> np.ndarray:
    """JPEG/PNG bytes -> (1, H, W, 3) uint8; with `cover`, resized to the smallest size of its
    aspect that covers that bucket (the header is read once, for both)."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    with Image.open(io.BytesIO(data)) as image:
        size = cover_size(*image.size, cover) if cover is not None else None
        if size is not None and image.format == "JPEG":
            image.draft("RGB", size)  # DCT-domain downscale: decodes at >= size, several times faster
        rgb = image.convert("RGB")
        if size is not None and rgb.size != size:
            rgb = rgb.resize(size, Image.BILINEAR, reducing_gap=2.0)
        return np.asarray(rgb)[None]


def decode_mask(data: bytes, cover: Bucket) -> np.ndarray:
    """A 0/255 mask PNG -> (1, H, W, 3) uint8 covering `cover`, resized on one channel and then
    replicated to 3 (VINCIE encodes masks as RGB images); a third of the work of an RGB resize."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    with Image.open(io.BytesIO(data)) as image:
        gray = image.convert("L")
        size = cover_size(*gray.size, cover)
        if gray.size != size:
            gray = gray.resize(size, Image.BILINEAR, reducing_gap=2.0)
        return np.repeat(np.asarray(gray)[None, :, :, None], 3, axis=3)


def letterbox(frame: np.ndarray, bucket: Bucket) -> np.ndarray:
    """(1, H, W, C) -> (1, bucket) keeping all of the image, padded with black: a reference must
    keep its whole object, so it is fitted, never cropped."""
    h, w = frame.shape[1:3]
    scale = min(bucket.width / w, bucket.height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(Image.fromarray(frame[0]).resize((new_w, new_h), Image.BILINEAR))
    out = np.zeros((1, bucket.height, bucket.width, frame.shape[3]), np.uint8)
    top, left = (bucket.height - new_h) // 2, (bucket.width - new_w) // 2
    out[0, top:top + new_h, left:left + new_w] = resized
    return out


class VideoClip:
    """An mp4 opened once: its size and frame count, then the frames asked for.

    Frames are decoded forward from the start and the decoder stops after the last index: our
    shards hold short clips (<= 81 frames) whose frame i is the i-th decoded frame, so no seek can
    land on the wrong frame. PyAV's scaler converts and resizes in one pass (area filter: the
    best downscale at about the cost of bilinear).
    """

    def __init__(self, data: bytes):
        import av

        self._data = data
        self._container = av.open(io.BytesIO(data))
        stream = self._container.streams.video[0]
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        self.frames = stream.frames or self._count_packets()

    def _count_packets(self) -> int:
        """Containers without a frame count in their header: count the video packets (no decode)."""
        import av

        count = sum(1 for packet in self._container.demux(video=0) if packet.size)
        self._container.close()
        self._container = av.open(io.BytesIO(self._data))
        return count

    def read(self, indices: list[int], size: tuple[int, int]) -> np.ndarray:
        """The frames at `indices` (decode order) -> (T, H, W, 3) uint8 at `size` (W, H)."""
        wanted, last = set(indices), max(indices)
        frames: dict[int, np.ndarray] = {}
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(self._container.decode(stream)):
            if i in wanted:
                frames[i] = frame.to_ndarray(width=size[0], height=size[1], format="rgb24", interpolation="AREA")
            if i >= last:
                break
        missing = [i for i in indices if i not in frames]
        if missing:
            raise ValueError(f"video has {len(frames)} of the {len(indices)} frames asked for (missing {missing[:3]}...)")
        return np.stack([frames[i] for i in indices])

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoClip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
