"""A run directory as DuckDB sees it: one view per stage manifest, queried in place.

`curate report` and `curate browse` both read runs through this module, so a count means the same
thing on the page, in the report and in `curate status`. Nothing is imported or copied: every query
scans the stages' `part-*.parquet` files (DuckDB's own reader for local runs, a pyarrow dataset for
URIs), projecting only the columns it needs, so a 1M-row manifest answers a page in well under a
second. Names of stages, columns and score keys that reach SQL come from the run's own files, never
from a request; request values are always bound parameters.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from curation.core import layout, media_store, storage
from curation.core.summary import funnel

LISTING = layout.INPUT_DIR  # a source stage's listing (kind=source rows), the root of every lineage

# The columns every page of the browser needs; projected per stage so binary columns are never read.
_LIGHT_COLUMNS = ("stage", "position", "sample_id", "parent_ids", "kind", "source_uri", "status", "reason",
                  "reason_key", "category", "instruction", "scores", "duration_s", "part_file", "part_row")


@dataclass(frozen=True)
class StageManifest:
    """One manifest of a run: a stage output directory, or ingest's source listing."""

    label: str               # "03-filter_quality", or "01-ingest/_input" for the listing
    name: str                # the stage's name ("filter_quality"); "sources" for the listing
    position: int            # 0 for the listing, then the NN of the directory
    uri: str                 # the directory
    files: tuple[str, ...]   # its part-*.parquet files
    columns: frozenset[str]
    run: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)  # its _run.json ({} if unfinished)

    @property
    def view(self) -> str:
        """SQL identifier of its view (labels are directory names; this is a safe spelling)."""
        return "m_" + "".join(c if c.isalnum() else "_" for c in self.label)

    @property
    def is_listing(self) -> bool:
        return self.name == "sources"


class SampleFilter(BaseModel):
    """What the sample table shows. Every value is bound as a parameter, never spliced into SQL."""

    stage: str | None = Field(None, description="a stage label; None = every stage manifest")
    status: str | None = None
    reason: str | None = Field(None, description="reason key (the text before ':')")
    kind: str | None = None
    category: str | None = None
    text: str | None = Field(None, description="case-insensitive substring of the instruction(s)")
    score: str | None = Field(None, description="score name for the range below")
    score_min: float | None = None
    score_max: float | None = None


def _reason_key_sql() -> str:
    # Same grouping as curation.core.runinfo.reason_key: the stable prefix before ':'.
    return ("CASE WHEN status = 'ok' THEN NULL WHEN reason IS NULL OR trim(reason) = '' THEN 'unspecified' "
            "ELSE trim(split_part(reason, ':', 1)) END")


