"""Write a whole-input stage's per-sample verdicts back into the parts its workers wrote.

Why: a stage that decides over every row at once (dedup's clusters, stratify's draw) runs its
workers first, one part per fragment, then decides in `finalize` on the driver. Its verdicts
(status, reason and the stage's own columns) must land in those same parts, atomically, and a
rerun that reaches the same verdicts must leave the files untouched, so nothing is rewritten
needlessly and a killed finalize loses nothing."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from curation.core import storage


def rewrite_parts(parts: list[str], verdicts: dict[str, dict[str, Any]], columns: list[str]) -> int:
    """Set, in each part, the `columns` a sample's verdict names (by `sample_id`); write a part
    again (atomically) only when a value changes. Returns how many parts were written."""
    written = 0
    for part in parts:
        table = storage.read_table(part)
        sample_ids = table.column("sample_id").to_pylist()
        if not any(sid in verdicts for sid in sample_ids):
            continue
        current = {c: table.column(c).to_pylist() for c in columns}
        changed = False
        for i, sid in enumerate(sample_ids):
            for c, value in verdicts.get(sid, {}).items():
                if c in current and not same_value(current[c][i], value):
                    current[c][i], changed = value, True
        if changed:
            for c in columns:
                index = table.schema.get_field_index(c)
                table = table.set_column(index, table.schema.field(c), pa.array(current[c], table.schema.field(c).type))
            storage.write_table_atomic(table, part)
            written += 1
    return written


def same_value(a: Any, b: Any) -> bool:
    """Equal, with floats equal to a relative 1e-6 (a value read back from Parquet) and NaN == NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6) or (math.isnan(a) and math.isnan(b))
    return a == b
