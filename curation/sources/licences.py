"""Licences as samples carry them: one lower-case SPDX-style id per row (`cc-by-nc-4.0`,
`apache-2.0`), taken from a dataset's card through its adapter, or set by the user for plain
files (`ingest.licence=`). Nobody guesses: what no one has stated is `unknown`."""

from __future__ import annotations

import re

UNKNOWN_LICENCE = "unknown"
LICENCE_PATTERN = r"^[a-z0-9][a-z0-9.+-]*$"


def licence_id(value: str) -> str:
    """`CC-BY-NC-4.0 ` -> `cc-by-nc-4.0`; raises ValueError for what cannot be an id (spaces, slashes)."""
    normal = value.strip().lower()
    if not re.fullmatch(LICENCE_PATTERN, normal):
        raise ValueError(f"licence {value!r} is not an SPDX-style id such as cc-by-4.0 or apache-2.0 ({UNKNOWN_LICENCE!r} when "
                         "nobody has said)")
    return normal
