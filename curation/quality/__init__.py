"""Per-clip (or per-image) quality checks: black borders, exposure, blur, text overlay, NSFW,
motion and camera motion, each switchable, each a score compared with a documented threshold.

    cfg = QualityConfig()                     # defaults; every field says where its value comes from
    load_models(cfg)                          # once per worker (RapidOCR, NudeNet), e.g. in Stage.setup
    idx = sample_indices(start, end, cfg.num_frames)
    report = assess(frames, cfg, times_s=[i / fps for i in idx])   # frames: RGB uint8, HxWx3
    report.scores, report.crop_box, report.camera, report.failed

Frames are measured inside the detected black border (the crop), at a fixed working size (see
`curation.quality.frames`). Motion and camera checks need two or more frames with times; on a single
image they are skipped and leave no score.
"""

from __future__ import annotations

from curation.quality.assess import QualityConfig, QualityReport, assess, load_models, sample_indices
from curation.quality.borders import BorderConfig, Borders, find_borders
from curation.quality.camera_motion import TO_VINCIE, CameraMotion, CameraMotionConfig, camera_motion
from curation.quality.deps import MissingDependency
from curation.quality.exposure import BlurConfig, LuminanceConfig, laplacian_variance, mean_luma
from curation.quality.motion import MotionConfig, motion_score
from curation.quality.nsfw import EXPOSED_CLASSES, NsfwConfig, nsfw_score
from curation.quality.text_overlay import TextOverlayConfig, text_area_ratios

__all__ = [
    "EXPOSED_CLASSES", "TO_VINCIE", "BlurConfig", "BorderConfig", "Borders", "CameraMotion", "CameraMotionConfig",
    "LuminanceConfig", "MissingDependency", "MotionConfig", "NsfwConfig", "QualityConfig", "QualityReport",
    "TextOverlayConfig", "assess", "camera_motion", "find_borders", "laplacian_variance", "load_models", "mean_luma",
    "motion_score", "nsfw_score", "sample_indices", "text_area_ratios",
]