class RunCatalog:
    """The manifests of one run, with the queries the report and the browser make on them."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir.rstrip("/") if "://" in run_dir else os.path.abspath(run_dir)
        if not storage.exists(self.run_dir):
            raise FileNotFoundError(f"run directory {run_dir} does not exist")
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self._db = duckdb.connect()
        self._arrow: dict[str, ds.Dataset] = {}  # object-storage manifests, registered on every cursor
        self.stages: list[StageManifest] = []
        self.refresh()
        if not self.stages:
            raise FileNotFoundError(f"{run_dir} holds no stage manifests (NN-<stage>/part-*.parquet)")

    # ---------------------------------------------------------------------------------- discovery

    def _discover(self) -> list[StageManifest]:
        found: list[StageManifest] = []
        for position, d in enumerate(layout.stage_dirs(self.run_dir), start=1):
            uri = storage.join(self.run_dir, d)
            number, _, name = d.partition("-")
            listing = storage.join(uri, LISTING)
            listing_files = tuple(layout.manifest_parts(listing))
            if listing_files:
                found.append(StageManifest(f"{d}/{LISTING}", "sources", 0, listing, listing_files,
                                           self._columns(listing_files)))
            files = tuple(layout.manifest_parts(uri))
            if not files:
                continue
            run_json = layout.run_json(uri)
            run = storage.read_json(run_json) if storage.exists(run_json) else {}
            found.append(StageManifest(d, name or d, int(number) if number.isdigit() else position, uri, files,
                                       self._columns(files), run))
        return found

    @staticmethod
    def _columns(files: tuple[str, ...]) -> frozenset[str]:
        names: set[str] = set()
        for f in files[:1] + files[-1:]:  # fragments of one stage share a schema; look at both ends
            names.update(storage.read_schema(f).names)
        return frozenset(names)

    def refresh(self) -> bool:
        """Re-list the run (a run in progress grows); rebuild the views when files changed. True if they did."""
        with self._lock:
            stages = self._discover()
            signature = tuple((s.label, s.files, bool(s.run)) for s in stages)
            if signature == self._signature:
                return False
            for s in stages:
                self._db.execute(f"CREATE OR REPLACE VIEW {s.view} AS SELECT * FROM {self._source(s)}")
            self._db.execute(f"CREATE OR REPLACE VIEW light AS {self._light_sql(stages)}")
            self.stages, self._signature = stages, signature
            return True

    def _source(self, s: StageManifest) -> str:
        if "://" not in s.uri:
            files = ", ".join("'" + f.replace("'", "''") + "'" for f in s.files)
            return f"read_parquet([{files}], union_by_name = true, filename = true, file_row_number = true)"
        # Object storage: a pyarrow dataset over the run's own filesystem (credentials from the environment).
        fs, _ = storage.resolve(s.uri)
        dataset = ds.dataset([storage.resolve(f)[1] for f in s.files], filesystem=fs, format="parquet")
        # DuckDB cannot scan Arrow float16 (embeddings); no page queries them, and `row` reads rows without DuckDB.
        dataset = dataset.replace_schema(pa.schema([f for f in dataset.schema if "halffloat" not in str(f.type)]))
        name = f"arrow_{s.view}"
        self._db.register(name, dataset)
        self._arrow[name] = dataset
        # No filename/file_row_number from an Arrow scan: rows are fetched by sample_id instead.
        return f"(SELECT *, NULL::VARCHAR AS filename, NULL::BIGINT AS file_row_number FROM {name})"

    def stage(self, label: str) -> StageManifest | None:
        return next((s for s in self.stages if s.label == label), None)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of its own for the calling thread (one connection is not safe across threads)."""
        with self._lock:
            cursor = self._db.cursor()
            for name, dataset in self._arrow.items():  # a registered Arrow object is seen only by its own connection
                cursor.register(name, dataset)
            return cursor

    # ---------------------------------------------------------------------------------- light view

    @staticmethod
    def _light_select(s: StageManifest) -> str:
        cols = s.columns
        if "instruction" in cols:
            instruction = "CAST(instruction AS VARCHAR)"
        elif "turns" in cols:
            instruction = "array_to_string(list_transform(turns, lambda t: t.instruction), ' | ')"
        else:
            instruction = "NULL::VARCHAR"
        if {"start_s", "end_s"} <= cols:
            duration = "end_s - start_s"
        elif "duration_s" in cols:
            duration = "duration_s"
        else:
            duration = "NULL::DOUBLE"
        return (
            f"SELECT '{s.label}' AS stage, {s.position} AS position, sample_id, parent_ids, kind, source_uri, "
            f"status, reason, {_reason_key_sql()} AS reason_key, "
            f"{'CAST(category AS VARCHAR)' if 'category' in cols else 'NULL::VARCHAR'} AS category, "
            f"{instruction} AS instruction, "
            f"{'scores' if 'scores' in cols else 'NULL::MAP(VARCHAR, DOUBLE)'} AS scores, "
            f"CAST({duration} AS DOUBLE) AS duration_s, filename AS part_file, file_row_number AS part_row FROM {s.view}"
        )

    def _light_sql(self, stages: list[StageManifest]) -> str:
        return " UNION ALL ".join(self._light_select(s) for s in stages)

    def _light_for(self, stage: str | None) -> str:
        """The light rows of one stage (only its branch is scanned) or of every manifest."""
        if stage is None:
            return "light"
        s = self.stage(stage)
        if s is None:
            raise KeyError(stage)
        return f"({self._light_select(s)})"

    # ---------------------------------------------------------------------------------- counts

    def outcome_counts(self) -> dict[str, dict[str, Any]]:
        """Per stage label: {total, ok, dropped: {reason: n}, error: {reason: n}, by_kind: {kind: n ok}},
        the shape of `curation.core.runinfo.count_outcomes`, in one scan of every manifest."""
        rows = self.cursor().execute(
            "SELECT stage, status, reason_key, kind, count(*) FROM light GROUP BY ALL").fetchall()
        counts: dict[str, dict[str, Any]] = {
            s.label: {"total": 0, "ok": 0, "dropped": Counter(), "error": Counter(), "by_kind": Counter()}
            for s in self.stages}
        for stage, status, reason, kind, n in rows:
            c = counts[stage]
            c["total"] += n
            if status == "ok":
                c["ok"] += n
                c["by_kind"][kind] += n
            elif status in ("dropped", "error"):
                c[status][reason] += n
        return {label: {k: dict(sorted(v.items())) if isinstance(v, Counter) else v for k, v in c.items()}
                for label, c in counts.items()}

    def funnel(self) -> list[dict[str, Any]]:
        """`curation.core.summary.funnel` over the stage manifests (the source listing is not a stage)."""
        counts = self.outcome_counts()
        rows = funnel([(s.name, counts[s.label]) for s in self.stages if not s.is_listing])
        for row, s in zip(rows, [s for s in self.stages if not s.is_listing]):
            row["label"] = s.label
            row["kinds"] = counts[s.label]["by_kind"]
        return rows

    def score_keys(self) -> dict[str, str]:
        """Score name -> the first stage label whose manifest has it (where it was written)."""
        keys: dict[str, str] = {}
        for s in self.stages:
            if "scores" not in s.columns:
                continue
            found = self.cursor().execute(
                f"SELECT DISTINCT unnest(map_keys(scores)) FROM {s.view} WHERE scores IS NOT NULL").fetchall()
            for (key,) in sorted(found):
                keys.setdefault(key, s.label)
        return keys

    def distinct(self, column: str, stage: str | None = None) -> list[str]:
        """Distinct non-null values of a light column (for filter menus)."""
        if column not in ("status", "reason_key", "kind", "category"):
            raise ValueError(column)
        rows = self.cursor().execute(
            f"SELECT DISTINCT {column} FROM {self._light_for(stage)} WHERE {column} IS NOT NULL ORDER BY 1").fetchall()
        return [r[0] for r in rows]

    # ---------------------------------------------------------------------------------- pages

    def _where(self, f: SampleFilter) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for column in ("status", "kind", "category"):
            value = getattr(f, column)
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if f.reason:
            clauses.append("reason_key = ?")
            params.append(f.reason)
        if f.text:
            clauses.append("instruction ILIKE ? ESCAPE '\\'")
            escaped = f.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            params.append(f"%{escaped}%")
        if f.score and (f.score_min is not None or f.score_max is not None):
            clauses.append("element_at(scores, ?)[1] IS NOT NULL")
            params.append(f.score)
            if f.score_min is not None:
                clauses.append("element_at(scores, ?)[1] >= ?")
                params += [f.score, f.score_min]
            if f.score_max is not None:
                clauses.append("element_at(scores, ?)[1] <= ?")
                params += [f.score, f.score_max]
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def page(self, f: SampleFilter, page: int = 0, per_page: int = 50) -> tuple[int, list[dict[str, Any]]]:
        """(rows matching, one page of light rows in manifest order).

        The filter runs once over narrow keys (stage position, file, row); only the page's rows are
        read whole. Reading every projected column (scores maps, file names) before a text filter
        discards most rows cost 2.4x at 1M rows (bench/browse.py).
        """
        source = self._light_for(f.stage)
        where, params = self._where(f)
        columns = "stage, sample_id, kind, status, reason, category, instruction, scores, duration_s"
        cur = self.cursor()
        if any("://" in s.uri for s in self.stages):  # Arrow scans have no file/row keys: one plain query
            total = cur.execute(f"SELECT count(*) FROM {source}{where}", params).fetchone()[0]
            cur.execute(f"SELECT {columns} FROM {source}{where} ORDER BY position, sample_id LIMIT ? OFFSET ?",
                        [*params, per_page, page * per_page])
        else:
            cur.execute(f"CREATE OR REPLACE TEMP TABLE hits AS SELECT position, part_file, part_row FROM {source}{where}",
                        params)
            total = cur.execute("SELECT count(*) FROM hits").fetchone()[0]
            cur.execute(
                f"WITH k AS (SELECT * FROM hits ORDER BY position, part_file, part_row LIMIT ? OFFSET ?) "
                f"SELECT {columns} FROM {source} JOIN k USING (position, part_file, part_row) "
                f"ORDER BY position, part_file, part_row", [per_page, page * per_page])
        names = [d[0] for d in cur.description]
        return total, [dict(zip(names, r)) for r in cur.fetchall()]

    # ---------------------------------------------------------------------------------- samples

    def locate(self, sample_ids: list[str]) -> list[dict[str, Any]]:
        """Every manifest row of these samples (light columns), oldest stage first."""
        if not sample_ids:
            return []
        cur = self.cursor()
        cur.execute("SELECT stage, position, sample_id, parent_ids, kind, source_uri, status, reason, part_file, part_row "
                    "FROM light WHERE sample_id IN (SELECT unnest(?)) ORDER BY position, stage", [sample_ids])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def row(self, stage: str, sample_id: str, hit: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The full row of a sample in one stage manifest, its media read from the files its
        references name. `hit`: its `locate` result when the caller has it (saves a scan)."""
        s = self.stage(stage)
        if s is None:
            return None
        if hit is None or hit.get("stage") != stage or hit.get("sample_id") != sample_id:
            hits = [h for h in self.locate([sample_id]) if h["stage"] == stage]
            if not hits:
                return None
            hit = hits[-1]
        if hit["part_file"] is not None:
            table = _read_row(hit["part_file"], hit["part_row"])
        else:
            fs, _ = storage.resolve(s.uri)
            table = ds.dataset([storage.resolve(f)[1] for f in s.files], filesystem=fs, format="parquet").to_table(
                filter=ds.field("sample_id") == sample_id)
            if not table.num_rows:
                return None
            table = table.slice(table.num_rows - 1)
        return media_store.inlined_rows(table, self.run_dir)[0]

    def run_record(self, stage: str) -> dict[str, Any]:
        s = self.stage(stage)
        return dict(s.run) if s else {}


def _read_row(path: str, row: int) -> pa.Table:
    """One row of a local Parquet file (as a table), reading only the row group that holds it."""
    reader = pq.ParquetFile(path)
    start = 0
    for group in range(reader.metadata.num_row_groups):
        rows = reader.metadata.row_group(group).num_rows
        if row < start + rows:
            table: pa.Table = reader.read_row_group(group)
            return table.slice(row - start, 1)
        start += rows
    raise IndexError(f"{path} has no row {row}")
