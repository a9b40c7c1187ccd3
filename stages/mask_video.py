"""mask_video: a mask of the clip's chosen object on every frame, for the erasure pipeline (InstructX
App. A.2: the subject a VLM picked is found with Grounding DINO and segmented with SAM2, then erased).

Per clip: the subject's phrase (`subject_phrase`, else `subject`) is searched with Grounding DINO on
a few candidate frames spread over the clip, and the most confident box over all of them picks the
key frame. Why several frames rather than the first: the VLM chose the object by looking at the
clip, and the object may enter late, be cut by the frame edge or be blurred at the start; the
clearest view makes the best prompt for SAM2, and SAM2 tracks backward as well as forward, so
nothing is lost by starting mid-clip. The candidates of a clip go through the detector together.

SAM2's video model then propagates the box through the whole clip (`curation.backends.video_segment`),
and the masks are gated: mostly empty (`mask_vanished`), too small or too large on average, or on
the frame border in most frames are drops. Kept clips carry one PNG mask per frame.

Clips are processed one at a time: a SAM2 video session holds one clip, and a clip's decoded frames
are the largest thing a worker holds (see the backend's docstring on long clips).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import av
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from curation.backends.detect import DetectorConfig, GroundingDinoDetector, clean_query
from curation.backends.models import model_ref
from curation.backends.video_segment import VideoSegmenter, VideoSegmenterConfig
from curation.core.schema import Png
from curation.core.stage import ModelRef, Resources, Row, Stage, StageError, Threshold
from curation.media.decode import read_frames
from curation.media.timing import clip_span
from curation.regions.roe import encode_mask_png


class MaskVideoColumns(BaseModel):
    object_masks: list[Png] | None = Field(
        None, description="one mask per clip frame, start_frame..end_frame-1: PNG, single channel 0/255, frame size")
    mask_key_frame: int | None = Field(None, description="absolute decode-order index of the frame the detector's box came from")
    mask_box: list[float] | None = Field(None, description="the detector's box on the key frame: x0, y0, x1, y1 in pixels")
    mask_detection_score: float | None = Field(None, description="that box's Grounding DINO score")
    mask_area_mean: float | None = Field(None, description="mean fraction of the frame the mask covers, over frames where it is present")
    mask_empty_frac: float | None = Field(None, description="fraction of the clip's frames whose mask is empty")
    mask_border_frac: float | None = Field(
        None, description="fraction of the frames with a mask whose mask reaches the border band of the image")


class MaskGates(BaseModel):
    """When a clip's masks are not worth erasing. Every default is ours (no paper publishes one);
    the stage YAML says why each was chosen."""

    model_config = ConfigDict(extra="forbid")

    min_frames: int = Field(ge=1, description="clips with fewer frames are dropped (clip_too_short) before decoding")
    max_empty_frac: float = Field(ge=0, le=1, description="more empty-mask frames than this fraction: mask_vanished")
    min_area_frac: float = Field(ge=0, le=1, description="mean mask area below this fraction of the frame: mask_too_small")
    max_area_frac: float = Field(ge=0, le=1, description="mean mask area above this fraction of the frame: mask_too_large")
    max_border_frac: float = Field(ge=0, le=1, description="more frames touching the border than this fraction: mask_on_border")
    border_px: int = Field(ge=1, description="width of the band along the image edge that counts as the border, pixels")

    @model_validator(mode="after")
    def _check_area_range(self) -> MaskGates:
        if self.min_area_frac >= self.max_area_frac:
            raise ValueError(f"min_area_frac={self.min_area_frac} must be below max_area_frac={self.max_area_frac}")
        return self


@dataclass(frozen=True)
class MaskStats:
    area_mean: float | None  # None when every mask is empty
    empty_frac: float
    border_frac: float | None  # None when every mask is empty


class MaskVideo(Stage):
    """Grounding DINO box of the clip's subject on its clearest frame, tracked by SAM2 video into per-frame masks."""

    name: ClassVar[str] = "mask_video"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = MaskVideoColumns

    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="Grounding DINO: model, thresholds, batch size, device")
    segmenter: VideoSegmenterConfig = Field(default_factory=VideoSegmenterConfig,
                                            description="SAM2 video model: checkpoint, mask threshold, dtype, device")
    key_frame_candidates: int = Field(ge=1, description="frames, evenly spread from the first to the last, searched for the subject; "
                                                        "the best box over them picks the key frame (1: the first frame only)")
    gates: MaskGates = Field(description="drops of clips whose masks are unusable")
    resources: Resources = Field(default_factory=lambda: Resources(concurrency=(1, 1)), description="Ray resources per worker")

    _detector: GroundingDinoDetector | None = PrivateAttr(default=None)
    _segmenter: VideoSegmenter | None = PrivateAttr(default=None)

    def setup(self) -> None:
        self._detector = GroundingDinoDetector(self.detector)
        self._segmenter = VideoSegmenter(self.segmenter)

    def uses_gpu(self) -> bool:
        return True

    def models(self) -> dict[str, ModelRef]:
        return {"detector": model_ref(self.detector.model), "segmenter": model_ref(self.segmenter.model)}

    def model_devices(self) -> dict[str, str]:
        if self._detector is None or self._segmenter is None:
            return {}
        return {"detector": self._detector.device, "segmenter": self._segmenter.device}

    def thresholds(self) -> list[Threshold]:
        g = self.gates
        cuts = [("mask_empty_frac", g.max_empty_frac, "max_empty_frac"), ("mask_area_mean", g.min_area_frac, "min_area_frac"),
                ("mask_area_mean", g.max_area_frac, "max_area_frac"), ("mask_border_frac", g.max_border_frac, "max_border_frac")]
        return [Threshold(score=col, value=v, setting=f"gates.{key}", column=True) for col, v, key in cuts]

    # ---- work ------------------------------------------------------------------------------
    def process(self, row: Row) -> list[Row]:
        query = subject_query(row)
        start, end, frame_pts = clip_span(row)
        if end - start < self.gates.min_frames:
            return [self.error_row(row, f"clip_too_short: {end - start} frames < {self.gates.min_frames}", status="dropped")]
        frames = decode_clip(row["source_uri"], start, end, frame_pts)
        candidates = candidate_frames(len(frames), self.key_frame_candidates)
        found = self._detector.detect([frames[k] for k in candidates], [[query]] * len(candidates))
        best = max(((d.score, k, d) for k, boxes in zip(candidates, found) for d in boxes), default=None,
                   key=lambda t: (t[0], -t[1]))  # ties: the earlier frame
        if best is None:
            return [self.error_row(row, f"subject_not_found: no box for {query!r} in frames {[start + k for k in candidates]}",
                                   status="dropped")]
        score, key, detection = best
        found_at = dict(mask_key_frame=start + key, mask_box=[float(v) for v in detection.box], mask_detection_score=float(score))
        masks = self._segmenter.track(frames, key, detection.box)
        stats = mask_stats(masks, self.gates.border_px)
        measured = dict(found_at, mask_area_mean=stats.area_mean, mask_empty_frac=stats.empty_frac, mask_border_frac=stats.border_frac)
        reason = gate(stats, self.gates)
        if reason is not None:
            return [self.error_row(row, reason, status="dropped", **measured)]
        return [self.enrich(row, object_masks=[encode_mask_png(m) for m in masks], **measured)]


