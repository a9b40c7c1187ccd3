"""Leak-free split assignment: every sample of one source group lands in the same split.

Samples cut from one video (its clips, the sessions sampled from them, the edits of one source
image) share much of their pixels; a video with sessions in both train and val leaks val into
train. So the split is a function of a group key, by default the root source of the lineage
(`source_uri`, which every derived row inherits from the row it was made from), never of the
sample: `sha1(seed, key)` mapped to [0, 1) picks the split whose cumulative ratio covers it. It
needs no other row, so it is stable across reruns, input order and runs over more data (adding
videos never moves an old one to the other side). Ratios hold over groups, not samples: a split's
share of samples varies with how many samples each of its groups has.
"""

from __future__ import annotations

import hashlib
import math
import re

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def check_ratios(ratios: dict[str, float]) -> dict[str, float]:
    """Split name -> share of groups: names fit in a file name, shares are positive and sum to 1."""
    if not ratios:
        raise ValueError("splits must name at least one split, e.g. {train: 0.95, val: 0.05}")
    bad = [n for n in ratios if not _NAME.match(n)]
    if bad:
        raise ValueError(f"split names go into shard file names: letters, digits, - and _ only, got {bad}")
    if any(r <= 0 for r in ratios.values()) or not math.isclose(sum(ratios.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"split ratios must be positive and sum to 1, got {ratios}")
    return ratios


def unit_hash(seed: int, key: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, key)."""
    digest = hashlib.sha1(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(key: str, ratios: dict[str, float], seed: int) -> str:
    """The split of every sample whose group key is `key` (ratios in the order given)."""
    u = unit_hash(seed, key)
    edge = 0.0
    for name, ratio in ratios.items():
        edge += ratio
        if u < edge:
            return name
    return next(reversed(ratios))  # u just below 1 with ratios summing to 1 - 1e-7
