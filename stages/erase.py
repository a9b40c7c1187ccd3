"""erase: remove the clip's chosen object from every frame (InstructX App. A.2's remove/add pairs).

Per clip row (kind=clip, with `object_masks` from `mask_video`): decode exactly the clip's frames
(start_frame .. end_frame-1, frame-accurate), pair them with their masks, hand both to the
configured remover (curation/backends/removal/: `temporal` fills the hole with the background other
frames show there, offline, the default; `diffusers` a local inpainting pipeline and `api` a
masked image-edit API, both frame by frame), and re-encode the original and the erased frames
as H.264 MP4s of the same frame count, size and rate. The row stays the clip, enriched with both
videos; the original plays "source" for a remove instruction and "target" for an add one
downstream.

Dropped: clip_too_short (fewer than `min_frames` frames). Errors: no_masks, mask_mismatch (count or
size differs from the frames), decode_failed, and whatever the remover reports (an API's or a
model's failure): each on its own row, never the run's.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import av
import numpy as np
from pydantic import BaseModel, Field, PrivateAttr

from curation.backends.removal import ObjectRemover, RemovalConfig, RemovalFailed, make_remover
from curation.backends.usage import VLMUsage
from curation.core.schema import Mp4
from curation.core.stage import ModelRef, Row, StageError, Threshold, failure_reason
from curation.media.decode import read_frames
from curation.media.edit_media import encode_h264
from curation.media.probe import open_container, video_stream
from curation.media.timing import clip_span
from curation.regions.roe import decode_mask_png
from curation.stages.base.vlm import EditorBackedStage


class EraseColumns(BaseModel):
    clip_video: Mp4 | None = Field(None, description="the clip's original frames re-encoded (H.264 MP4): end_frame-start_frame frames")
    erased_video: Mp4 | None = Field(None, description="the same frames with the object removed: same count, size and rate")
    removal_backend: str | None = Field(None, description="temporal, diffusers:<model> or api:<provider>:<model>")
    removal_usage: VLMUsage | None = Field(None, description="api backend: requests, cache hits, USD spent on this clip")


class Erase(EditorBackedStage, RemovalConfig):
    """Remove the masked object from every frame of a clip; keep the original and erased clips as MP4s."""

    name: ClassVar[str] = "erase"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = EraseColumns
    reads_media: ClassVar[tuple[str, ...]] = ("object_masks",)
    usage_column: ClassVar[str] = "removal_usage"

    # The remover's settings (backend, dilate_px, samples, ..., api, diffusers) are this stage's
    # fields through RemovalConfig; these are the stage's own.
    min_frames: int = Field(ge=1, description="drop clips with fewer frames than this (clip_too_short)")
    max_pixels: int = Field(ge=1, description="image-bomb guard: refuse videos whose frame exceeds this many pixels")
    video_crf: int = Field(ge=0, le=51, description="x264 CRF of both MP4s (lower = better quality, bigger files)")
    video_preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = Field(
        description="x264 preset of both MP4s (faster = bigger files at the same CRF)")

    _remover: ObjectRemover | None = PrivateAttr(default=None)

    def setup(self) -> None:
        self._remover = make_remover(self, self.budget())
        self._remover.open()

    def models(self) -> dict[str, ModelRef]:
        model = make_remover(self).model()  # built, not opened: nothing loads
        return {"remover": model} if model else {}

    def model_devices(self) -> dict[str, str]:
        device = getattr(self._remover, "device", None)
        return {"remover": device} if device else {}

    def thresholds(self) -> list[Threshold]:
        return [Threshold(score="num_clip_frames", value=self.min_frames, setting="erase.min_frames", column=True)]

    # ---- work ------------------------------------------------------------------------------
    def process(self, row: Row) -> list[Row]:
        remover = self._remover
        if remover is None:
            raise RuntimeError("erase: process before setup()")
        start, end, frame_pts = clip_span(row)
        if end - start < self.min_frames:
            return [self.error_row(row, f"clip_too_short: {end - start} < {self.min_frames} frames", "dropped")]
        remover.last_usage = None
        try:
            frames, masks, fps = self._clip(row, start, end, frame_pts)
            erased = remover.remove(frames, masks)
            clip_video = encode_h264(frames, fps, self.video_crf, self.video_preset)
            erased_video = encode_h264(erased, fps, self.video_crf, self.video_preset)
        except RemovalFailed as e:
            return [self.error_row(row, e.reason, removal_backend=remover.describe(), removal_usage=_dump(e.usage))]
        except Exception as e:  # noqa: BLE001 - one bad clip must not stop the run
            return [self.error_row(row, failure_reason(e), removal_usage=_dump(remover.last_usage))]
        return [self.enrich(row, clip_video=clip_video, erased_video=erased_video, removal_backend=remover.describe(),
                            removal_usage=_dump(remover.last_usage))]

    def _clip(self, row: Row, start: int, end: int, frame_pts: list[int] | None) -> tuple[list[np.ndarray], list[np.ndarray], float]:
        """The clip's frames (RGB), its masks (bool) and the video's frame rate, checked to pair up."""
        encoded = row.get("object_masks")
        if not encoded:
            raise StageError("no_masks: run mask_video first (no object_masks)")
        if len(encoded) != end - start:
            raise StageError(f"mask_mismatch: {len(encoded)} masks for {end - start} frames")
        uri = row["source_uri"]
        fps = _video_fps(uri, self.max_pixels)
        try:
            frames = read_frames(uri, range(start, end), frame_pts, first_index=start)
        except (av.FFmpegError, OSError) as e:
            raise StageError(f"decode_failed: {type(e).__name__}: {e}") from e
        masks = []
        for i, data in enumerate(encoded):
            try:
                mask = decode_mask_png(data) > 0
            except ValueError as e:
                raise StageError(f"decode_failed: object_masks[{i}]: {e}") from e
            if mask.shape != frames[i].shape[:2]:
                raise StageError(f"mask_mismatch: mask {i} is {mask.shape[1]}x{mask.shape[0]}, "
                                 f"its frame {frames[i].shape[1]}x{frames[i].shape[0]}")
            masks.append(mask)
        return frames, masks, fps


def _video_fps(uri: str, max_pixels: int) -> float:
    """The video's average frame rate from its header, after the image-bomb check."""
    try:
        with open_container(uri, max_pixels) as container:
            stream = video_stream(container)
            rate = stream.average_rate or stream.guessed_rate
    except StageError as e:
        raise StageError(f"decode_failed: {e.reason}") from e
    except (av.FFmpegError, OSError) as e:
        raise StageError(f"decode_failed: {type(e).__name__}: {e}") from e
    if not rate:
        raise StageError("no_fps: the container reports no frame rate")
    return float(rate)


def _dump(usage: VLMUsage | None) -> dict | None:
    return usage.model_dump() if usage is not None else None