# ---- pure helpers (no models) ----------------------------------------------------------------


def subject_query(row: dict[str, Any]) -> str:
    """The detector's phrase: the VLM's grounding description, else the object's name."""
    for key in ("subject_phrase", "subject"):
        query = clean_query(row.get(key) or "")
        if query:
            return query
    raise StageError("no_subject: the clip has neither subject_phrase nor subject (run the subject-choosing stage first)")


def decode_clip(path: str, start: int, end: int, frame_pts: list[int] | None) -> list[np.ndarray]:
    """Every frame of the clip, RGB uint8 at display size, decoded once."""
    try:
        return read_frames(path, range(start, end), frame_pts, first_index=start)
    except (av.FFmpegError, OSError) as e:
        raise StageError(f"decode_failed: {type(e).__name__}: {e}") from e


def candidate_frames(num_frames: int, count: int) -> list[int]:
    """`count` clip offsets evenly spread from the first frame to the last, without repeats."""
    if count == 1 or num_frames == 1:
        return [0]
    return sorted({round(i * (num_frames - 1) / (count - 1)) for i in range(count)})


def mask_stats(masks: np.ndarray, border_px: int) -> MaskStats:
    """Coverage, emptiness and border contact of (T, H, W) bool masks."""
    present = masks.any(axis=(1, 2))  # (T,)
    empty_frac = float(1.0 - present.mean())
    if not present.any():
        return MaskStats(area_mean=None, empty_frac=empty_frac, border_frac=None)
    kept = masks[present]  # (P, H, W)
    area = kept.mean(axis=(1, 2))  # (P,)
    b = border_px
    inner = kept[:, b:-b, b:-b].sum(axis=(1, 2)) if min(kept.shape[1:]) > 2 * b else 0  # (P,) pixels off the band
    on_border = kept.sum(axis=(1, 2)) > inner  # (P,) some pixel lies in the band
    return MaskStats(area_mean=float(area.mean()), empty_frac=empty_frac, border_frac=float(on_border.mean()))


def gate(stats: MaskStats, gates: MaskGates) -> str | None:
    """The drop reason for a clip's mask statistics, or None to keep it. Vanishing is judged first:
    the other statistics say little about a mask that is mostly absent."""
    if stats.area_mean is None or stats.empty_frac > gates.max_empty_frac:
        return f"mask_vanished: empty on {stats.empty_frac:.0%} of frames > {gates.max_empty_frac:.0%}"
    if stats.area_mean < gates.min_area_frac:
        return f"mask_too_small: mean area {stats.area_mean:.4f} < {gates.min_area_frac}"
    if stats.area_mean > gates.max_area_frac:
        return f"mask_too_large: mean area {stats.area_mean:.3f} > {gates.max_area_frac}"
    if stats.border_frac is not None and stats.border_frac > gates.max_border_frac:
        return f"mask_on_border: on the border in {stats.border_frac:.0%} of frames > {gates.max_border_frac:.0%}"
    return None
