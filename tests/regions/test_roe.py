"""RoE fusion on known boxes and masks: exact pixels, PNG round trip, turn outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from curation.regions.roe import FrameRegions, box_mask, decode_mask_png, encode_mask_png, fuse_turn, region_mask

H, W = 40, 60


def rect(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def test_box_mask_covers_touched_pixels_and_clips_to_the_frame():
    assert np.array_equal(box_mask((10, 5, 20, 15), H, W), rect(5, 15, 10, 20))
    # fractional corners: floor the top-left, ceil the bottom-right
    assert np.array_equal(box_mask((10.5, 5.2, 19.1, 14.9), H, W), rect(5, 15, 10, 20))
    # partly outside the frame: clipped; wholly outside: empty
    assert np.array_equal(box_mask((-5, -5, 3, 4), H, W), rect(0, 4, 0, 3))
    assert not box_mask((70, 50, 80, 60), H, W).any()


def test_union_of_overlapping_masks():
    a, b = rect(0, 20, 0, 30), rect(10, 30, 20, 50)
    region = region_mask([(0, 0, 30, 20), (20, 10, 50, 30)], [a, b], H, W)
    assert np.array_equal(region, a | b)
    assert region.sum() == 20 * 30 + 20 * 30 - 10 * 10  # the overlap counts once


def test_box_without_mask_falls_back_to_the_filled_box():
    mask = rect(0, 5, 0, 5)
    region = region_mask([(0, 0, 5, 5), (30, 20, 40, 30)], [mask, None], H, W)
    assert np.array_equal(region, mask | rect(20, 30, 30, 40))


def test_region_mask_rejects_a_mask_of_another_size():
    with pytest.raises(ValueError, match="shape"):
        region_mask([(0, 0, 1, 1)], [np.zeros((H + 1, W), bool)], H, W)


def test_png_is_single_channel_0_255_at_frame_size():
    mask = rect(3, 9, 4, 50)
    decoded = decode_mask_png(encode_mask_png(mask))
    assert decoded.shape == (H, W) and decoded.dtype == np.uint8
    assert set(np.unique(decoded)) == {0, 255}
    assert np.array_equal(decoded == 255, mask)


def test_both_frames_found():
    src = FrameRegions([(0, 0, 10, 10)], [rect(0, 10, 0, 10)])
    tgt = FrameRegions([(5, 5, 25, 25), (20, 20, 40, 30)], [rect(5, 25, 5, 25), None])
    fused = fuse_turn(src, tgt, H, W)
    assert fused.outcome == "found"
    assert np.array_equal(decode_mask_png(fused.src_mask) == 255, rect(0, 10, 0, 10))
    assert np.array_equal(decode_mask_png(fused.tgt_mask) == 255, rect(5, 25, 5, 25) | rect(20, 30, 20, 40))


def test_nothing_detected_in_either_frame_is_none_without_masks():
    empty = FrameRegions([], [])
    fused = fuse_turn(empty, empty, H, W)
    assert (fused.outcome, fused.src_mask, fused.tgt_mask) == ("none", None, None)


def test_detections_in_one_frame_only_give_an_all_zero_mask_for_the_other():
    tgt = FrameRegions([(10, 10, 20, 20)], [rect(12, 18, 12, 18)])
    fused = fuse_turn(FrameRegions([], []), tgt, H, W)
    assert fused.outcome == "found"
    src = decode_mask_png(fused.src_mask)
    assert src.shape == (H, W) and not src.any()
    assert np.array_equal(decode_mask_png(fused.tgt_mask) == 255, rect(12, 18, 12, 18))
