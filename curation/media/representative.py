"""The one image that stands for a sample when it is embedded, hashed or deduplicated.

Kiwi-Edit deduplicates quadruplets on their reference images; for pairs and triplets what a
trainer learns to produce is the target, so its first frame stands for the edit; a session or a
clip is represented by its middle frame (the frame least likely to sit on a transition). `auto`
picks by kind; the other choices force one image where the row has it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import numpy as np

from curation.core.stage import StageError
from curation.media.decode import read_frames
from curation.media.edit_media import load_image, read_video_frames
from curation.media.jpeg import decode_image
from curation.media.timing import clip_span

MediaChoice = Literal["auto", "reference", "target", "source", "middle_frame"]

_AUTO: dict[str, str] = {
    "quad": "reference",
    "pair": "target",
    "triplet": "target",
    "session": "middle_frame",
    "clip": "middle_frame",
}
_VIDEO_KINDS = {"triplet", "quad", "video", "clip"}


def resolve_choice(row: dict[str, Any], choice: MediaChoice) -> str:
    """The concrete image a row is represented by (`auto` resolved by its kind)."""
    if choice != "auto":
        return choice
    kind = row.get("kind") or ""
    if kind == "quad" and not row.get("reference"):
        return "target"
    if kind not in _AUTO:
        raise StageError(f"no_media: kind {kind!r} has no representative image; set media= explicitly")
    return _AUTO[kind]


def representative_image(row: dict[str, Any], choice: MediaChoice, max_pixels: int) -> tuple[str, np.ndarray]:
    """(the concrete choice, that image as upright RGB uint8). Raises StageError when the row
    lacks it or it cannot be decoded."""
    what = resolve_choice(row, choice)
    if what == "reference":
        if not row.get("reference"):
            raise StageError("no_media: no reference image (run the reference stage first)")
        return what, decode_image(row["reference"], "reference")
    if what in ("target", "source"):
        uri = row.get("target_uri") if what == "target" else row.get("source_uri")
        if not uri:
            raise StageError(f"no_media: no {what}_uri")
        if row.get("kind") in _VIDEO_KINDS:
            (frame,) = read_video_frames(uri, [0], max_pixels)
            return what, frame
        return what, load_image(uri, max_pixels)
    return what, _middle_frame(row)


def pixel_hash(image: np.ndarray) -> str:
    """SHA-1 of the decoded pixels and their shape: equal for byte-identical files and for
    lossless re-encodes (PNG at another compression level), unlike a hash of the file bytes."""
    h = hashlib.sha1(repr(image.shape).encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()


def _middle_frame(row: dict[str, Any]) -> np.ndarray:
    frames = row.get("frames")
    if frames:
        return decode_image(frames[len(frames) // 2], "middle frame")
    if row.get("start_frame") is None or row.get("end_frame") is None or row["end_frame"] <= row["start_frame"]:
        raise StageError("no_media: neither stored frames nor a clip span to take a middle frame from")
    start, end, frame_pts = clip_span(row)
    (frame,) = read_frames(row["source_uri"], [(start + end - 1) // 2], frame_pts, first_index=start)
    return frame
