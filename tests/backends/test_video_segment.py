"""SAM2 video tracking adapter on the tiny random `tiny:sam2-video` model: one mask per frame at the
frame's size, both propagation directions from a mid-clip key frame, per-frame inputs equal to what
the processor makes for the whole video, and refusals of bad inputs. The random weights make the
masks themselves meaningless, so nothing here judges their content."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from curation.backends.models import resolve_model
from curation.backends.video_segment import VideoSegmenter, VideoSegmenterConfig, _LazyFrames
from curation.media.decode import read_frames

from tests.fixtures.media import video_path


@pytest.fixture(scope="module")
def segmenter() -> VideoSegmenter:
    return VideoSegmenter(VideoSegmenterConfig(model="tiny:sam2-video", device="cpu"))


@pytest.fixture(scope="module")
def car_frames() -> list[np.ndarray]:
    """The first 12 frames of a real clip, at its own size (768x432)."""
    return read_frames(str(video_path("intel-sample-videos/car-detection.mp4")), range(12))


def synthetic_frames(count: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def test_a_real_clip_gets_exactly_one_mask_per_frame_at_its_size(segmenter, car_frames):
    height, width = car_frames[0].shape[:2]
    masks = segmenter.track(car_frames, 0, (180.0, 160.0, 420.0, 330.0))  # a hand-made box around the first frame's car
    assert masks.shape == (12, height, width) and masks.dtype == bool


def test_a_hand_made_first_frame_mask_is_propagated_to_every_frame(segmenter, car_frames):
    height, width = car_frames[0].shape[:2]
    drawn = np.zeros((height, width), np.uint8)
    cv2.ellipse(drawn, (300, 245), (120, 85), 0, 0, 360, 1, -1)  # drawn by hand around the first frame's car
    stored: list[int] = []
    original = segmenter._store

    def store(out, masks, done, h, w):
        stored.append(out.frame_idx)
        original(out, masks, done, h, w)

    segmenter._store = store
    try:
        masks = segmenter.track(car_frames, 0, mask=drawn > 0)
    finally:
        del segmenter._store
    assert masks.shape == (12, height, width) and masks.dtype == bool
    assert sorted(set(stored)) == list(range(12))  # the model answered for every frame, once per direction it ran
    with pytest.raises(ValueError, match="box or as a mask"):
        segmenter.track(car_frames, 0, (0.0, 0.0, 10.0, 10.0), mask=drawn > 0)
    with pytest.raises(ValueError, match="non-empty"):
        segmenter.track(car_frames, 0, mask=np.zeros((height, width), bool))


def test_a_mid_clip_key_frame_is_tracked_forward_and_backward(segmenter, monkeypatch):
    frames = synthetic_frames(7)
    visits: list[tuple[int, bool]] = []
    propagate = segmenter.model.propagate_in_video_iterator

    def spy(session, start_frame_idx=None, reverse=False, **kwargs):
        for out in propagate(session, start_frame_idx=start_frame_idx, reverse=reverse, **kwargs):
            visits.append((out.frame_idx, reverse))
            yield out

    monkeypatch.setattr(segmenter.model, "propagate_in_video_iterator", spy)
    masks = segmenter.track(frames, 4, (10, 8, 40, 30))
    assert masks.shape == (7, 48, 64)
    assert [f for f, rev in visits if not rev] == [4, 5, 6]  # key frame to the clip's end
    assert [f for f, rev in visits if rev] == [4, 3, 2, 1, 0]  # key frame back to the clip's start


def test_frames_are_prepared_one_at_a_time_exactly_as_for_the_whole_video(segmenter):
    frames = synthetic_frames(3)
    whole = segmenter.processor.video_processor(videos=[np.stack(frames)], return_tensors="pt").pixel_values_videos[0]
    lazy = _LazyFrames(frames, segmenter.processor.video_processor, torch.float32)
    assert len(lazy) == 3 and list(lazy) == [0, 1, 2]
    for k in range(3):
        torch.testing.assert_close(lazy[k], whole[k])


def test_bad_inputs_are_refused(segmenter):
    frames = synthetic_frames(3)
    with pytest.raises(ValueError, match="outside the clip"):
        segmenter.track(frames, 3, (0, 0, 10, 10))
    with pytest.raises(ValueError, match="differ in size"):
        segmenter.track([*frames, np.zeros((10, 10, 3), np.uint8)], 0, (0, 0, 5, 5))


def test_an_image_sam2_checkpoint_is_refused():
    with pytest.raises(ValueError, match="not sam2_video"):
        VideoSegmenter(VideoSegmenterConfig(model=resolve_model("tiny:sam2").path, device="cpu"))
