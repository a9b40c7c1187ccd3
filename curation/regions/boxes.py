"""VLM grounding boxes -> validated xyxy pixel boxes of the original image.

VLMs report boxes in different conventions, and nothing in a box says which:

| model family | format | order | relative to |
|---|---|---|---|
| Qwen2.5-VL | `pixel` | xyxy | the image *as the model saw it*: its processor's smart_resize (sides |
|            |         |      | multiples of 28 within min/max pixels), or our own shrink before sending |
| Qwen3-VL | `norm1000` | xyxy | 0-1000 on both axes |
| Gemini 2.x | `norm1000` | **yxyx** (`box_2d: [ymin, xmin, ymax, xmax]`) | 0-1000 on both axes |
| others (Florence-style, many APIs) | `norm1` | xyxy | 0-1 on both axes |

Set `fmt` and `order` explicitly per model in its config; `auto` is a fallback for unknown models
and can be wrong (see `to_pixels`). Reasons for rejected boxes keep stable prefixes so
`_run.json` can count them: `bad_box`, `degenerate_box`, `box_out_of_frame`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any, Literal, NamedTuple

import numpy as np

from curation.regions.roe import Box  # x0, y0, x1, y1 in pixels

BoxFormat = Literal["pixel", "norm1000", "norm1", "auto"]
BoxOrder = Literal["xyxy", "yxyx"]

# Keys a VLM's JSON uses for a box: Qwen (`bbox_2d`), Gemini (`box_2d`), and the generic ones.
BOX_KEYS = ("bbox_2d", "box_2d", "bbox", "box")


class LabelledBox(NamedTuple):
    label: str | None
    box: Box  # xyxy pixels of the original image, inside it


class BoxError(ValueError):
    """A box that is not four real numbers; `reason` starts with `bad_box`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def to_pixels(
    box: Sequence[float],
    fmt: BoxFormat,
    order: BoxOrder,
    *,
    width: int,
    height: int,
    sent_width: int | None = None,
    sent_height: int | None = None,
) -> tuple[float, float, float, float]:
    """A VLM box as xyxy pixels of the original `width` x `height` image (not clipped or checked:
    that is `validate_box`'s job).

    `sent_width` x `sent_height` is the size of the image the model saw; `pixel` boxes are scaled
    by original / sent (when not given, the original was sent). `order` is applied first, so a
    Gemini `yxyx` box becomes xyxy before anything else looks at it.

    `auto` guesses the format from the numbers: every coordinate <= 1 -> `norm1`; else the box
    fits inside the sent image -> `pixel`; else every coordinate <= 1000 -> `norm1000`; else
    `pixel` (the only reading left; `validate_box` clips or rejects it). The guess is wrong
    whenever the numbers fit more than one reading: a 0-1000 box that happens to fit inside the
    sent image (such as [10, 10, 500, 400] on a 1024-wide one, or on 640x480) is read as pixels,
    and a pixel box that overshoots the edge of a sent image under 1000 px is read as 0-1000.
    Only an explicit format is always right.
    Raises `BoxError` (`bad_box: ...`) when `box` is not four real numbers.
    """
    x0, y0, x1, y1 = _four_numbers(box)
    if order == "yxyx":
        x0, y0, x1, y1 = y0, x0, y1, x1
    elif order != "xyxy":
        raise ValueError(f"unknown box order {order!r}")
    if (sent_width is None) != (sent_height is None):
        raise ValueError("give both sent_width and sent_height, or neither")
    sent_w, sent_h = (sent_width, sent_height) if sent_width is not None else (width, height)
    if fmt == "auto":
        fmt = _guess_format((x0, y0, x1, y1), sent_w, sent_h)
    if fmt == "pixel":
        sx, sy = width / sent_w, height / sent_h
    elif fmt == "norm1000":
        sx, sy = width / 1000, height / 1000
    elif fmt == "norm1":
        sx, sy = float(width), float(height)
    else:
        raise ValueError(f"unknown box format {fmt!r}")
    return x0 * sx, y0 * sy, x1 * sx, y1 * sy


def _guess_format(xyxy: tuple[float, float, float, float], sent_w: int, sent_h: int) -> BoxFormat:
    x0, y0, x1, y1 = xyxy
    if not all(math.isfinite(c) for c in xyxy):
        return "pixel"  # nothing to guess from; validate_box rejects it as degenerate
    if max(xyxy) <= 1.0:
        return "norm1"
    if max(x0, x1) <= sent_w and max(y0, y1) <= sent_h:
        return "pixel"
    if max(xyxy) <= 1000:
        return "norm1000"
    return "pixel"  # the only reading left


