"""The stage contract: a small pydantic class with a name, a version, declared resources, a
`setup()` that loads models once per worker, and a batch call: rows in, rows out.

A stage's fields are its config (defaults in `curation/config/stage/<name>.yaml`). Stages are
found by name through the `curate.stages` entry point group, so users can add their own. The
runner knows three shapes, told apart by base class, never by name: a map stage (`Stage`, reads a
manifest), a source stage (`SourceStage`, lists something that is not a manifest) and a sink
stage (`SinkStage`, writes outside the manifest flow, e.g. shards).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from curation.core import layout, media_store, storage
from curation.core.config_change import RUN_ONLY
from curation.core.estimate import SpendEstimate
from curation.core.media_store import MediaStore
from curation.core.schema import SampleRow, Status, arrow_schema, make_sample_id, merge_schemas, rows_to_table

Row = dict[str, Any]


class Resources(BaseModel):
    """What one worker of a stage asks Ray for. Fractional CPUs keep Ray Data's read and write
    tasks schedulable on small machines: an actor pool holding every CPU deadlocks them."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(0.5, gt=0, description="CPUs per worker (fractional ok)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per worker (fractional ok)")
    custom_resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources per worker, e.g. {gpu_node: 1}: the stage's workers "
        "run only on nodes started with them (`ray start --resources`), so GPU stages land on GPU worker groups")
    batch_size: int = Field(8, ge=1, description="rows per batch handed to the stage")
    concurrency: tuple[int, int | None] = Field(
        (1, 2), description="(min, max) workers in the actor pool; max null = as many as the cluster's CPUs, "
        "GPUs and custom resources hold (the runner sizes it when the stage starts)")
    calls_per_worker: int = Field(
        1, ge=1, description="batches one worker runs at once (threads); >1 only for thread-safe, I/O-bound "
        "stages such as API calls, so the next batch's requests start while the last ones drain")

    @model_validator(mode="after")
    def _check_concurrency(self) -> Resources:
        lo, hi = self.concurrency
        if not 1 <= lo <= (lo if hi is None else hi):
            raise ValueError(f"concurrency must be (min, max) with 1 <= min <= max, got {self.concurrency}")
        return self


class StageError(Exception):
    """A per-sample failure with a short, stable reason (e.g. `decode_failed: truncated`)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def failure_reason(e: Exception) -> str:
    """The reason recorded on a row that failed: a StageError's own, else the exception and where it was raised."""
    if isinstance(e, StageError):
        return e.reason
    where = traceback.extract_tb(e.__traceback__)[-1]
    return f"{type(e).__name__}: {e} ({where.name}:{where.lineno})"


class ModelRef(BaseModel):
    """A model a stage loads, as `_run.json` records it. Whether its weights are random is a fact
    carried beside the id, so nothing has to recognise it in a display string."""

    id: str = Field(description="hub id, local path, or backend:model@endpoint")
    random_weights: bool = Field(False, description="a tiny randomly initialised model (`models=tiny`): outputs are meaningless")

    @property
    def display(self) -> str:
        """How people read it: loud when the weights are random."""
        return f"{self.id} (RANDOM WEIGHTS)" if self.random_weights else self.id


class Threshold(BaseModel):
    """A cut this stage applies to a score, as `_run.json` records it for the auditors' report."""

    score: str = Field(description="a key of the `scores` map, or a manifest column when `column` is true")
    value: float
    setting: str = Field(description="the stage option that sets it, e.g. quality.luminance.min_luma")
    column: bool = Field(False, description="the score is a column of this stage's manifest, not a `scores` key")


