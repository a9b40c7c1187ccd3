"""`curate run --dry-run`: what a run would do and spend, found without running it.

Per stage: the fragments it would run and those it would skip (finished parts), the rows that
reach it where they are known, whether its API answers (key variable set, endpoint up, model
served: asked without generating anything), and requests, tokens and dollars estimated from the
stage's measured or configured use per row. Also finished parts made with another config, and
the run's budget against what it spent so far. Ray is not started and nothing is written.

Rows are exact where the stage before has finished every fragment; projected from the finished
ones where it has some; unknown before it ran at all (a video's clip count is not known before
scene_split sees it), in which case the cost is given per 1,000 rows.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field

import pyarrow.compute as pc
from omegaconf import DictConfig
from rich.markup import escape
from rich.table import Table

from curation.core import config_change, layout, storage
from curation.core.estimate import SpendEstimate
from curation.core.runinfo import run_spend
from curation.core.runner import planned_stage_dirs, preflight, run_dir_of
from curation.core.stage import SinkStage, SourceStage, Stage, StageError

PER_ROWS = 1000  # the cost of an unknown number of rows is shown per this many


@dataclass
class StagePlan:
    name: str
    stage_dir: str
    fragments: int | None  # None: decided when the stage runs (a sink plans over the finished manifest)
    finished: int  # parts already written (skipped)
    rows_in: float | None  # None: unknown before the stage before it has run
    rows_exact: bool
    api: str  # what its endpoint answered, or "no API"
    api_ok: bool = True
    estimate: SpendEstimate | None = None

    @property
    def to_run(self) -> int | None:
        return None if self.fragments is None else self.fragments - self.finished


@dataclass
class DryRun:
    run_dir: str
    stages: list[StagePlan]
    changes: list[config_change.ConfigChange]
    on_change: str
    spent_usd: float
    max_usd: float | None
    problems: list[str] = field(default_factory=list)  # what would make the run fail

    def total_usd(self) -> float | None:
        """Dollars of the stages whose rows are known and priced (None: none of them is)."""
        known = [p.estimate.usd(_remaining_rows(p)) for p in self.stages if p.estimate and p.rows_in is not None]
        priced = [u for u in known if u is not None]
        return sum(priced) if priced else None


def plan(cfg: DictConfig) -> DryRun:
    """The dry run of `cfg`. Raises ValueError, as a run would, for what preflight refuses."""
    stages = preflight(cfg, changes_allowed=True)
    dirs = planned_stage_dirs(cfg)
    names, rows, first_input = _fragments_and_rows(cfg, stages[0], dirs[0])
    inputs = [first_input, *dirs[:-1]]
    plans: list[StagePlan] = []
    exact = True
    for i, (stage, stage_dir) in enumerate(zip(stages, dirs)):
        if i > 0:
            rows, exact = _rows_after(dirs[i - 1], inputs[i - 1], names, rows, exact)
        finished = len(layout.manifest_parts(stage_dir))
        if isinstance(stage, SinkStage):
            item = StagePlan(stage.name, stage_dir, None, finished, rows, exact, "no API")
        else:
            done = sum(storage.exists(storage.join(stage_dir, name)) for name in names)
            item = StagePlan(stage.name, stage_dir, len(names), done, rows, exact, "no API")
        _check_api(stage, item)
        item.estimate = stage.spend_estimate(stage_dir)
        plans.append(item)
    changes = config_change.find_changes(stages, dirs)
    spend = run_spend(run_dir_of(cfg)) or {}
    result = DryRun(run_dir_of(cfg), plans, changes, cfg.on_change, float(spend.get("spent_usd", 0.0)), cfg.budget.max_usd)
    result.problems += [f"stage {p.name}: {p.api.removeprefix('FAILED: ')}" for p in plans if not p.api_ok]
    if changes and cfg.on_change == "stop":
        result.problems.append(config_change.refusal(changes, result.run_dir))
    return result


def _check_api(stage: Stage, item: StagePlan) -> None:
    try:
        said = stage.api_check()
    except StageError as e:
        item.api, item.api_ok = f"FAILED: {e.reason}", False
        return
    if said is not None:
        item.api = f"ok: {said}"


def _fragments_and_rows(cfg: DictConfig, first: Stage, stage_dir: str) -> tuple[list[str], float, str]:
    """The run's fragment names (a part name is the same at every stage), the first stage's rows,
    and the directory its fragments are read from."""
    if isinstance(first, SourceStage):
        listing_dir = layout.input_dir(stage_dir)
        listed = layout.manifest_parts(listing_dir)
        known: set[str] = set()
        for part in listed:
            known.update(storage.read_table(part, columns=["sample_id"]).column("sample_id").to_pylist())
        spec = cfg.input if cfg.input is None or "://" in cfg.input else _abspath(cfg.input)
        with tempfile.TemporaryDirectory() as scratch:  # a source may note facts beside its listing
            sources = first.list_sources(spec, scratch)
        new = sum(sid not in known for sid in sources.column("sample_id").to_pylist())
        fresh = [f"{layout.PART_PREFIX}{len(listed) + k:05d}{layout.PART_SUFFIX}" for k in range(math.ceil(new / first.fragment_size))]
        return [p.rsplit("/", 1)[1] for p in listed] + fresh, float(len(known) + new), listing_dir
    input_uri = cfg.input or layout.default_input(run_dir_of(cfg), first.name)
    input_uri = input_uri if "://" in input_uri else _abspath(input_uri)
    parts = layout.manifest_parts(input_uri)
    return [p.rsplit("/", 1)[1] for p in parts], float(sum(_ok_rows(p) for p in parts)), input_uri


def _rows_after(previous_dir: str, previous_input: str, names: list[str], rows_before: float | None,
                exact: bool) -> tuple[float | None, bool]:
    """Rows the stage after `previous_dir` gets: the ok rows of its parts when all are written,
    else its finished fragments' ratio of ok rows out to rows in, applied to the rows it gets."""
    written = [n for n in names if storage.exists(storage.join(previous_dir, n))]
    if names and len(written) == len(names):
        return float(sum(_ok_rows(storage.join(previous_dir, n)) for n in written)), exact
    if not written or rows_before is None:
        return None, False
    out = sum(_ok_rows(storage.join(previous_dir, n)) for n in written)
    into = sum(_ok_rows(storage.join(previous_input, n)) for n in written)
    return (rows_before * out / into if into else None), False