def validate_box(
    box_px: Sequence[float], width: int, height: int, *, min_side_px: float = 2, min_area_frac: float = 0.0005
) -> tuple[Box | None, str | None]:
    """(box, None) with reversed corners swapped and the box clipped to the frame, or (None, reason).

    Reasons: `bad_box` (not four real numbers), `degenerate_box` (NaN/inf, zero size, or after
    clipping a side under `min_side_px` or an area under `min_area_frac` of the frame: too small to
    prompt a segmenter or to mean an object), `box_out_of_frame` (no overlap with the frame; a box
    only partly outside is clipped and kept).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    try:
        x0, y0, x1, y1 = _four_numbers(box_px)
    except BoxError as e:
        return None, e.reason
    if not all(math.isfinite(c) for c in (x0, y0, x1, y1)):
        return None, f"degenerate_box: not finite {_fmt((x0, y0, x1, y1))}"
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    if x1 == x0 or y1 == y0:
        return None, f"degenerate_box: zero size {_fmt((x0, y0, x1, y1))}"
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return None, f"box_out_of_frame: {_fmt((x0, y0, x1, y1))} outside {width}x{height}"
    x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)
    if min(x1 - x0, y1 - y0) < min_side_px:
        return None, f"degenerate_box: side {min(x1 - x0, y1 - y0):.1f} px < {min_side_px} after clipping"
    area_frac = (x1 - x0) * (y1 - y0) / (width * height)
    if area_frac < min_area_frac:
        return None, f"degenerate_box: area {area_frac:.2g} of the frame < {min_area_frac}"
    return (x0, y0, x1, y1), None


def parse_boxes(
    items: Any,
    fmt: BoxFormat,
    order: BoxOrder,
    width: int,
    height: int,
    sent_size: tuple[int, int] | None = None,
    *,
    min_side_px: float = 2,
    min_area_frac: float = 0.0005,
) -> tuple[list[LabelledBox], list[str]]:
    """A VLM's boxes -> (valid labelled pixel boxes, reasons for the rejected ones).

    `items` is a list (or one) of `{"bbox_2d" | "box_2d" | "bbox" | "box": [4 numbers], "label": ...}`
    objects as VLMs write them, or bare 4-number lists. `sent_size` is the (width, height) the
    model saw (see `to_pixels`). Each rejection reason keeps its stable prefix and names the item.
    """
    if isinstance(items, Mapping):
        items = [items]
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
        return [], [f"bad_box: expected a list of boxes, got {type(items).__name__}"]
    sent_w, sent_h = sent_size if sent_size is not None else (None, None)
    kept: list[LabelledBox] = []
    rejected: list[str] = []
    for index, item in enumerate(items):
        label, raw = _split_item(item)
        try:
            px = to_pixels(raw, fmt, order, width=width, height=height, sent_width=sent_w, sent_height=sent_h)
        except BoxError as e:
            rejected.append(f"{e.reason} (item {index})")
            continue
        box, reason = validate_box(px, width, height, min_side_px=min_side_px, min_area_frac=min_area_frac)
        if box is None:
            rejected.append(f"{reason} (item {index})")
        else:
            kept.append(LabelledBox(label, box))
    return kept, rejected


def _split_item(item: Any) -> tuple[str | None, Any]:
    if not isinstance(item, Mapping):
        return None, item
    raw = next((item[k] for k in BOX_KEYS if k in item), None)
    label = item.get("label")
    return (None if label is None else str(label)), raw


def _four_numbers(box: Any) -> tuple[float, float, float, float]:
    if isinstance(box, np.ndarray):
        box = box.tolist()
    if isinstance(box, (str, bytes)) or not isinstance(box, Sequence):
        raise BoxError(f"bad_box: expected 4 numbers, got {type(box).__name__}")
    if len(box) != 4:
        raise BoxError(f"bad_box: expected 4 numbers, got {len(box)}")
    if not all(isinstance(c, Real) and not isinstance(c, bool) for c in box):
        raise BoxError(f"bad_box: not all numbers: {list(box)!r}"[:200])
    x0, y0, x1, y1 = (float(c) for c in box)
    return x0, y0, x1, y1


def _fmt(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{c:.1f}" for c in box) + "]"
