"""curation.media.shots on synthetic frames: no media needed, so these run everywhere."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from curation.media.shots import AdaptiveShots, ContentShots, detect_shots, scenedetect_size


def two_shots(n: int = 60, cut: int = 30, size=(64, 36)) -> list[np.ndarray]:
    """A smooth colour gradient panning slowly, then a different one: one hard cut at `cut`."""
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    a = (255 * np.concatenate([x * np.ones((h, 1, 1)), 1 - x * np.ones((h, 1, 1)), 0.2 * np.ones((h, w, 1))], 2)).astype(np.uint8)
    b = (255 * np.concatenate([0.1 * np.ones((h, w, 1)), y * np.ones((1, w, 1)), 1 - y * np.ones((1, w, 1))], 2)).astype(np.uint8)
    return [np.roll(a if i < cut else b, i, axis=1) for i in range(n)]


@pytest.mark.parametrize("detector", [ContentShots(27.0, 0.6), AdaptiveShots(3.0, 15.0, 2, 0.6)], ids=["content", "adaptive"])
def test_a_hard_cut_is_found_at_the_first_frame_of_the_new_shot(detector):
    frames = two_shots()
    shots = detect_shots(((i, i * 1001, f) for i, f in enumerate(frames)), detector, fps=30000 / 1001,
                         time_base=Fraction(1, 30000))
    assert shots.cuts == [30]
    assert shots.spans == [(0, 30), (30, 60)]
    assert shots.num_frames == 60 and shots.analysis_size == (64, 36)


def test_missing_and_repeated_pts_still_give_monotonic_times_and_keep_the_raw_pts():
    frames = two_shots(n=6, cut=3)
    pts = [0, 512, None, 512, 2048, 2560]
    shots = detect_shots(zip(range(6), pts, frames), ContentShots(27.0, 0.0), fps=25.0, time_base=Fraction(1, 12800))
    assert shots.pts == pts
    assert np.all(np.diff(shots.times) > 0)
    assert shots.times[2] == pytest.approx(0.04 + 0.04) and shots.times[4] == pytest.approx(0.16)


def test_frames_out_of_order_are_refused():
    frames = two_shots(n=3)
    with pytest.raises(ValueError, match="decode order"):
        detect_shots([(0, 0, frames[0]), (2, 2, frames[2])], ContentShots(27.0, 0.6), fps=25.0, time_base=Fraction(1, 25))


def test_no_frames_give_no_shots():
    shots = detect_shots([], ContentShots(27.0, 0.6), fps=25.0, time_base=Fraction(1, 25))
    assert shots.num_frames == 0 and shots.spans == [] and shots.cuts == []


@pytest.mark.parametrize(("size", "expected"), [
    ((1280, 720), (256, 144)), ((704, 576), (256, 209)), ((544, 1280), (109, 256)), ((200, 100), (200, 100)),
])
def test_analysis_size_is_pyscenedetects_auto_downscale(size, expected):
    assert scenedetect_size(*size) == expected


def test_content_scores_are_bit_identical_to_pyscenedetects_on_real_frames():
    from scenedetect.detectors import ContentDetector

    from curation.media.decode import iter_frames
    from curation.media.shots import ContentShots

    from tests.fixtures.media import video_path

    frames = [f for _, _, f in iter_frames(str(video_path("pyscenedetect/testvideo.mp4")), size=(256, 144), fmt="bgr24",
                                           interpolation="POINT", stop=240)]  # black, a cut at 30, a cut at 180, a fade-in
    library = ContentDetector()
    expected = [library._calculate_frame_score(None, f) for f in frames]
    scorer = ContentShots(27.0, 0.6).scorer(0)
    for f in frames:
        scorer.push(f)
    assert scorer.finish(at_end=True).tolist() == expected
    later = ContentShots(27.0, 0.6).scorer(100)  # a run starting mid-video cannot score its first frame
    for f in frames[100:]:
        later.push(f)
    got = later.finish(at_end=False)
    assert np.isnan(got[0]) and got[1:].tolist() == expected[101:]