def _ok_rows(part: str) -> int:
    status = storage.read_table(part, columns=["status"]).column("status")
    return int(pc.sum(pc.equal(status, "ok")).as_py() or 0)


def _abspath(path: str) -> str:
    import os

    return os.path.abspath(path)


def _remaining_rows(item: StagePlan) -> float:
    """Rows still to process: the finished fragments' share is left out."""
    if item.rows_in is None:
        return 0.0
    if not item.fragments:
        return item.rows_in
    return item.rows_in * (item.fragments - item.finished) / item.fragments


# ---- what it prints ---------------------------------------------------------------------------


def _count(value: float | None, exact: bool = True) -> str:
    if value is None:
        return "?"
    return f"{value:,.0f}" if exact else f"~{value:,.0f}"


def render(result: DryRun) -> tuple[Table, list[str]]:
    """The per-stage table and the lines under it."""
    table = Table(title=f"dry run: {result.run_dir} (nothing run, nothing written)", title_justify="left")
    for column in ("stage", "fragments to run", "already done", "rows in", "API", "requests", "tokens", "est. cost"):
        table.add_column(column, overflow="fold")
    lines = []
    for item in result.stages:
        requests = tokens = cost = ""
        if item.estimate is not None:
            rows = _remaining_rows(item) if item.rows_in is not None else PER_ROWS
            per = "" if item.rows_in is not None else f" per {PER_ROWS:,} rows"
            exact = item.rows_exact or item.rows_in is None  # per 1,000 rows is exact arithmetic
            requests = _count(item.estimate.requests(rows), exact) + per
            tokens = _count(item.estimate.tokens(rows), exact)
            usd = item.estimate.usd(rows)
            cost = "unpriced" if usd is None else f"${usd:,.4f}{per}"
            source = (f"measured on {item.estimate.measured_rows:,} rows" if item.estimate.source == "measured"
                      else f"configured ({item.name}.expected)")
            lines.append(f"{item.name}: {item.estimate.requests_per_row:g} requests per row, "
                         f"{item.estimate.prompt_tokens:,.0f}+{item.estimate.completion_tokens:,.0f} tokens per request, {source}")
        table.add_row(item.name, "planned when it runs" if item.fragments is None else str(item.to_run), str(item.finished),
                      _count(item.rows_in, item.rows_exact), escape(item.api), requests, tokens, cost)
    total = result.total_usd()
    budget = f"budget.max_usd ${result.max_usd:,.2f}" if result.max_usd is not None else "no budget.max_usd"
    lines.append(f"spent so far ${result.spent_usd:,.4f}; {budget}"
                 + (f"; estimated for the known rows ${total:,.4f}" if total is not None else ""))
    if total is not None and result.max_usd is not None and result.spent_usd + total > result.max_usd:
        lines.append(f"the estimate exceeds what is left of the budget (${result.max_usd - result.spent_usd:,.4f}): "
                     "the run will stop sending requests there, leaving those rows as budget_exhausted errors")
    for change in result.changes:
        action = {"stop": "the run would stop", "recompute": "on_change=recompute would redo it and every later stage",
                  "keep": "on_change=keep keeps those parts"}[result.on_change]
        lines.append(f"{change.describe()}: {action}")
    return table, lines
