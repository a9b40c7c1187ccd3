"""Grounding DINO and SAM2/SAM3 adapters on tiny random models loaded from a local directory: batched
results equal one-image-at-a-time results, detections map to their own query, empty inputs cost
nothing, and a checkpoint of the other SAM family is refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from curation.backends.detect import DetectorConfig, GroundingDinoDetector, clean_query
from curation.backends.models import resolve_model
from curation.backends.segment import BoxSegmenter, SegmenterConfig

from tests.fixtures.media import image_path, video_path
from tests.fixtures.tiny_sam3 import build_tiny_sam3_tracker


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Tiny models built once through resolve_model into a private cache, then used by local path."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CURATE_CACHE", str(tmp_path_factory.mktemp("cache")))
        return resolve_model("tiny:grounding-dino").path, resolve_model("tiny:sam2").path


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """Two same-size frames of one video and one frame of another size (RGB uint8)."""
    out = []
    for name, index in [("car-detection.mp4", 0), ("car-detection.mp4", 90), ("bottle-detection.mp4", 30)]:
        cap = cv2.VideoCapture(str(video_path(f"intel-sample-videos/{name}")))
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
        cap.release()
        assert ok
        out.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    return out


QUERIES = [["a white car", "the road"], ["A Red Truck.", "a tree"], ["a bottle of water"]]


@pytest.fixture(scope="module")
def detector(tiny_dirs) -> GroundingDinoDetector:
    assert not resolve_model(tiny_dirs[0]).random_weights  # a local path is taken as given
    return GroundingDinoDetector(DetectorConfig(model=tiny_dirs[0], box_threshold=0.05, text_threshold=0.05, batch_size=8, device="cpu"))


@pytest.fixture(scope="module")
def segmenter(tiny_dirs) -> BoxSegmenter:
    return BoxSegmenter(SegmenterConfig(model=tiny_dirs[1], batch_size=8, device="cpu"))


def test_batched_detection_equals_one_image_at_a_time(detector, images):
    batched = detector.detect(images, QUERIES)
    single = [detector.detect([im], [q])[0] for im, q in zip(images, QUERIES)]
    assert any(batched), "low thresholds should let the random detector report boxes"
    for got, want in zip(batched, single):
        assert [(d.query, d.label) for d in got] == [(d.query, d.label) for d in want]
        np.testing.assert_allclose([d.score for d in got], [d.score for d in want], atol=1e-4)
        np.testing.assert_allclose([d.box for d in got], [d.box for d in want], atol=1e-2)


def test_each_detection_names_its_own_query_and_lies_in_the_image(detector, images):
    for image, queries, found in zip(images, QUERIES, detector.detect(images, QUERIES)):
        height, width = image.shape[:2]
        for d in found:
            assert 0 <= d.query < len(queries)
            # the label is made of the query's own tokens, never a neighbour's
            assert set(d.label.split()) <= set(clean_query(queries[d.query]).split())
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            assert d.score > 0.05


def test_a_three_pixel_high_image_is_not_taken_for_channels_first(detector, segmenter):
    image = np.full((3, 300, 3), 200, np.uint8)
    found = detector.detect([image], [["a car"]])[0]
    assert found and all(d.box[3] <= 3 and d.box[2] <= 300 for d in found)
    assert segmenter.segment([image], [[(0, 0, 100, 3)]])[0].shape == (1, 3, 300)


def test_long_query_lists_are_split_into_prompts_that_fit(detector):
    queries = [f"a {c} car next to the {c} house with a tall tree" for c in ("red", "blue", "green", "white", "black", "brown", "pink")]
    huge = " ".join(["a red car"] * 40)
    prompts = detector.prompts([queries, [], [huge]])
    assert len(prompts) > 2 and [p.image for p in prompts].count(2) == 1 and 1 not in [p.image for p in prompts]
    assert sorted(q for p in prompts if p.image == 0 for q in p.queries) == list(range(len(queries)))
    assert huge.startswith(prompts[-1].text[:-1])  # cut to fit, never dropped
    tokenizer = detector.processor.tokenizer
    assert tokenizer.unk_token not in tokenizer.tokenize(queries[0])  # the tiny vocab knows everyday words
    for p in prompts:
        assert len(tokenizer(p.text)["input_ids"]) <= detector.max_text_len
        assert p.text.endswith(".") and p.text == p.text.lower()


def test_thresholds_at_one_find_nothing_and_no_queries_give_no_boxes(tiny_dirs, images, detector):
    strict = GroundingDinoDetector(DetectorConfig(model=tiny_dirs[0], box_threshold=1.0, text_threshold=1.0, device="cpu"))
    assert strict.detect(images, QUERIES) == [[], [], []]
    assert detector.detect(images[:2], [[], [" . "]]) == [[], []]


def test_batched_masks_equal_one_image_at_a_time_at_original_size(segmenter, images):
    boxes = [[(10, 20, 200, 150), (300, 100, 500, 300)], [], [(50, 50, 120, 300)]]
    batched = segmenter.segment(images, boxes)
    for image, box_list, masks in zip(images, boxes, batched):
        assert masks.dtype == bool and masks.shape == (len(box_list), *image.shape[:2])
    assert batched[2].any()
    for image, box_list, masks in zip(images, boxes, batched):
        single = segmenter.segment([image], [box_list])[0]
        assert single.shape == masks.shape
        assert np.count_nonzero(single != masks) <= 1e-3 * masks.size  # float noise may flip a pixel on the threshold


# ---- SAM3 (Sam3TrackerModel, box prompts) ---------------------------------------------------------


@pytest.fixture(scope="module")
def sam3_dir(tmp_path_factory):
    return build_tiny_sam3_tracker(tmp_path_factory.mktemp("tiny-sam3-tracker"))


def test_sam3_box_prompts_give_one_mask_per_box_at_the_image_s_size(sam3_dir, images):
    segmenter = BoxSegmenter(SegmenterConfig(family="sam3", model=str(sam3_dir), batch_size=2, device="cpu"))
    assert type(segmenter.model).__name__ == "Sam3TrackerModel"
    cat = cv2.cvtColor(cv2.imread(str(image_path("skimage/chelsea.png")), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)  # 451x300
    frames = [cat, images[2], cat]
    boxes = [[(140, 40, 350, 200), (0, 0, 451, 300)], [], [(20, 30, 100, 90)]]
    batched = segmenter.segment(frames, boxes)  # batch_size=2: two forward passes, box lists padded
    for frame, box_list, masks in zip(frames, boxes, batched):
        assert masks.dtype == bool and masks.shape == (len(box_list), *frame.shape[:2])
    assert batched[0].shape == (2, 300, 451) and batched[1].shape == (0, *images[2].shape[:2])
    single = segmenter.segment([cat], [boxes[2]])[0]
    assert np.count_nonzero(single != batched[2]) <= 1e-3 * single.size  # the padding changed no real mask


def test_a_checkpoint_of_the_other_family_is_refused(sam3_dir, tiny_dirs):
    with pytest.raises(ValueError, match="a 'sam3_tracker' checkpoint, not one of family 'sam2'"):
        BoxSegmenter(SegmenterConfig(family="sam2", model=str(sam3_dir), device="cpu"))
    with pytest.raises(ValueError, match="a 'sam2' checkpoint, not one of family 'sam3'"):
        BoxSegmenter(SegmenterConfig(family="sam3", model=tiny_dirs[1], device="cpu"))