class Stage(BaseModel):
    """Base class of map stages. Subclasses set `name`, `version`, `Columns` and implement
    `process` (one input row to its output rows) or `process_batch` (all of a batch's rows at
    once, for batched model calls). Either way a stage sees Python rows, never Arrow."""

    model_config = ConfigDict(extra="forbid")

    name: ClassVar[str]
    version: ClassVar[str]
    # Columns this stage adds to its input's columns ("added, never renamed").
    Columns: ClassVar[type[BaseModel]] = BaseModel
    # Media columns whose bytes this stage reads. Manifests hold references (`media_store`); only
    # these are read into the rows the stage sees, every other media column passes by reference.
    reads_media: ClassVar[tuple[str, ...]] = ()
    # Keys a release renamed or split: old key -> what to set instead. An old key in a config then
    # fails with that hint rather than a bare "unknown config key".
    renamed_keys: ClassVar[dict[str, str]] = {}

    resources: Resources = Field(default_factory=Resources, json_schema_extra=RUN_ONLY, description="Ray resources per worker")

    @model_validator(mode="before")
    @classmethod
    def _no_renamed_keys(cls, data: Any) -> Any:
        # A renamed key must not be guessed into its replacement: a split key (one cap become two)
        # has no single meaning, and silently changing what a config does loses a user's data.
        old = sorted(set(cls.renamed_keys) & set(data)) if isinstance(data, dict) else []
        if old:
            raise ValueError("; ".join(f"{cls.name}.{k} was renamed: set {cls.renamed_keys[k]}" for k in old))
        return data

    _ready: bool = PrivateAttr(default=False)
    _media: MediaStore | None = PrivateAttr(default=None)

    # ---- lifecycle -------------------------------------------------------------------------
    def setup(self) -> None:
        """Load models / open clients once per worker. Never in __init__, never per batch."""

    def ensure_setup(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True

    def bind_run(self, run_dir: str, stage_dir: str) -> None:
        """Where this run keeps its files: media references resolve against `run_dir`, and media
        this stage makes are stored once under `stage_dir`. The runner calls it on the driver;
        the store travels to the workers with the stage."""
        self._media = MediaStore(run_dir=run_dir, stage_dir=stage_dir)

    def outputs_outside(self, run_dir: str) -> list[str]:
        """Directories this stage writes outside its stage directory (e.g. the shards): a rerun
        that redoes the stage (`on_change=recompute`) moves them aside with it."""
        return []

    def on_driver_start(self) -> None:
        """Runs once on the driver before any worker starts: create services the workers share
        (e.g. a spend ledger). Whatever it stores in private attributes travels to workers."""

    def on_driver_end(self) -> None:
        """Runs once on the driver after the stage finished (or failed)."""

    def finalize(self, stage_dir: str) -> None:
        """Runs once on the driver after every fragment is written (also on a rerun that found
        them all complete): decisions that need every row at once, e.g. a per-category cap, may
        rewrite the parts here. Must be idempotent, since a run killed here redoes it."""

    # ---- input -----------------------------------------------------------------------------
    def input_fragments(self, input_uri: str | None, stage_dir: str) -> list[str]:
        """The files a run of this stage is split into (the unit of resume): the input manifest's parts."""
        if input_uri is None:
            raise ValueError(f"stage {self.name} reads a manifest: give input=<manifest dir>, or a run dir "
                             "(output=) that already holds an earlier stage")
        if not storage.exists(input_uri):
            raise ValueError(f"input {input_uri} does not exist")
        parts = layout.manifest_parts(input_uri)
        if not parts:
            raise ValueError(f"input {input_uri} holds no part-*.parquet manifest files")
        return parts

    # ---- work ------------------------------------------------------------------------------
    def process(self, row: Row) -> list[Row]:
        raise NotImplementedError(f"stage {self.name!r} implements neither process() nor process_batch()")

    def process_batch(self, rows: list[Row]) -> list[Row]:
        """Rows in, rows out. Default: `process` each row; a failure becomes that row's error row,
        never the batch's. Override to batch a model call over the rows."""
        out: list[Row] = []
        for row in rows:
            try:
                out.extend(self.process(row))
            except Exception as e:  # noqa: BLE001 - a bad sample must not stop the run
                out.append(self.error_row(row, failure_reason(e)))
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        """The runner's entry: Arrow in, Arrow out, with exactly this stage's output schema. The
        stage sees the bytes of the media it reads; its output holds references, new media being
        stored once. A stage called outside a run (a unit test, a notebook) has nowhere to store
        them, so its media columns stay bytes."""
        self.ensure_setup()
        rows = batch.to_pylist()
        schema = self.output_schema(batch.schema)
        if self._media is None:
            media_store.inline(rows, batch.schema, None)
            return rows_to_table(self.process_batch(rows), media_store.inlined_schema(schema))
        known = media_store.inline(rows, batch.schema, self._media.run_dir, self.reads_media)
        out = self.process_batch(rows)
        media_store.store(out, schema, self._media, known)
        return rows_to_table(out, schema)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        """Input columns plus the ones this stage adds; private (`_`) columns ride along for the runner."""
        return merge_schemas(arrow_schema(SampleRow), input_schema, arrow_schema(self.Columns))

    # ---- row helpers -----------------------------------------------------------------------
    def child_row(self, parent: Row, kind: str, span: object = None, **columns: Any) -> Row:
        """A new sample derived from `parent`: inherits its columns, gets a deterministic id."""
        row = dict(parent)
        row.update(
            sample_id=make_sample_id(kind, parent["source_uri"], span, parent["sample_id"]),
            parent_ids=[parent["sample_id"]],
            kind=kind,
            status="ok",
            reason=None,
            stage=self.name,
            stage_version=self.version,
        )
        row.update(columns)
        return row

    def enrich(self, row: Row, **columns: Any) -> Row:
        """The same sample (same id) with this stage's columns added: for stages that annotate
        or score a sample rather than derive new ones from it."""
        out = dict(row)
        out.update(status="ok", reason=None, stage=self.name, stage_version=self.version)
        out.update(columns)
        return out

    def error_row(self, row: Row, reason: str, status: Status = "error", **columns: Any) -> Row:
        """The input sample marked as failed (`error`: a rerun with retry_errors redoes it) or
        `dropped` at this stage, keeping its id, with whatever columns the stage did compute
        (scores, usage) so an auditor sees why."""
        out = dict(row)
        out.update(status=status, reason=reason, stage=self.name, stage_version=self.version)
        out.update(columns)
        return out

    # ---- what _run.json records ------------------------------------------------------------
    def models(self) -> dict[str, ModelRef]:
        """Models this stage loads, by role; none by default."""
        return {}

    def uses_gpu(self) -> bool:
        """Whether this stage, as configured, runs a model that a GPU speeds up. A GPU resource
        profile gives GPU shares only to such stages: an API-backed VLM stage or a CPU detector
        holding a GPU share would leave it idle."""
        return False

    def model_devices(self) -> dict[str, str]:
        """Where each loaded model ended up (role -> torch device), read on a worker after
        `setup()`: the runner warns when a model runs on the CPU while the cluster has GPUs."""
        return {}

    def thresholds(self) -> list[Threshold]:
        """The cuts this stage applies, so the report can draw them; none by default."""
        return []

    def run_extra(self, stage_dir: str) -> dict[str, Any]:
        """Stage-specific facts for `_run.json` computed from the finished manifest (e.g. API cost)."""
        return {}

    @classmethod
    def result_notes(cls, extra: dict[str, Any]) -> list[str]:
        """Lines (rich markup) the end-of-stage summary prints about this stage's `run_extra` facts."""
        return []

    def api_check(self) -> str | None:
        """For a stage that calls a remote API: ask its endpoint (key set, answers, serves the
        model) without spending anything, and say what it answered; raise StageError with what is wrong.
        None: the stage calls no API (`curate run --dry-run` prints "no API")."""
        return None

    def spend_estimate(self, stage_dir: str) -> SpendEstimate | None:
        """For a paid stage: what one input row costs (measured on its parts in `stage_dir`, else
        configured). None: the stage pays for nothing."""
        return None

    def required_modules(self) -> dict[str, str]:
        """Optional packages this stage, as configured, imports on its workers: top-level module
        -> how to get it (a pip command, or the switch that turns its use off). The runner finds
        each one on the driver, without importing it, before Ray starts. Packages that live only
        in another environment (a vLLM server's) are not listed."""
        return {}

    # ---- description -----------------------------------------------------------------------
    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


# --------------------------------------------------------------------------------------------
# Source stages: the first stage of a run reads something other than a manifest
# --------------------------------------------------------------------------------------------


class SourceStage(Stage):
    """A first stage that reads something other than a manifest: files, a dataset layout, a plan.
    It lists its input as source rows (`kind=source`), which are persisted as the stage's input
    fragments on the first run, so a resumed run sees exactly the same fragments; sources that
    appear later are appended as new fragments."""

    fragment_size: int = Field(gt=0, description="sources per input fragment (the unit of resume)")

    def list_sources(self, spec: str | None, listing_dir: str) -> pa.Table:
        """Source rows for the `input=` spec, sorted and without duplicate ids. `listing_dir` is
        where the listing is kept: a source may write facts about it there (e.g. rows skipped)."""
        raise NotImplementedError

    def check_input(self, spec: str | None) -> Any:
        """Check `input=` without listing anything (nothing asked, nothing written): the pre-flight
        calls it so a bad spec fails in one line before Ray starts. Raise ValueError naming the key
        or path; the default checks nothing beyond the runner's own existence check."""

    def input_fragments(self, input_uri: str | None, stage_dir: str) -> list[str]:
        listing_dir = layout.input_dir(stage_dir)
        return persist_fragments(self.list_sources(input_uri, listing_dir), listing_dir, self.fragment_size)


def persist_fragments(sources: pa.Table, listing_dir: str, fragment_size: int) -> list[str]:
    """Write new sources as `part-NNNNN.parquet` fragments; already-listed sources keep their fragment."""
    existing = layout.manifest_parts(listing_dir)
    known: set[str] = set()
    for uri in existing:
        known.update(storage.read_table(uri, columns=["sample_id"]).column("sample_id").to_pylist())
    mask = [sid not in known for sid in sources.column("sample_id").to_pylist()]
    fresh = sources.filter(pa.array(mask, pa.bool_()))
    next_index = len(existing)
    for start in range(0, fresh.num_rows, fragment_size):
        chunk = fresh.slice(start, fragment_size)
        storage.write_table_atomic(chunk, storage.join(listing_dir, f"{layout.PART_PREFIX}{next_index:05d}{layout.PART_SUFFIX}"))
        next_index += 1
    return layout.manifest_parts(listing_dir)


# --------------------------------------------------------------------------------------------
# Sink stages: the last stage writes outside the manifest flow
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SinkContext:
    """What a sink stage is handed: where to read and write, and the run's facts it records."""

    input_uri: str | None  # the manifest to consume
    stage_dir: str  # this stage's manifest directory
    run_dir: str
    config_hash: str  # of the run's resolved config (as `_run.json` records it)
    progress: bool  # show progress bars
    max_restarts: int  # times a crashed Ray task is retried


@dataclass
class SinkResult:
    processed: int  # input rows handled in this run
    skipped: int  # units of work found complete from an earlier run
    done: int  # units of work completed in this run
    extra: dict[str, Any] = field(default_factory=dict)  # goes into _run.json and the run summary


class SinkStage(Stage):
    """A stage that writes outside the manifest flow (e.g. WebDataset shards). The runner hands it
    a `SinkContext` instead of streaming batches through `process_batch`."""

    def run_sink(self, ctx: SinkContext) -> SinkResult:
        raise NotImplementedError


StageKind = Literal["source", "map", "sink"]


def stage_kind(cls: type[Stage]) -> StageKind:
    if issubclass(cls, SourceStage):
        return "source"
    return "sink" if issubclass(cls, SinkStage) else "map"


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@cache
def stage_names() -> tuple[str, ...]:
    """Names of the registered stages (the `curate.stages` entry points), without importing them:
    a plugin whose imports are broken must not break every other stage."""
    return tuple(sorted({ep.name for ep in entry_points(group="curate.stages")}))


@cache
def get_stage_class(name: str) -> type[Stage]:
    found = [ep for ep in entry_points(group="curate.stages") if ep.name == name]
    if not found:
        raise KeyError(f"unknown stage {name!r}; known stages: {', '.join(stage_names())}")
    cls = found[0].load()
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise TypeError(f"entry point {name} -> {found[0].value} is not a curation.core.stage.Stage")
    if cls.name != name:
        raise TypeError(f"entry point {name!r} loads stage class {cls.__name__} whose name is {cls.name!r}")
    return cls


def registry() -> dict[str, type[Stage]]:
    """Every stage class by name (imports them all; for listings and tests)."""
    return {name: get_stage_class(name) for name in stage_names()}
