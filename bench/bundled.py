"""The media benchmarks read by default: the redistributable files bundled in the repository
(examples/media and tests/data, listed in tests/data/LICENSES.md), found through the tests' own
index (tests/fixtures/media.py), so every benchmark runs in a fresh clone. Each benchmark still
takes a directory of its own media by flag."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fixtures import media as _media  # noqa: E402

DESCRIPTION = "the media bundled in the repository (examples/media, tests/data)"


def videos(built: bool = False) -> dict[str, Path]:
    """name -> file of every bundled video; with `built`, also the special cases the tests build
    (variable frame rate, rotation, whip pan), made once in a temporary directory."""
    out = dict(_media.BUNDLED_VIDEOS)
    if built:
        out.update({name: _media.video_path(name) for name in _media.BUILT_VIDEOS})
    return out


def images() -> list[Path]:
    """Every bundled photo: scikit-image's, then OpenCV's samples."""
    return _media.bundled_images("skimage") + _media.bundled_images("opencv-doc")


def ground_truth(built: bool = False) -> dict[str, dict]:
    """name -> ground_truth.json entry (plus the built videos' derived truth with `built`)."""
    truth = _media.ground_truth()
    return {name: entry for name, entry in truth.items() if built or name in _media.BUNDLED_VIDEOS}
