"""stratify: keep at most `per_group` samples of each group, drawn at random but reproducibly.

RVEDiT (seed 001, §5 and App. D.1) draws 10,000 clips per editing category from each dataset
before anything judges them, so no source and no category dominates. A group is the values of
`group_by` (default: the dataset's own category name, `category_native`, and the dataset); `group_by: [category]`
groups on the normalised taxonomy instead. A null value is a group value of its own (`<none>`),
so rows a dataset left uncategorised are drawn as one group rather than mixed into another.

The draw needs every row of a group, so workers only pass rows through and the decision is made
on the driver in `finalize`, over all fragments at once; the runner ends the streamed chain here,
so the stages after this one (a judge) never see a row this one drops. Within a group rows are
ranked by a hash of (seed, sample_id) and the `per_group` smallest are kept: sample ids are
derived from the sample itself, so the same rows are kept whatever order or fragments the input
comes in, and on every rerun. Verdicts are recomputed from scratch each time (idempotent).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from curation.core import layout, storage
from curation.core.stage import Row, Stage
from curation.core.verdicts import rewrite_parts

OVER_QUOTA = "stratified_out"
NONE_LABEL = "<none>"
_VERDICT_COLUMNS = ("status", "reason", "stratify_group", "stratify_rank", "stratify_group_size")


class StratifyColumns(BaseModel):
    stratify_group: str | None = Field(None, description="the sample's group: its group_by values joined by ' / '")
    stratify_rank: int | None = Field(None, description="0-based rank in its group by hash of (seed, sample_id); "
                                                        "kept when below per_group")
    stratify_group_size: int | None = Field(None, description="rows of its group this stage saw")


class Stratify(Stage):
    """Keep a seeded, order-independent random `per_group` samples of each (category, dataset) group."""

    name: ClassVar[str] = "stratify"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = StratifyColumns

    per_group: int = Field(gt=0, description="samples kept per group (RVEDiT App. D.1: 10,000 per category per dataset)")
    group_by: list[str] = Field(min_length=1, description="manifest columns whose values make a group")
    seed: int = Field(description="seed of the hash that ranks rows within a group")

    def process(self, row: Row) -> list[Row]:
        # The draw needs the whole group: made in finalize, once every fragment is written.
        return [self.enrich(row)]

    # ---- the global decision (driver) -------------------------------------------------------
    def rank_key(self, sample_id: str) -> str:
        return hashlib.sha1(f"{self.seed}\x00{sample_id}".encode()).hexdigest()

    def group_label(self, values: list[Any]) -> str:
        return " / ".join(NONE_LABEL if v is None else str(v) for v in values)

    def finalize(self, stage_dir: str) -> None:
        parts = layout.manifest_parts(stage_dir)
        self._check_columns(parts)
        groups: dict[str, list[tuple[str, str]]] = defaultdict(list)  # label -> (rank key, sample_id)
        for part in parts:
            table = storage.read_table(part, columns=["sample_id", "status", "reason", *self.group_by])
            columns = [table.column(c).to_pylist() for c in self.group_by]
            for i, (sid, status, reason) in enumerate(zip(*(table.column(c).to_pylist()
                                                            for c in ("sample_id", "status", "reason")))):
                if _is_candidate(status, reason):
                    groups[self.group_label([col[i] for col in columns])].append((self.rank_key(sid), sid))
        verdicts: dict[str, dict[str, Any]] = {}
        for label, members in groups.items():
            for rank, (_, sid) in enumerate(sorted(members)):
                kept = rank < self.per_group
                verdicts[sid] = {
                    "status": "ok" if kept else "dropped",
                    "reason": None if kept else f"{OVER_QUOTA}: rank {rank} of {len(members)} in group "
                                                f"{label!r} (keep {self.per_group})",
                    "stratify_group": label, "stratify_rank": rank, "stratify_group_size": len(members),
                }
        rewrite_parts(parts, verdicts, list(_VERDICT_COLUMNS))

    def _check_columns(self, parts: list[str]) -> None:
        """A group_by column the manifest lacks is a config error, not a group of nulls."""
        for part in parts:
            names = storage.read_schema(part).names
            missing = [c for c in self.group_by if c not in names]
            if missing:
                raise ValueError(f"stratify.group_by names {missing}, which the input manifest lacks; it has "
                                 f"{names}. Group on columns it has, e.g. stratify.group_by=[category,dataset]")

    # ---- what _run.json records ------------------------------------------------------------
    def run_extra(self, stage_dir: str) -> dict[str, Any]:
        """Rows seen and kept per group, so the auditors see which groups fell short of per_group."""
        seen: Counter[str] = Counter()
        kept: Counter[str] = Counter()
        for part in layout.manifest_parts(stage_dir):
            table = storage.read_table(part, columns=["stratify_group", "status"])
            for label, status in zip(table.column("stratify_group").to_pylist(), table.column("status").to_pylist()):
                if label is not None:
                    seen[label] += 1
                    kept[label] += status == "ok"
        return {"stratify": {"per_group": self.per_group, "group_by": list(self.group_by), "seed": self.seed,
                             "groups": {g: {"rows": seen[g], "kept": kept[g]} for g in sorted(seen)}}}

    @classmethod
    def result_notes(cls, extra: dict[str, Any]) -> list[str]:
        facts = extra.get("stratify") or {}
        groups = facts.get("groups") or {}
        short = sorted(g for g, n in groups.items() if n["kept"] < facts.get("per_group", 0))
        notes = [f"stratify: {len(groups)} groups by {', '.join(facts.get('group_by', []))}, "
                 f"kept {sum(n['kept'] for n in groups.values())} of {sum(n['rows'] for n in groups.values())}"]
        if short:
            notes.append(f"[yellow]groups with fewer than {facts['per_group']} rows (all kept):[/] {', '.join(short)}")
        return notes


def _is_candidate(status: str, reason: str | None) -> bool:
    """Rows the draw is about: kept ones, and ones an earlier draw dropped (recomputed each time)."""
    return status == "ok" or (status == "dropped" and (reason or "").startswith(f"{OVER_QUOTA}:"))
