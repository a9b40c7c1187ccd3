"""Frames of videos held as bytes (an `Mp4` media column) rather than as files.

The decoders (`curation.media.decode`) seek and re-open by path, so the bytes go to a temporary
file for as long as they are read; the frame-accurate readers and their stable failure reasons
(`decode_failed: source: ...`) are the ones edit media use (`curation.media.edit_media`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from curation.core.stage import StageError
from curation.media.edit_media import pair_frame_indices, read_edit_frames, read_video_frames
from curation.media.probe import probe_video


@contextmanager
def video_file(data: bytes, suffix: str = ".mp4") -> Iterator[str]:
    """A temporary file holding `data`, removed on exit."""
    if not data:
        raise StageError("empty_file: no video bytes")
    fd, path = tempfile.mkstemp(prefix="curate-video-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        os.unlink(path)


def frame_count(path: str, max_pixels: int) -> int:
    """Frames in the video's stream (its header count, else its packets), as ingest counts them."""
    return probe_video(path, max_pixels).num_frames


class MatchedFrames(NamedTuple):
    indices: list[int]  # frame indices read, the same in both videos
    source: list[np.ndarray]  # the first video's frames at `indices` (RGB)
    target: list[np.ndarray]  # the second video's frames at `indices`
    source_count: int  # frames in the first video
    target_count: int  # frames in the second video


def matched_frames(source: bytes, target: bytes, k: int, max_pixels: int) -> MatchedFrames:
    """`k` frame indices spread evenly over the frames both videos have (frame 0 included), and
    both videos' frames at those same indices."""
    with video_file(source) as source_path, video_file(target) as target_path:
        counts = frame_count(source_path, max_pixels), frame_count(target_path, max_pixels)
        indices = pair_frame_indices(*counts, k)
        if not indices:
            raise StageError("decode_failed: a video has no frames")
        pairs = read_edit_frames(source_path, target_path, indices, is_video=True, max_pixels=max_pixels)
    return MatchedFrames(indices, [s for s, _ in pairs], [t for _, t in pairs], *counts)


def frames_at(data: bytes, indices: Sequence[int], max_pixels: int) -> list[np.ndarray]:
    """The video's frames at decode-order `indices`."""
    with video_file(data) as path:
        return read_video_frames(path, indices, max_pixels)
