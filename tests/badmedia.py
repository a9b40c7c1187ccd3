"""Builders for broken and hostile media, made fresh in a temp dir so no bad file is checked in.

Each builder returns the path it wrote. `BAD_MEDIA` maps a case name to (builder, expected
reason prefix) so a test can run every case through a stage and check the reason it records.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from conftest import shared_media

# Cases cut from real footage (they skip when the shared media are absent):
REAL_VIDEO = "videos/pyscenedetect/testvideo.mp4"  # moov atom at the end
FASTSTART_VIDEO = "videos/intel-sample-videos/car-detection.mp4"  # moov atom first


def empty_mp4(tmp: Path) -> Path:
    path = tmp / "empty.mp4"
    path.write_bytes(b"")
    return path


def truncated_mp4(tmp: Path, source: str = REAL_VIDEO, fraction: float = 0.3, name: str = "truncated.mp4") -> Path:
    """The first 30% of a real mp4 (testvideo.mp4 keeps its moov atom at the end, so the index is gone)."""
    data = (shared_media() / source).read_bytes()
    path = tmp / name
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def truncated_faststart_mp4(tmp: Path) -> Path:
    """The first 30% of an mp4 whose index comes first: it opens and decodes, but most packets are gone."""
    return truncated_mp4(tmp, FASTSTART_VIDEO, name="truncated_faststart.mp4")


def garbage_frames_mp4(tmp: Path, seed: int = 0) -> Path:
    """A real mp4 with an intact header and index but random bytes for every coded picture."""
    data = bytearray((shared_media() / FASTSTART_VIDEO).read_bytes())
    start = data.index(b"mdat") + 4
    data[start:] = np.random.default_rng(seed).integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()
    path = tmp / "garbage_frames.mp4"
    path.write_bytes(bytes(data))
    return path


def random_bytes_mp4(tmp: Path, size: int = 64 * 1024, seed: int = 0) -> Path:
    path = tmp / "random.mp4"
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def text_mp4(tmp: Path) -> Path:
    path = tmp / "notes.mp4"
    path.write_text("this is a text file, not a video\n" * 50)
    return path


def directory_mp4(tmp: Path) -> Path:
    path = tmp / "x.mp4"
    path.mkdir()
    return path


def audio_only_mp4(tmp: Path, seconds: float = 0.5, rate: int = 44100) -> Path:
    """A valid mp4 with one AAC audio stream and no video stream, encoded with PyAV."""
    path = tmp / "audio_only.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate, layout="mono")
        t = np.arange(int(seconds * rate)) / rate
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        chunk = 1024
        for i in range(0, len(tone), chunk):
            frame = av.AudioFrame.from_ndarray(tone[None, i : i + chunk], format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def png_bomb(tmp: Path, side: int = 30000) -> Path:
    """A valid PNG whose header claims side x side pixels (900 Mpx for 30000) in ~0.1 MB.

    1-bit grayscale keeps the zlib stream small and quick to make: every row is a filter byte and
    side/8 zero bytes, compressed as a stream so the raw rows are never held in memory at once.
    A decoder that trusts the header would allocate gigabytes for its RGB output.
    """
    row = b"\x00" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    path = tmp / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
    return path


# case name -> (builder, reason prefix Ingest must record)
BAD_MEDIA: dict[str, tuple[Callable[[Path], Path], str]] = {
    "empty": (empty_mp4, "empty_file:"),
    "truncated": (truncated_mp4, "unreadable:"),
    "truncated_faststart": (truncated_faststart_mp4, "truncated:"),
    "garbage_frames": (garbage_frames_mp4, "decode_failed:"),
    "random_bytes": (random_bytes_mp4, "unreadable:"),
    "text": (text_mp4, "unreadable:"),
    "directory": (directory_mp4, "not_a_file:"),
    "audio_only": (audio_only_mp4, "no_video_stream"),
    "png_bomb": (png_bomb, "too_large:"),
}
