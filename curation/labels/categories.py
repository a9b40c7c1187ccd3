"""One edit-category taxonomy for every ingested dataset.

Each public edit dataset names its categories its own way ("Local Remove", "obj_removal", "remove",
"Remove object"). Downstream stages filter and stratify on category (references keep only local
change/add and background change; RVEDiT samples N per category per dataset), so the names must
mean the same thing whichever dataset a row came from. Adapters map their raw names here; anything
unmapped becomes `other` and is counted, so a gap in a mapping shows up in the listing's counts
instead of silently skewing a stratified sample.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# name -> what it covers. The order is the order reports list them in.
CATEGORY_MEANINGS: dict[str, str] = {
    "local_change": "one object or region is replaced or altered (object swap, attribute change of a thing)",
    "local_add": "a new object is inserted into the scene",
    "local_remove": "an object is removed and the background filled in",
    "background_change": "the background or scene is replaced while the foreground subject stays",
    "global_style": "the whole frame is re-rendered in another artistic style",
    "color_texture": "colour, material or texture of something changes, shape and identity kept",
    "camera": "viewpoint or camera motion changes (new shot, orbit, zoom)",
    "relight": "lighting, time of day or illumination changes",
    "other": "anything else, including categories no adapter maps yet",
}
TAXONOMY: tuple[str, ...] = tuple(CATEGORY_MEANINGS)
OTHER = "other"

# Synonyms every adapter gets for free; keys are written the way datasets write them and are
# normalised by `category_key` before lookup.
BUILTIN_SYNONYMS: dict[str, str] = {
    # local_add
    "add": "local_add", "addition": "local_add", "object addition": "local_add",
    "add object": "local_add", "obj addition": "local_add", "insert": "local_add",
    # local_remove
    "remove": "local_remove", "removal": "local_remove", "object removal": "local_remove",
    "remove object": "local_remove", "obj removal": "local_remove", "erase": "local_remove",
    # local_change
    "replace": "local_change", "replacement": "local_change", "swap": "local_change",
    "object swap": "local_change", "obj swap": "local_change", "object replacement": "local_change",
    "replace object": "local_change", "local change": "local_change", "local edit": "local_change",
    "local": "local_change",
    # global_style
    "style": "global_style", "style transfer": "global_style", "global style": "global_style",
    "stylization": "global_style", "global stylization": "global_style", "style change": "global_style",
    # background_change
    "background change": "background_change", "background": "background_change",
    "background swap": "background_change", "background replacement": "background_change",
    "change background": "background_change",
    # color_texture
    "color": "color_texture", "colour": "color_texture", "texture": "color_texture",
    "color change": "color_texture", "change color": "color_texture", "material": "color_texture",
    "color texture": "color_texture",
    # camera
    "camera": "camera", "camera multi shot": "camera", "camera multi shot edit": "camera",
    "camera motion": "camera", "camera move": "camera",
    # relight
    "relight": "relight", "relighting": "relight", "lighting": "relight", "light": "relight",
    "illumination": "relight",
    # the taxonomy's own names always map to themselves
    **{name: name for name in CATEGORY_MEANINGS},
}

_SEPARATORS = re.compile(r"[\s_\-]+")


def category_key(raw: str) -> str:
    """Lookup key: case-, space-, underscore- and hyphen-insensitive ("Local_Remove" == "local remove")."""
    return _SEPARATORS.sub(" ", raw.strip().lower()).strip()


def _keyed(mapping: Mapping[str, str]) -> dict[str, str]:
    return {category_key(k): v for k, v in mapping.items()}


_BUILTIN_KEYED = _keyed(BUILTIN_SYNONYMS)


def lookup_category(raw: str | None, mapping: Mapping[str, str] | None = None) -> str | None:
    """Taxonomy name for `raw`, or None when neither the adapter's mapping nor a built-in knows it.

    The adapter's own mapping wins over the built-ins, so a dataset whose "style" means something
    else can say so.
    """
    if raw is None or not str(raw).strip():
        return None
    key = category_key(str(raw))
    if mapping:
        own = _keyed(mapping)
        if key in own:
            return own[key]
    return _BUILTIN_KEYED.get(key)


def normalize_category(raw: str | None, mapping: Mapping[str, str] | None = None) -> str:
    """Taxonomy name for `raw`; unknown or missing categories become `other`."""
    return lookup_category(raw, mapping) or OTHER
