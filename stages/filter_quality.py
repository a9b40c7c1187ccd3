"""filter_quality: cheap real-signal checks on each clip before any VLM is paid for.

Black borders (crop recorded; `sample_frames` cuts it from the frames it stores), luminance, blur,
burned-in text (RapidOCR), NSFW (NudeNet), motion (Farneback flow) and the camera's motion class (a
homography between frames: `sample_frames` copies it into each session turn as VINCIE's camera
label, kept where no VLM annotates the turn). Each check is switchable and writes its score into
`scores`; a clip failing any enabled check is dropped with the first failure as its reason (in a
fixed order, `curation.quality.CHECK_ORDER`), and keeps every score for the auditor.

Clips and videos are sampled at `quality.num_frames` frames over their span; a session is checked
on its stored frames; pairs and triplets on their target (first frame).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from curation.core.schema import scores_of
from curation.core.stage import Stage, StageError, Threshold
from curation.labels.camera import CameraLabel
from curation.media.decode import read_frames
from curation.media.jpeg import decode_image
from curation.media.representative import representative_image
from curation.media.timing import clip_span, clip_times
from curation.quality import QualityConfig, assess, load_models, sample_indices


class FilterQualityColumns(BaseModel):
    scores: dict[str, float] | None = Field(
        None, description="name -> score; filter_quality adds border_fraction, luma, laplacian_var, text_area(_max), "
        "nsfw, motion_px_per_s, camera_shift_x/y, camera_zoom (those its enabled checks computed)")
    crop_box: list[int] | None = Field(None, description="active picture inside black borders: x0, y0, x1, y1 (exclusive), source pixels")
    camera_motion: CameraLabel | None = Field(None, description="VINCIE camera label from the homography (none = static); null: "
                                                                "undetermined")
    camera_motion_raw: str | None = Field(None, description="the homography's own label: static, pan-*, tilt-*, zoom-in/out, undetermined")


class FilterQuality(Stage):
    """Drop dark, blurry, text-covered, unsafe, static or mostly-border clips; record crop box and camera motion."""

    name: ClassVar[str] = "filter_quality"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = FilterQualityColumns
    reads_media: ClassVar[tuple[str, ...]] = ("frames",)

    quality: QualityConfig = Field(default_factory=QualityConfig, description="the checks, their switches and thresholds")
    max_pixels: int = Field(1 << 26, gt=0, description="image-bomb guard for images read from files")

    def setup(self) -> None:
        load_models(self.quality)

    def required_modules(self) -> dict[str, str]:
        off = "or switch the check off: filter_quality.quality.{}.enabled=false"
        return {**({"rapidocr": f"pip install 'curation[quality]', {off.format('text_overlay')}"}
                   if self.quality.text_overlay.enabled else {}),
                **({"nudenet": f"pip install 'curation[nsfw]', {off.format('nsfw')}"} if self.quality.nsfw.enabled else {})}

    def thresholds(self) -> list[Threshold]:
        """The enabled checks' cuts, each on the score that check writes."""
        q = self.quality
        cuts = [("luma", "luminance.min_luma", q.luminance.enabled, q.luminance.min_luma),
                ("luma", "luminance.max_luma", q.luminance.enabled, q.luminance.max_luma),
                ("laplacian_var", "blur.min_laplacian_var", q.blur.enabled, q.blur.min_laplacian_var),
                ("text_area", "text_overlay.max_area_ratio", q.text_overlay.enabled, q.text_overlay.max_area_ratio),
                ("nsfw", "nsfw.max_score", q.nsfw.enabled, q.nsfw.max_score),
                ("motion_px_per_s", "motion.min_px_per_s", q.motion.enabled, q.motion.min_px_per_s)]
        return [Threshold(score=score, value=value, setting=f"quality.{key}") for score, key, on, value in cuts if on]

    def process(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        frames, times = self._frames(row)
        report = assess(frames, self.quality, times_s=times)
        columns = {
            "scores": {**scores_of(row), **report.scores},
            "crop_box": list(report.crop_box) if report.crop_box is not None else None,
            "camera_motion": report.camera,
            "camera_motion_raw": report.camera_raw,
        }
        if report.reason:
            return [self.error_row(row, report.reason, "dropped", **columns)]
        return [self.enrich(row, **columns)]

    def _frames(self, row: dict[str, Any]) -> tuple[list[np.ndarray], list[float] | None]:
        """The frames to check and their times in seconds (None for stills: no motion checks)."""
        kind = row.get("kind")
        if kind == "session":
            stored = row.get("frames") or []
            if not stored:
                raise StageError("no_media: session has no stored frames")
            frames = [decode_image(data, f"frame {i}") for i, data in enumerate(stored)]
            return frames, row.get("frame_times_s")
        if kind in ("clip", "video"):
            if kind == "clip":
                start, end, frame_pts = clip_span(row)
            else:
                start, end, frame_pts = 0, int(row.get("num_frames") or 0), None
            if end <= start:
                raise StageError(f"no_media: empty span [{start}, {end})")
            indices = sample_indices(start, end, self.quality.num_frames)
            times = clip_times(start, end, row.get("fps"), frame_pts, row.get("time_base"))
            frames = read_frames(row["source_uri"], indices, frame_pts, first_index=start)
            return frames, [float(times[i - start]) for i in indices]
        _, image = representative_image(row, "target", self.max_pixels)
        return [image], None
