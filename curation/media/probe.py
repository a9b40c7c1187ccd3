"""Probe a video with PyAV: what it is, how big it is shown, and proof that it decodes.

`probe_video` reads the container header, demuxes packets (no decoding) to count frames and to
spot variable frame rates and truncated files, and decodes exactly one frame. Every way a file can
be unusable becomes a `StageError` whose reason starts with a stable prefix, so `_run.json` can
count failures by kind:

    not_found, not_a_file, empty_file, unreadable, no_video_stream, too_large, truncated, decode_failed

Geometry conventions (shared with `curation.media.decode`):
- `coded_width` x `coded_height` is the picture the decoder outputs.
- `sar` (sample aspect ratio) stretches the width: display width = round(coded_width * sar).
- `rotation` is the display matrix angle as FFmpeg reports it (`av_display_rotation_get`, PyAV
  `VideoFrame.rotation`): degrees counterclockwise, so -90 means "turn the picture 90 degrees
  clockwise to show it". `np.rot90(image, k=rotation // 90)` applies it; OpenCV's auto-orientation
  agrees (tests/test_decode.py checks this).
- `width` x `height` is what a player shows: SAR applied, then rotation (90/270 swap the sides).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction

import av
import numpy as np
from pydantic import BaseModel, Field

from curation.core.stage import StageError

# Packet durations may jitter by rounding (23.976 fps in a 1/1000 time base gives 41 and 42 ms).
# A stream is VFR when a gap differs from the typical one by more than this fraction of it.
VFR_TOLERANCE = 0.02


class VideoInfo(BaseModel):
    """What `probe_video` learns about a video; also Ingest's output columns."""

    fps: float = Field(description="average frame rate (frames / duration), as the container reports it")
    vfr: bool = Field(description="variable frame rate: packet timestamp gaps are not all equal")
    num_frames: int = Field(description="frames in the video stream: header count, else packets demuxed")
    width: int = Field(description="display width: sample aspect ratio and rotation applied")
    height: int = Field(description="display height: rotation applied")
    coded_width: int = Field(description="width of the decoded picture, before SAR and rotation")
    coded_height: int = Field(description="height of the decoded picture, before rotation")
    rotation: int = Field(description="display-matrix rotation, degrees counterclockwise (-90: turn clockwise)")
    sar: str = Field(description="sample (pixel) aspect ratio as 'num:den'; '1:1' for square pixels")
    duration_s: float = Field(description="duration of the video stream in seconds")
    time_base: str = Field(description="time base of the stream's pts as 'num/den'")
    codec: str = Field(description="video codec name (FFmpeg), e.g. h264")
    pix_fmt: str | None = Field(description="pixel format of the decoded frames, e.g. yuv420p")
    has_audio: bool = Field(description="the container has at least one audio stream")
    container_format: str = Field(description="container format name (FFmpeg), e.g. 'mov,mp4,m4a,3gp,3g2,mj2'")


# --------------------------------------------------------------------------------------------
# Opening (shared with decode.py)
# --------------------------------------------------------------------------------------------


@contextmanager
def open_container(path: str, max_pixels: int | None = None) -> Iterator[av.container.InputContainer]:
    """An input container for a local path, or for any fsspec URI (`s3://…`) through a file object.

    `max_pixels` is handed to FFmpeg's decoders, which then refuse (instead of allocating) any
    picture larger than that, including the one `avformat_find_stream_info` decodes on open.
    """
    options = {"max_pixels": str(max_pixels)} if max_pixels else {}
    if "://" in path:
        import fsspec

        with fsspec.open(path, "rb") as fileobj, av.open(fileobj, options=options, metadata_errors="replace") as c:
            yield c
    else:
        with av.open(path, options=options, metadata_errors="replace") as c:
            yield c


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first real video stream; cover art (an attached picture) does not count."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise StageError("no_video_stream")


