"""The stage contract: a small pydantic class with a name, a version, declared resources, a
`setup()` that loads models once per worker, and a vectorised batch call.

A stage's fields are its config (defaults in `curation/config/stage/<name>.yaml`). Stages are
found by name through the `curate.stages` entry point group, so users can add their own.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from curation.manifest import SampleRow, arrow_schema, make_sample_id, merge_schemas, rows_to_table


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
    concurrency: tuple[int, int] = Field((1, 2), description="(min, max) workers in the actor pool")
    calls_per_worker: int = Field(
        1, ge=1, description="batches one worker runs at once (threads); >1 only for thread-safe, I/O-bound "
        "stages such as API calls, so the next batch's requests start while the last ones drain")

    @model_validator(mode="after")
    def _check_concurrency(self) -> "Resources":
        lo, hi = self.concurrency
        if not 1 <= lo <= hi:
            raise ValueError(f"concurrency must be (min, max) with 1 <= min <= max, got {self.concurrency}")
        return self


def failure_reason(e: Exception) -> str:
    """The reason recorded on a row that failed: a StageError's own, else the exception and where it was raised."""
    if isinstance(e, StageError):
        return e.reason
    where = traceback.extract_tb(e.__traceback__)[-1]
    return f"{type(e).__name__}: {e} ({where.name}:{where.lineno})"


class StageError(Exception):
    """A per-sample failure with a short, stable reason (e.g. `decode_failed: truncated`)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Stage(BaseModel):
    """Base class. Subclasses set `name`, `version`, `Columns` and implement `process` (one input
    row to its output rows) or override `__call__` for truly vectorised work."""

    model_config = ConfigDict(extra="forbid")

    name: ClassVar[str]
    version: ClassVar[str]
    # Columns this stage adds to its input's columns ("added, never renamed").
    Columns: ClassVar[type[BaseModel]] = BaseModel

    resources: Resources = Field(default_factory=Resources, description="Ray resources per worker")

    _ready: bool = PrivateAttr(default=False)

    # ---- lifecycle -------------------------------------------------------------------------
    def setup(self) -> None:
        """Load models / open clients once per worker. Never in __init__, never per batch."""

    def ensure_setup(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True

    def on_driver_start(self) -> None:
        """Runs once on the driver before any worker starts: create services the workers share
        (e.g. the VLM budget ledger). Whatever it stores in private attributes travels to workers."""

    def on_driver_end(self) -> None:
        """Runs once on the driver after the stage finished (or failed)."""

    def finalize(self, stage_dir: str) -> None:
        """Runs once on the driver after every fragment is written (also on a rerun that found
        them all complete): decisions that need every row at once, e.g. a per-category cap, may
        rewrite the parts here. Must be idempotent, since a run killed here redoes it."""

    def run_extra(self, stage_dir: str) -> dict[str, Any]:
        """Stage-specific facts for `_run.json` computed from the finished manifest (e.g. API cost)."""
        return {}

    # ---- work ------------------------------------------------------------------------------
    def process(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError(f"stage {self.name!r} implements neither process() nor __call__()")

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Default: `process` each row; a failure becomes that row's `status=error`, never the batch's."""
        out: list[dict[str, Any]] = []
        for row in batch.to_pylist():
            try:
                out.extend(self.process(row))
            except Exception as e:  # noqa: BLE001 - a bad sample must not stop the run
                out.append(self.error_row(row, failure_reason(e)))
        return rows_to_table(out, self.output_schema(batch.schema))

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        """Input columns plus the ones this stage adds; private (`_`) columns ride along for the runner."""
        return merge_schemas(arrow_schema(SampleRow), input_schema, arrow_schema(self.Columns))

    # ---- row helpers -----------------------------------------------------------------------
    def child_row(self, parent: dict[str, Any], kind: str, span: object = None, **columns: Any) -> dict[str, Any]:
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

    def enrich(self, row: dict[str, Any], **columns: Any) -> dict[str, Any]:
        """The same sample (same id) with this stage's columns added: for stages that annotate
        or score a sample rather than derive new ones from it."""
        out = dict(row)
        out.update(status="ok", reason=None, stage=self.name, stage_version=self.version)
        out.update(columns)
        return out

    def error_row(self, row: dict[str, Any], reason: str, status: str = "error") -> dict[str, Any]:
        """The input sample, marked as failed (or dropped) at this stage, keeping its id."""
        out = dict(row)
        out.update(status=status, reason=reason, stage=self.name, stage_version=self.version)
        return out

    def model_ids(self) -> dict[str, str]:
        """Model ids or paths this stage loads (recorded in `_run.json`); none by default."""
        return {}

    # ---- description -----------------------------------------------------------------------
    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""



@dataclass
class SinkResult:
    processed: int  # input rows handled in this run
    skipped: int  # units of work found complete from an earlier run
    done: int  # units of work completed in this run
    extra: dict[str, Any] = field(default_factory=dict)  # goes into _run.json and the run summary


class SinkStage(Stage):
    """A stage that writes outside the manifest flow (e.g. WebDataset shards). The runner hands it
    the whole input and the output directory instead of streaming batches through `__call__`."""

    def run_sink(self, input_dir: str, stage_dir: str, cfg: Any) -> SinkResult:
        raise NotImplementedError


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
        raise TypeError(f"entry point {name} -> {found[0].value} is not a curation.stage.Stage")
    if cls.name != name:
        raise TypeError(f"entry point {name!r} loads stage class {cls.__name__} whose name is {cls.name!r}")
    return cls


def registry() -> dict[str, type[Stage]]:
    """Every stage class by name (imports them all; for listings and tests)."""
    return {name: get_stage_class(name) for name in stage_names()}
