"""Media of an edit: the (source, target) images of a `pair` or videos of a `triplet`.

To the rest of the code an image is a 1-frame video, so both kinds come out as lists of upright
RGB uint8 frames; a triplet's clips for a shard are transcoded a frame at a time
(`transcode_clip_pair`) and never held whole. Failures are `StageError`s whose reasons keep `curation.media.probe`'s stable
prefixes (`not_found`, `not_a_file`, `empty_file`, `unreadable`, `too_large`, `decode_failed`,
`encode_failed`, …); where an edit has two files the reason says which side failed right after
the prefix (`not_found: target: no such file`), so `_run.json` still counts by prefix.

Conventions:
- Images are decoded by OpenCV with `IMREAD_COLOR`. OpenCV (5.0 is installed) applies the EXIF
  orientation with that flag, for JPEG, PNG `eXIf` and WebP alike (`IMREAD_UNCHANGED` and
  `IMREAD_IGNORE_ORIENTATION` do not; tests/test_edit_media.py checks JPEG and PNG against Pillow's
  `exif_transpose`). So a phone photo comes out upright, as videos do from `decode.py`. Grey and
  16-bit images become 8-bit RGB, and an alpha channel is dropped (not composited).
- Videos are decoded by `curation.media.decode` (upright, display aspect, frame index = position
  in a sequential decode).
- Videos are written as H.264 yuv420p MP4 at a constant frame rate with the moov atom first
  (`+faststart`) so they stream, tagged BT.709 limited range, the matrix they are converted with.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from curation.core import storage
from curation.core.stage import StageError
from curation.media.decode import iter_frames, read_frames
from curation.media.jpeg import encode_jpeg  # re-exported: the one JPEG encoder, quality 95 by default
from curation.media.probe import (  # its private file checks too, so reasons read the same as at ingest
    _check_file,
    _ffmpeg_message,
    _image_header_size,
    display_size,
    open_container,
    video_stream,
)

__all__ = [
    "EncodedClipPair",
    "encode_h264",
    "encode_jpeg",
    "load_image",
    "pair_frame_indices",
    "read_edit_frames",
    "transcode_clip_pair",
]

# FFmpeg colour tags (AVCOL_*_BT709, AVCOL_RANGE_MPEG) matching the BT.709 limited-range matrix
# the RGB frames are converted with; decoders that honour tags (PyAV, OpenCV, browsers) then agree.
_BT709 = 1
_RANGE_LIMITED = 1


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def load_image(uri: str, max_pixels: int) -> np.ndarray:
    """An image file (local path or URI) as upright RGB uint8, EXIF orientation applied.

    The pixel count is read from the header (Pillow, without its bomb check) before anything is
    decoded, so a decompression bomb costs a few KB of reading, not gigabytes of allocation.
    Formats Pillow cannot measure are decoded (OpenCV's own 2^30-pixel cap still holds) and
    checked after. Raises `StageError`: not_found, not_a_file, empty_file, too_large, decode_failed.
    """
    _check_file(uri)
    header = _image_header_size(uri)
    if header is not None:
        _check_pixels(*header, max_pixels)
    data = storage.read_bytes(uri)
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise StageError(f"decode_failed: {str(e).strip().splitlines()[-1]}") from e
    if bgr is None:
        raise StageError("decode_failed: not a readable image")
    _check_pixels(bgr.shape[1], bgr.shape[0], max_pixels)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_file_as_is(uri: str, max_side: int | None, max_pixels: int) -> bytes | None:
    """The image file's own bytes when a VLM can be sent them unchanged, else None (decode it).

    Why: for image pairs a judge's main CPU cost was decoding each file and encoding it again as
    JPEG, for nothing when the file already is a complete, upright RGB or grey JPEG or PNG within
    the size the client would shrink it to. The size and the bomb check come from the header (a
    larger file is never read whole here); a file cut short (no JPEG EOI / PNG IEND at its end)
    or EXIF-rotated is decoded, so its error or orientation is handled as before.
    """
    from PIL import Image, UnidentifiedImageError

    _check_file(uri)
    header = _image_header_size(uri)  # bomb-safe, before anything is read whole
    if header is None:
        return None
    _check_pixels(*header, max_pixels)
    if max_side is not None and max(header) > max_side:
        return None  # the client would shrink it anyway: decode once, here
    data = storage.read_bytes(uri)
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, mode, orientation = img.format, img.mode, img.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    complete = {"JPEG": data.rstrip(b"\0").endswith(b"\xff\xd9"), "PNG": b"IEND" in data[-16:]}.get(fmt or "", False)
    return data if complete and orientation == 1 and mode in ("RGB", "L") else None


def image_pair_as_is(source_uri: str, target_uri: str, max_side: int | None, max_pixels: int) -> tuple[bytes, bytes] | None:
    """Both files' own bytes when both can be sent unchanged (`image_file_as_is`), else None;
    a failure names its side, as `read_edit_frames` does."""
    sent = []
    for side, uri in (("source", source_uri), ("target", target_uri)):
        with _side(side):
            sent.append(image_file_as_is(uri, max_side, max_pixels))
    return (sent[0], sent[1]) if sent[0] is not None and sent[1] is not None else None


def pair_frame_indices(n_src: int, n_tgt: int, k: int) -> list[int]:
    """`k` frame indices spread evenly over the frames both videos have: the first frame of each of
    `k` equal parts of `min(n_src, n_tgt)`, so frame 0 is always in. All frames when `k >= n`;
    empty when either video has none. Integer arithmetic, so the same inputs give the same picks."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = max(0, min(n_src, n_tgt))
    if k >= n:
        return list(range(n))
    return [i * n // k for i in range(k)]


def read_edit_frames(
    source_uri: str, target_uri: str, indices: Sequence[int], *, is_video: bool, max_pixels: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(source, target) frames at decode-order `indices`, each pixel-equal to a sequential decode.

    Images are one frame, so only index 0 is valid for them. Videos are read with the
    frame-accurate `read_frames` (without recorded pts it decodes forward to the last index, which
    is exact on every container). Source and target may differ in size; they come back as they are.
    """
    if not is_video:
        if any(i != 0 for i in indices):
            raise ValueError(f"an image has only frame 0, asked for {sorted(set(indices))}")
        if not indices:
            return []
        with _side("source"):
            source = load_image(source_uri, max_pixels)
        with _side("target"):
            target = load_image(target_uri, max_pixels)
        return [(source, target) for _ in indices]
    frames = {}
    for side, uri in (("source", source_uri), ("target", target_uri)):
        with _side(side):
            frames[side] = read_video_frames(uri, indices, max_pixels)
    return list(zip(frames["source"], frames["target"]))


def read_video_frames(uri: str, indices: Sequence[int], max_pixels: int) -> list[np.ndarray]:
    """Frames of a video at decode-order `indices`, after the image-bomb check on its header."""
    _video_header(uri, max_pixels)
    return read_frames(uri, indices)


@dataclass(frozen=True)
class _Header:
    width: int
    height: int
    fps: float


def _video_header(uri: str, max_pixels: int | None = None) -> _Header:
    """Display size and average fps from the container header (nothing decoded, no packet scan):
    the cheap guard before a decode. `probe_video` at ingest is the thorough one."""
    _check_file(uri)
    try:
        with open_container(uri, max_pixels) as container:
            stream = video_stream(container)
            coded_w, coded_h = stream.codec_context.width, stream.codec_context.height
            sar = stream.sample_aspect_ratio or None
            rate = stream.average_rate or stream.guessed_rate
    except StageError:
        raise
    except (av.FFmpegError, OSError) as e:
        raise StageError(f"unreadable: {_ffmpeg_message(e)}") from e
    width, height = display_size(coded_w, coded_h, sar, 0)
    if max_pixels is not None:
        _check_pixels(max(width, coded_w), height, max_pixels)  # the decoder allocates the wider of the two
    if not rate:
        raise StageError("no_fps: the container reports no frame rate")
    return _Header(width, height, float(rate))


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise StageError(f"too_large: {width}x{height} exceeds max_pixels={max_pixels}")


@contextmanager
def _side(side: str) -> Iterator[None]:
    """Name the side (source / target) of a failure right after its reason's stable prefix."""
    try:
        yield
    except StageError as e:
        prefix, _, detail = e.reason.partition(": ")
        raise StageError(f"{prefix}: {side}: {detail}" if detail else f"{prefix}: {side}") from e
    except av.FFmpegError as e:  # a decode error mid-stream (headers were checked before)
        raise StageError(f"decode_failed: {side}: {_ffmpeg_message(e)}") from e


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def encode_h264(frames: list[np.ndarray], fps: float, crf: int = 18, preset: str = "medium") -> bytes:
    """MP4 bytes (H.264, yuv420p, constant `fps`, moov first) holding exactly `len(frames)` frames.

    yuv420p needs even sides, so an odd width or height loses its last column or row. Cropping
    (not padding or resizing) keeps every kept pixel where it was, so boxes and masks drawn on the
    frames stay valid. The rate is `fps` as a fraction with denominator <= 1001 (30000/1001 for
    NTSC, 25/2 for 12.5).
    """
    if not frames:
        raise ValueError("no frames to encode")
    with closing(_H264Writer(fps, crf, preset)) as writer:
        for image in frames:
            writer.write(image)
        return writer.finish()


@dataclass(frozen=True)
class EncodedClipPair:
    """A triplet's two videos re-encoded for shard writing, cut to the same frame count."""

    source: bytes  # H.264 MP4 as `encode_h264` writes it, at the source's size (odd sides cropped)
    target: bytes  # the same, `frames` frames too; its size may differ from the source's
    frames: int  # min(len src, len tgt, max_frames), the frame count of both
    fps: float  # average frame rate of the source, which both are encoded at


def transcode_clip_pair(
    source_uri: str, target_uri: str, max_frames: int = 81, crf: int = 18, preset: str = "medium"
) -> EncodedClipPair:
    """The first `min(len src, len tgt, max_frames)` frames of both videos, re-encoded to H.264.

    Both are decoded side by side and each frame goes straight into its side's encoder, so only a
    frame or two per side is held here, not the clip (81 frames of 1080p RGB are 0.5 GB a side).
    x264 still buffers up to its lookahead itself, a fixed cost set by `preset`: about 0.4 GB per
    encoder at 1080p for "medium" (40 frames), a few frames for "ultrafast". Decoding stops as soon
    as either video ends or `max_frames` is reached, so the rest of a long video is never decoded.
    A VFR source keeps its average rate: the clips come out CFR, which is what trainers assume.
    Raises `StageError` with the side named after the prefix (`decode_failed: target: ...`,
    `encode_failed: source: ...`).
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    with _side("source"):
        fps = _video_header(source_uri).fps
    with _side("target"):
        _video_header(target_uri)
    with (
        closing(iter_frames(source_uri, stop=max_frames)) as src_frames,
        closing(iter_frames(target_uri, stop=max_frames)) as tgt_frames,
        closing(_H264Writer(fps, crf, preset)) as source,
        closing(_H264Writer(fps, crf, preset)) as target,
    ):
        while True:
            with _side("source"):
                src = next(src_frames, None)
            if src is None:
                break
            with _side("target"):
                tgt = next(tgt_frames, None)
            if tgt is None:
                break
            with _side("source"):
                source.write(src[2])
            with _side("target"):
                target.write(tgt[2])
        if not source.frames:
            raise StageError(f"decode_failed: {'source' if src is None else 'target'}: decoded no frame")
        with _side("source"):
            source_mp4 = source.finish()
        with _side("target"):
            target_mp4 = target.finish()
    return EncodedClipPair(source_mp4, target_mp4, source.frames, fps)


class _H264Writer:
    """One H.264 MP4 written a frame at a time: the encoder setup `encode_h264` and
    `transcode_clip_pair` share. The stream takes its size from the first frame, odd sides cropped
    to even (yuv420p), and every later frame must have the first one's shape. The file goes through
    a temp file because FFmpeg's faststart pass reopens the output by name to move the index, which
    an in-memory `BytesIO` cannot do. Use it in `closing()`; `finish()` returns the bytes."""

    def __init__(self, fps: float, crf: int, preset: str):
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps}")
        self.rate = Fraction(fps).limit_denominator(1001)
        self.options = {"crf": str(crf), "preset": preset}
        self.frames = 0  # frames written so far
        self._shape: tuple[int, ...] | None = None  # of frame 0
        self._stream: av.video.stream.VideoStream | None = None  # added by the first frame
        self._tmp = tempfile.TemporaryDirectory(prefix="curate-h264-")
        self._path = os.path.join(self._tmp.name, "clip.mp4")
        with _encoding():
            self._container = av.open(self._path, "w", format="mp4", options={"movflags": "+faststart"})

    def write(self, image: np.ndarray) -> None:
        """Encode one (H, W, 3) uint8 RGB frame."""
        if self._stream is None:
            self._stream = self._add_stream(image.shape)
        if image.shape != self._shape or image.dtype != np.uint8:
            raise ValueError(f"frame {self.frames} is {image.shape} {image.dtype}, frame 0 is {self._shape} uint8")
        height, width = self._stream.height, self._stream.width
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:height, :width]), format="rgb24")
        frame = frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
        frame.pts = self.frames
        with _encoding():
            self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def finish(self) -> bytes:
        """Flush the encoder, write the index first, and return the file's bytes."""
        if self._stream is None:
            raise ValueError("no frames to encode")
        with _encoding():
            self._container.mux(self._stream.encode(None))
            self._container.close()
        return Path(self._path).read_bytes()

    def close(self) -> None:
        self._container.close()
        self._tmp.cleanup()

    def _add_stream(self, shape: tuple[int, ...]) -> av.video.stream.VideoStream:
        if len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"frames must be (H, W, 3) RGB, got shape {shape}")
        height, width = shape[0] - shape[0] % 2, shape[1] - shape[1] % 2
        if not (width and height):
            raise StageError(f"encode_failed: {shape[1]}x{shape[0]} is too small for H.264 yuv420p (2x2 at least)")
        self._shape = shape
        stream = self._container.add_stream("libx264", rate=self.rate, options=self.options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ctx = stream.codec_context
        ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range = _BT709, _BT709, _BT709, _RANGE_LIMITED
        return stream


@contextmanager
def _encoding() -> Iterator[None]:
    """FFmpeg failures while writing read as `encode_failed`, as decoding ones read as `decode_failed`."""
    try:
        yield
    except av.FFmpegError as e:
        raise StageError(f"encode_failed: {_ffmpeg_message(e)}") from e