def rotation_steps(rotation: float | int | None) -> int:
    """Quarter turns counterclockwise for `np.rot90`: 0..3 (display matrices off the 90-degree grid round)."""
    return round((rotation or 0) / 90) % 4


def display_size(coded_width: int, coded_height: int, sar: Fraction | None, rotation: float | int | None) -> tuple[int, int]:
    """(width, height) as shown: width stretched by the SAR, then sides swapped for a quarter turn."""
    width = round(coded_width * sar) if sar else coded_width
    return (coded_height, width) if rotation_steps(rotation) % 2 else (width, coded_height)


def fmt_ratio(value: Fraction | None, sep: str) -> str:
    value = value or Fraction(1)
    return f"{value.numerator}{sep}{value.denominator}"


# --------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------


def probe_video(path: str, max_pixels: int, *, scan_packets: int = 20_000) -> VideoInfo:
    """Describe the video at `path` (local or fsspec URI) or raise `StageError` with a stable reason.

    `max_pixels` guards against image bombs: dimensions are checked from the header before any
    picture is decoded, and FFmpeg is told the same limit. `scan_packets` bounds the demux pass
    that counts frames and detects VFR and truncation (nothing is decoded there).
    """
    _check_file(path)
    try:
        with open_container(path, max_pixels) as container:
            return _probe_open(path, container, max_pixels, scan_packets)
    except StageError:
        raise
    except (av.FFmpegError, OSError) as e:
        raise StageError(f"unreadable: {_ffmpeg_message(e)}") from e


def _probe_open(path: str, container: av.container.InputContainer, max_pixels: int, scan_packets: int) -> VideoInfo:
    stream = video_stream(container)
    ctx = stream.codec_context
    coded_w, coded_h = ctx.width, ctx.height
    if not coded_w or not coded_h:
        # Image formats (png_pipe, …) only learn their size by decoding, and FFmpeg skipped that
        # because of max_pixels or a bad header: read the size from the image header instead.
        coded_w, coded_h = _image_header_size(path) or (0, 0)
    sar = stream.sample_aspect_ratio or None
    widest = max(coded_w, round(coded_w * sar) if sar else coded_w)  # SAR stretches the shown width
    if widest * coded_h > max_pixels:
        raise StageError(f"too_large: {widest}x{coded_h} exceeds max_pixels={max_pixels}")

    scan = _scan(container, stream, scan_packets)
    if scan.first_frame is None:
        raise StageError(f"decode_failed: {scan.decode_error or 'no frame could be decoded'}")
    if scan.complete and stream.frames and scan.packets < stream.frames:
        raise StageError(f"truncated: {scan.packets} of {stream.frames} packets readable")

    frame = scan.first_frame
    coded_w, coded_h = frame.width, frame.height
    sar = ctx.sample_aspect_ratio or sar
    rotation = int(round(frame.rotation or 0))
    width, height = display_size(coded_w, coded_h, sar, rotation)
    if width * height > max_pixels:
        raise StageError(f"too_large: {width}x{height} exceeds max_pixels={max_pixels}")

    time_base = stream.time_base or Fraction(1, 1)
    duration_s = _duration_s(container, stream, scan, time_base)
    num_frames = (stream.frames or scan.packets) if scan.complete else stream.frames
    fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    if not num_frames:  # a partial scan of a container with no frame count: estimate
        num_frames = round(duration_s * fps)
    if not fps and duration_s > 0:
        fps = num_frames / duration_s
    return VideoInfo(
        fps=fps,
        vfr=scan.vfr(),
        num_frames=num_frames,
        width=width,
        height=height,
        coded_width=coded_w,
        coded_height=coded_h,
        rotation=rotation,
        sar=fmt_ratio(sar, ":"),
        duration_s=duration_s,
        time_base=fmt_ratio(time_base, "/"),
        codec=ctx.name,
        pix_fmt=frame.format.name,
        has_audio=bool(container.streams.audio),
        container_format=container.format.name,
    )


