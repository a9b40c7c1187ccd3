"""Shared fixtures: one local Ray runtime per test session, and the shared real media when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = Path(os.environ.get("CURATE_SHARED_MEDIA", REPO.parent / "shared" / "media"))
EXAMPLES = REPO / "examples" / "media"
# Every video under ../shared/media/videos, relative to it (ground_truth.json names them the same way).
SHARED_VIDEOS = [
    "pyscenedetect/testvideo.mp4",
    "pyscenedetect/goldeneye-vfr-drop3.mp4",
    "pyscenedetect/issue-134-rotate.mp4",
    "pyscenedetect/issue-195-aspect-ratio.mp4",
    "pyscenedetect/issue-236-split-copy.mkv",
    "intel-sample-videos/car-detection.mp4",
    "intel-sample-videos/bottle-detection.mp4",
    "imageio/cockatoo.mp4",
]


def shared_media() -> Path:
    """The team's real test footage (../shared/media); tests that need it skip when it is absent."""
    if not (SHARED_MEDIA / "videos").is_dir():
        pytest.skip(f"real test media not found at {SHARED_MEDIA} (set CURATE_SHARED_MEDIA)")
    return SHARED_MEDIA


@pytest.fixture(scope="session", autouse=True)
def curate_cache(tmp_path_factory):
    """Tiny models and VLM responses go to a per-session cache, never the user's ~/.cache/curate.
    Set before Ray starts, so workers and `curate` subprocesses inherit it."""
    path = tmp_path_factory.mktemp("curate-cache")
    previous = os.environ.get("CURATE_CACHE")
    os.environ["CURATE_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("CURATE_CACHE", None)
    else:
        os.environ["CURATE_CACHE"] = previous


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray runtime shared by the tests that run stages through Ray (starting one costs seconds)."""
    import ray

    from omegaconf import OmegaConf

    from curation.config import CONFIG_DIR
    from curation.ray_env import init_ray

    init_ray(OmegaConf.load(CONFIG_DIR / "run.yaml").cluster)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def audit_run(tmp_path_factory, ray_local) -> Path:
    """The example pipeline's run with scripted VLM answers and masks (tests/audit_fixtures.py),
    shared by the report and browse tests."""
    from audit_fixtures import build_audit_run

    return build_audit_run(tmp_path_factory.mktemp("audit"))
