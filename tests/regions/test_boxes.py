"""VLM boxes: every convention (pixel on the sent image, 0-1000, 0-1; xyxy and Gemini's yxyx) maps
to the same pixels of the original image, and bad boxes are rejected with stable reasons."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from curation.regions.boxes import BoxError, LabelledBox, parse_boxes, to_pixels, validate_box

# A 1920x1080 original sent to the model shrunk to 960x540; one object at x 192-960, y 216-864.
W, H = 1920, 1080
SENT_W, SENT_H = 960, 540
OBJECT = (192.0, 216.0, 960.0, 864.0)

# The same object as each model family reports it.
CONVENTIONS = {
    "qwen2.5-vl pixel on the sent image": ([96, 108, 480, 432], "pixel", "xyxy"),
    "qwen3-vl 0-1000": ([100, 200, 500, 800], "norm1000", "xyxy"),
    "gemini 0-1000 yxyx": ([200, 100, 800, 500], "norm1000", "yxyx"),
    "0-1": ([0.1, 0.2, 0.5, 0.8], "norm1", "xyxy"),
}


@pytest.mark.parametrize("name", CONVENTIONS)
def test_every_convention_gives_the_same_pixels(name):
    box, fmt, order = CONVENTIONS[name]
    got = to_pixels(box, fmt, order, width=W, height=H, sent_width=SENT_W, sent_height=SENT_H)
    assert got == pytest.approx(OBJECT)


@pytest.mark.parametrize("name", CONVENTIONS)
def test_auto_detects_each_convention_here(name):
    box, _, order = CONVENTIONS[name]
    got = to_pixels(box, "auto", order, width=W, height=H, sent_width=SENT_W, sent_height=SENT_H)
    assert got == pytest.approx(OBJECT)


def test_pixel_boxes_scale_by_original_over_sent_size():
    # not shrunk: pixels are pixels
    assert to_pixels([10, 20, 30, 40], "pixel", "xyxy", width=640, height=480) == (10, 20, 30, 40)
    # shrunk unevenly (smart_resize rounds each side to a multiple of 28): each axis scales on its own
    got = to_pixels([28, 28, 280, 224], "pixel", "xyxy", width=1000, height=600, sent_width=280, sent_height=224)
    assert got == pytest.approx((100, 600 * 28 / 224, 1000, 600))


def test_yxyx_swaps_axes_before_scaling():
    # Gemini on a non-square image: y scales by the height, x by the width
    assert to_pixels([0, 0, 1000, 500], "norm1000", "yxyx", width=400, height=200) == pytest.approx((0, 0, 200, 200))
    assert to_pixels([0, 0, 1000, 500], "norm1000", "xyxy", width=400, height=200) == pytest.approx((0, 0, 400, 100))


def test_auto_rule_and_its_documented_ambiguity():
    kw = dict(width=2048, height=1536, sent_width=1024, sent_height=768)
    # all <= 1: 0-1
    assert to_pixels([0.5, 0.5, 1.0, 1.0], "auto", "xyxy", **kw) == pytest.approx((1024, 768, 2048, 1536))
    # fits the 1024x768 sent image: read as pixels, even if the model meant 0-1000
    assert to_pixels([10, 10, 500, 400], "auto", "xyxy", **kw) == pytest.approx((20, 20, 1000, 800))
    # beyond the sent image but <= 1000: 0-1000
    assert to_pixels([100, 100, 900, 950], "auto", "xyxy", **kw) == pytest.approx((204.8, 153.6, 1843.2, 1459.2))
    # beyond both: pixels is the only reading left (validate_box then clips it)
    assert to_pixels([500, 500, 1100, 700], "auto", "xyxy", **kw) == pytest.approx((1000, 1000, 2200, 1400))
    # the explicit format is never ambiguous
    assert to_pixels([10, 10, 500, 400], "norm1000", "xyxy", **kw) == pytest.approx((20.48, 15.36, 1024, 614.4))


def test_to_pixels_rejects_what_is_not_a_box():
    for bad in ([1, 2, 3], [1, 2, 3, 4, 5], "0 0 10 10", None, [1, "2", 3, 4], [True, 0, 1, 1], {"x": 1}):
        with pytest.raises(BoxError, match=r"^bad_box: "):
            to_pixels(bad, "pixel", "xyxy", width=10, height=10)
    with pytest.raises(ValueError):
        to_pixels([0, 0, 1, 1], "pixels", "xyxy", width=10, height=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        to_pixels([0, 0, 1, 1], "pixel", "xyyx", width=10, height=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        to_pixels([0, 0, 1, 1], "pixel", "xyxy", width=10, height=10, sent_width=5)


def test_to_pixels_accepts_numpy():
    assert to_pixels(np.array([0.1, 0.2, 0.5, 0.8], np.float32), "norm1", "xyxy", width=W, height=H) == pytest.approx(OBJECT, abs=1e-3)


# --------------------------------------------------------------------------------------------
# validate_box
# --------------------------------------------------------------------------------------------


def test_valid_box_is_kept_as_is():
    assert validate_box(OBJECT, W, H) == (OBJECT, None)


def test_reversed_corners_are_swapped():
    assert validate_box((960, 864, 192, 216), W, H) == (OBJECT, None)
    assert validate_box((192, 864, 960, 216), W, H) == (OBJECT, None)


def test_partly_outside_boxes_are_clipped():
    assert validate_box((-50, -20, 100, 80), 640, 480) == ((0.0, 0.0, 100, 80), None)
    assert validate_box((600, 400, 700, 520), 640, 480) == ((600, 400, 640.0, 480.0), None)
    assert validate_box((-10, -10, 700, 500), 640, 480) == ((0.0, 0.0, 640.0, 480.0), None)


@pytest.mark.parametrize("box", [(-100, 10, -1, 50), (700, 10, 800, 50), (10, -90, 50, -5), (10, 500, 50, 600),
                                 (640, 10, 700, 50), (-50, 10, 0, 50)])  # the last two only touch an edge
def test_boxes_outside_the_frame_are_rejected(box):
    kept, reason = validate_box(box, 640, 480)
    assert kept is None and reason.startswith("box_out_of_frame: ")


@pytest.mark.parametrize("box", [(10, 10, 10, 50), (10, 10, 50, 10), (5, 5, 5, 5)])
def test_zero_size_boxes_are_degenerate(box):
    kept, reason = validate_box(box, 640, 480)
    assert kept is None and reason.startswith("degenerate_box: zero size")


def test_boxes_too_small_after_clipping_are_degenerate():
    kept, reason = validate_box((-100, 10, 1, 200), 640, 480)  # 1 px wide once clipped
    assert kept is None and reason.startswith("degenerate_box: side 1.0 px")
    kept, reason = validate_box((10, 10, 20, 20), 640, 480)  # 10x10: 0.03% of the frame
    assert kept is None and reason.startswith("degenerate_box: area")
    assert validate_box((10, 10, 20, 20), 640, 480, min_area_frac=0)[0] == (10, 10, 20, 20)
    assert validate_box((10, 10, 12, 200), 640, 480, min_area_frac=0)[1] is None  # exactly min_side_px


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_boxes_are_degenerate(bad):
    kept, reason = validate_box((10, 10, bad, 50), 640, 480)
    assert kept is None and reason.startswith("degenerate_box: not finite")


@pytest.mark.parametrize("box", [(1, 2, 3), (1, 2, 3, 4, 5), (), None, ("1", 2, 3, 4), "1234"])
def test_malformed_boxes_are_bad(box):
    kept, reason = validate_box(box, 640, 480)
    assert kept is None and reason.startswith("bad_box: ")


# --------------------------------------------------------------------------------------------
# parse_boxes
# --------------------------------------------------------------------------------------------


def test_parse_qwen_style_pixel_boxes_on_a_shrunk_image():
    reply = json.loads('[{"bbox_2d": [96, 108, 480, 432], "label": "red car"},'
                       ' {"bbox_2d": [480, 432, 96, 108], "label": "reversed"},'
                       ' {"bbox_2d": [2000, 2000, 2100, 2100], "label": "gone"}]')
    kept, rejected = parse_boxes(reply, "pixel", "xyxy", W, H, (SENT_W, SENT_H))
    assert kept == [LabelledBox("red car", OBJECT), LabelledBox("reversed", OBJECT)]
    assert len(rejected) == 1 and rejected[0].startswith("box_out_of_frame: ") and rejected[0].endswith("(item 2)")


def test_parse_gemini_style_boxes():
    reply = json.loads('[{"box_2d": [200, 100, 800, 500], "label": "dog"}, {"box_2d": [0, 0, 1000], "label": "cut off"}]')
    kept, rejected = parse_boxes(reply, "norm1000", "yxyx", W, H)
    assert kept == [LabelledBox("dog", pytest.approx(OBJECT))]
    assert rejected == ["bad_box: expected 4 numbers, got 3 (item 1)"]


def test_parse_mixed_items_and_reasons():
    items = [[0.1, 0.2, 0.5, 0.8], {"bbox": [0.0, 0.0, 0.0, 0.5]}, {"box": [0.2, 0.2, float("nan"), 0.4]},
             {"label": "no box"}, "junk", {"bbox_2d": [0.1, 0.2, 0.5, 0.8], "label": 7}]
    kept, rejected = parse_boxes(items, "norm1", "xyxy", W, H)
    assert kept == [LabelledBox(None, pytest.approx(OBJECT)), LabelledBox("7", pytest.approx(OBJECT))]
    assert [r.split(":")[0] for r in rejected] == ["degenerate_box", "degenerate_box", "bad_box", "bad_box"]
    assert [r.rsplit("(", 1)[1] for r in rejected] == ["item 1)", "item 2)", "item 3)", "item 4)"]


def test_parse_one_object_or_nothing():
    kept, rejected = parse_boxes({"bbox_2d": [100, 200, 500, 800], "label": "cup"}, "norm1000", "xyxy", W, H)
    assert kept == [LabelledBox("cup", pytest.approx(OBJECT))] and rejected == []
    assert parse_boxes([], "auto", "xyxy", W, H) == ([], [])
    kept, rejected = parse_boxes("no boxes found", "auto", "xyxy", W, H)
    assert kept == [] and rejected[0].startswith("bad_box: ")


def test_parse_passes_the_size_limits_through():
    tiny = [{"bbox_2d": [0, 0, 10, 10], "label": "speck"}]
    assert parse_boxes(tiny, "pixel", "xyxy", W, H)[1][0].startswith("degenerate_box: area")
    assert parse_boxes(tiny, "pixel", "xyxy", W, H, min_area_frac=0)[0] == [LabelledBox("speck", (0.0, 0.0, 10.0, 10.0))]
