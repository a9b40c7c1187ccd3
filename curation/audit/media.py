"""What an auditor sees of a sample: its images, region-of-edit masks drawn over the frames, boxes
with labels.

A sample's media are named by `sample_media(row)` from its manifest row alone ("frame-2",
"roe-0-src", "ref", ...). The browser's image URLs carry only such a name; `render` looks it up in
that list again, so a request can never name a file. Bytes come from the row (frames, masks,
references: the catalog reads the files the manifest's references name); an edit that has no
frame in its row yet (a pair or triplet before `ground_edit`) is read from the media URIs the
manifest itself holds.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

MASK_COLOUR = (255, 40, 40)
BOX_COLOURS = {"src": (40, 200, 255), "tgt": (255, 210, 0), "source": (40, 200, 255), "edited": (255, 210, 0)}
MAX_SIDE = 640          # thumbnails are shrunk to this (aspect kept)
MAX_PIXELS = 1 << 26    # image-bomb guard for media read from URIs
# Columns holding a sample's own images (the shard stage's manifest drops them).
MEDIA_COLUMNS = frozenset({"frames", "src_frame", "tgt_frame", "reference", "target_uri"})


@dataclass(frozen=True)
class MediaItem:
    """One image of a sample page: `name` is its URL token, `caption` what it shows."""

    name: str
    caption: str
    overlay: bool = False  # a mask or boxes are drawn on it


def _turn_detections(roe: dict[str, Any], side: str) -> list[dict[str, Any]]:
    return [d for d in roe.get("detections") or [] if d.get("frame") == side]


def sample_media(row: dict[str, Any]) -> list[MediaItem]:
    """Every image the sample page shows, in page order."""
    items: list[MediaItem] = []
    frames = row.get("frames") or []
    for i in range(len(frames)):
        items.append(MediaItem(f"frame-{i}", f"frame {i}"))
    for roe in row.get("roe") or []:
        turn = roe["turn"]
        for side, frame in (("src", turn), ("tgt", turn + 1)):
            mask, boxes = roe.get(f"{side}_mask"), _turn_detections(roe, side)
            if (mask or boxes) and frame < len(frames):
                items.append(MediaItem(f"roe-{turn}-{side}", f"turn {turn} {side} (frame {frame}): RoE mask + boxes",
                                       overlay=True))
    for side, column, mask in (("src", "src_frame", "mask_src"), ("tgt", "tgt_frame", "mask_tgt")):
        if row.get(column):
            items.append(MediaItem(f"edit-{side}", f"{'source' if side == 'src' else 'target'} first frame"
                                   + (" + mask + boxes" if row.get(mask) or row.get("edit_boxes") else ""),
                                   overlay=bool(row.get(mask) or row.get("edit_boxes"))))
    if not row.get("src_frame") and row.get("kind") in ("pair", "triplet", "quad") and row.get("target_uri"):
        items += [MediaItem("uri-src", "source (from source_uri)"), MediaItem("uri-tgt", "target (from target_uri)")]
    if row.get("reference"):
        items.append(MediaItem("ref", "reference image"))
    return items


def render(row: dict[str, Any], name: str) -> bytes | None:
    """JPEG bytes of the named item of this row, or None when the row has no such item."""
    if name not in {item.name for item in sample_media(row)}:
        return None
    kind, _, rest = name.partition("-")
    if kind == "frame":
        image = _open(row["frames"][int(rest)])
    elif kind == "roe":
        turn_text, side = rest.split("-")
        turn = int(turn_text)
        roe = next(r for r in row["roe"] if r["turn"] == turn)
        image = _open(row["frames"][turn if side == "src" else turn + 1])
        image = draw_overlay(image, roe.get(f"{side}_mask"),
                             [(d["box"], f"{d['label']} {d['score']:.2f}", side) for d in _turn_detections(roe, side)])
    elif kind == "edit":
        image = _open(row[f"{rest}_frame"])
        image_side = "source" if rest == "src" else "edited"
        boxes = [(b["box"], b["label"], image_side) for b in row.get("edit_boxes") or [] if b.get("image") == image_side]
        image = draw_overlay(image, row.get(f"mask_{rest}"), boxes)
    elif kind == "uri":
        image = _from_uri(row["source_uri" if rest == "src" else "target_uri"])
    else:  # ref
        image = _open(row["reference"])
    return _jpeg(image)


def draw_overlay(image: Image.Image, mask_png: bytes | None,
                 boxes: list[tuple[list[float], str, str]]) -> Image.Image:
    """The frame with its mask tinted red and outlined, and each box drawn with its label."""
    out = image.convert("RGB")
    if mask_png:
        mask = Image.open(io.BytesIO(mask_png)).convert("L")
        if mask.size != out.size:
            mask = mask.resize(out.size, Image.NEAREST)
        inside = np.asarray(mask) > 127
        pixels = np.asarray(out).astype(np.float32)
        pixels[inside] = 0.55 * pixels[inside] + 0.45 * np.array(MASK_COLOUR, np.float32)
        edge = inside & ~_eroded(inside)
        pixels[edge] = MASK_COLOUR
        out = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 320))
    for box, label, side in boxes:
        colour = BOX_COLOURS.get(side, (0, 255, 0))
        x0, y0, x1, y1 = box
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        text_box = draw.textbbox((x0, y0), label)
        top = max(0, y0 - (text_box[3] - text_box[1]) - 4)
        draw.rectangle([x0, top, x0 + text_box[2] - text_box[0] + 6, top + text_box[3] - text_box[1] + 4], fill=colour)
        draw.text((x0 + 3, top + 1), label, fill=(0, 0, 0))
    return out


def _eroded(inside: np.ndarray) -> np.ndarray:
    padded = np.pad(inside, 1)
    return (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    if image.width * image.height > MAX_PIXELS:
        raise ValueError(f"image of {image.width}x{image.height} is over the {MAX_PIXELS}-pixel limit")
    return image.convert("RGB")


def _from_uri(uri: str) -> Image.Image:
    """The first frame of a pair's image or a triplet's video, from the URI in the manifest row."""
    from curation.media.edit_media import load_image, read_video_frames

    try:
        return Image.fromarray(load_image(uri, MAX_PIXELS))
    except Exception:  # noqa: BLE001 - not an image: try it as a video
        return Image.fromarray(read_video_frames(uri, [0], MAX_PIXELS)[0])


def _jpeg(image: Image.Image) -> bytes:
    image = image.copy()
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=88)
    return out.getvalue()
