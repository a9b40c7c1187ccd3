"""A stage that works on some categories of a mixed manifest and passes the others on untouched.

Why: a manifest can hold rows a stage has nothing to do for. `pipeline=erasure` makes each clip a
remove triplet and an add triplet, and only the add direction gets a reference image (InstructX
renders references of the object to add); the remove rows must reach the shards as triplets, not
as `not_grounded` errors of the reference stage."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, Field

from curation.core.stage import Row


class CategoryScope(BaseModel):
    only_categories: list[str] | None = Field(
        None, description="work only on rows whose `category` is listed; the others pass on unchanged (null: every row)")

    def in_scope(self, rows: list[Row], process: Callable[[list[Row]], list[Row]]) -> list[Row]:
        """`process` (one output row per input row) on the rows in scope; the rest as they came, in order."""
        if self.only_categories is None:
            return process(rows)
        mine = [i for i, row in enumerate(rows) if row.get("category") in self.only_categories]
        done = process([rows[i] for i in mine]) if mine else []
        if len(done) != len(mine):
            raise RuntimeError(f"in_scope expects one row out per row in, got {len(done)} for {len(mine)}")
        out = list(rows)
        for i, row in zip(mine, done):
            out[i] = row
        return out