class _Scan:
    """One demux pass over the video stream: packet count and pts, plus the first decoded frame."""

    def __init__(self) -> None:
        self.packets = 0
        self.pts: list[int] = []
        self.last_duration = 0
        self.complete = False
        self.first_frame: av.VideoFrame | None = None
        self.decode_error: str | None = None

    def vfr(self) -> bool:
        if len(self.pts) < 3:
            return False
        gaps = np.diff(np.unique(np.asarray(self.pts, dtype=np.int64)))
        typical = float(np.median(gaps))
        # at least 1.5 ticks: a coarse time base rounds a constant rate to two neighbouring gaps
        tolerance = max(1.5, VFR_TOLERANCE * typical)
        return bool(np.any(np.abs(gaps - typical) > tolerance))


def _scan(container: av.container.InputContainer, stream: av.video.stream.VideoStream, limit: int) -> _Scan:
    scan = _Scan()
    demuxer = container.demux(stream)
    try:
        for packet in demuxer:
            if packet.size:
                scan.packets += 1
                if packet.pts is not None:
                    scan.pts.append(packet.pts)
                    scan.last_duration = packet.duration or 0
            if scan.first_frame is None:
                _decode_first(stream, packet, scan)
            if scan.packets >= limit and scan.first_frame is not None:
                return scan
    except av.FFmpegError:
        pass  # a demux error ends the readable part; `complete` still compares counts below
    scan.complete = True
    return scan


def _decode_first(stream: av.video.stream.VideoStream, packet: av.Packet, scan: _Scan) -> None:
    try:
        frames = stream.decode(packet)
    except av.FFmpegError as e:
        scan.decode_error = _ffmpeg_message(e)
        return
    if frames:
        scan.first_frame = frames[0]


def _duration_s(container, stream, scan: _Scan, time_base: Fraction) -> float:
    if stream.duration:
        return float(stream.duration * time_base)
    if scan.complete and scan.pts:
        return float((max(scan.pts) - min(scan.pts) + scan.last_duration) * time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def _check_file(path: str) -> None:
    if "://" in path:
        import fsspec

        fs, fs_path = fsspec.core.url_to_fs(path)
        try:
            info = fs.info(fs_path)
        except FileNotFoundError as e:
            raise StageError("not_found: no such file") from e
        kind, size = info.get("type"), info.get("size")
    else:
        if not os.path.exists(path):
            raise StageError("not_found: no such file")
        kind = "directory" if os.path.isdir(path) else "file" if os.path.isfile(path) else "other"
        size = os.path.getsize(path) if kind == "file" else None
    if kind == "directory":
        raise StageError("not_a_file: is a directory")
    if kind != "file":
        raise StageError(f"not_a_file: {kind}")
    if size == 0:
        raise StageError("empty_file: 0 bytes")


def _image_header_size(path: str) -> tuple[int, int] | None:
    """(width, height) from an image file's header, without decoding pixels, or None if not an image.

    Walks Pillow's registered format openers the way `Image.open` does but skips its decompression
    bomb check, because here a bomb is exactly what we want to measure and report.
    """
    from PIL import Image

    Image.init()
    with _open_binary(path) as fileobj:
        prefix = fileobj.read(16)
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            if accept is not None and not accept(prefix):
                continue
            fileobj.seek(0)
            try:
                with factory(fileobj, "") as image:
                    return image.size
            except (SyntaxError, ValueError, IndexError, TypeError, OSError, struct.error):
                continue
    return None


@contextmanager
def _open_binary(path: str):
    if "://" in path:
        import fsspec

        with fsspec.open(path, "rb") as f:
            yield f
    else:
        with open(path, "rb") as f:
            yield f


def _ffmpeg_message(error: Exception) -> str:
    """FFmpeg's own words without the errno and file name, so equal failures share one reason."""
    return getattr(error, "strerror", None) or str(error).splitlines()[0]
