"""Run stages on Ray Data, one output fragment per input fragment, resumably.

Flow for a map stage:
  input fragments (part-*.parquet) --read task--> rows tagged (_frag, _row)
      --map_batches(actor pool running the stage)--> output rows tagged the same
      --driver--> per-fragment buffers; a fragment whose every input row has come back is sorted
                  and written atomically as <stage_dir>/part-<same name>.parquet.
A rerun skips fragments whose output file exists, so a killed run resumes where it stopped and,
because sample ids are deterministic, never duplicates a sample.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from omegaconf import DictConfig

from curation.core import layout, storage
from curation.core.config import build_stage
from curation.core.ray_env import init_ray
from curation.core.runinfo import RunRecord, count_outcomes
from curation.core.schema import PRIVATE_PREFIX, public_schema, rows_to_table
from curation.core.stage import Resources, SinkContext, SinkStage, Stage, get_stage_class, stage_kind
from curation.core.summary import console, funnel, funnel_table, print_stage_summary

log = logging.getLogger(__name__)
FRAG, ROW, SEQ, NODE = "_frag", "_row", "_seq", "_node"
MAX_WORKER_RESTARTS = 3
READ_TASK_CPUS = 0.25  # each fragment-reading task; actor pools must leave at least this much free


@dataclass
class Fragment:
    """One unit of resumable work: an input file and the output file it maps to."""

    index: int
    input_uri: str
    output_uri: str
    only_ids: list[str] | None = None  # retry_errors: reprocess just these input rows
    expected: int = 0  # input rows to process (status=ok, or the retried ones)


@dataclass
class StageResult:
    name: str
    stage_dir: str
    counts: dict[str, Any]
    processed: int
    wall_s: float
    skipped_fragments: int
    done_fragments: int
    extra: dict[str, Any] = field(default_factory=dict)
    random_weights: list[str] = field(default_factory=list)  # models of this stage with random weights
    notes: list[str] = field(default_factory=list)  # the stage's own summary lines about `extra`


# --------------------------------------------------------------------------------------------
# Ray side: read a fragment, run the stage
# --------------------------------------------------------------------------------------------


def _read_fragments(batch: pa.Table, fragments: list[Fragment]) -> pa.Table:
    """Ray task: load the rows of the fragments named in `batch` that the stage must process."""
    tables = []
    for index in batch.column("index").to_pylist():
        frag = fragments[index]
        table = storage.read_table(frag.input_uri)
        if frag.only_ids is not None:
            mask = pc.is_in(table.column("sample_id"), value_set=pa.array(frag.only_ids, pa.string()))
        else:
            mask = pc.equal(table.column("status"), "ok")
        table = table.filter(mask)
        table = table.append_column(FRAG, pa.array([index] * table.num_rows, pa.int32()))
        table = table.append_column(ROW, pa.array(range(table.num_rows), pa.int32()))
        tables.append(table)
    return pa.concat_tables(tables, promote_options="permissive")


class StageWorker:
    """Ray actor: holds one stage instance whose models were loaded once by `setup()`."""

    def __init__(self, stage: Stage):
        import ray

        self.stage = stage
        self.stage.ensure_setup()
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = run_batch(self.stage, batch)
        # Which Ray node made each row: `_run.json` records it (where did a stage really run?).
        return out.append_column(NODE, pa.array([self.node_id] * out.num_rows, pa.string()))


def run_batch(stage: Stage, batch: pa.Table) -> pa.Table:
    """Apply the stage to each fragment's rows in `batch` and tag outputs with their input row.

    Every input row must come back at least once (dropped rows stay in the manifest); a stage that
    returns nothing for a row gets a `dropped` row with reason `no_output`, so no sample vanishes.
    """
    outputs = []
    for frag in pc.unique(batch.column(FRAG)).to_pylist():
        rows = batch.filter(pc.equal(batch.column(FRAG), frag))
        inputs = rows.drop_columns([c for c in rows.column_names if c.startswith(PRIVATE_PREFIX)])
        row_of = dict(zip(rows.column("sample_id").to_pylist(), rows.column(ROW).to_pylist()))
        out = stage(inputs)
        # Only the id columns are read back: rows may carry megabytes of frames.
        positions = []
        for sample_id, parents in zip(out.column("sample_id").to_pylist(), out.column("parent_ids").to_pylist()):
            pos = row_of.get(sample_id)
            if pos is None and parents:
                pos = row_of.get(parents[0])
            positions.append(-1 if pos is None else pos)
        missing = set(row_of.values()) - set(positions)
        if missing:
            lost = [
                stage.error_row(r, "no_output: the stage returned no row for this sample", "dropped")
                for r in inputs.to_pylist()
                if row_of[r["sample_id"]] in missing
            ]
            out = pa.concat_tables([out, rows_to_table(lost, out.schema)])
            positions += [row_of[r["sample_id"]] for r in lost]
        if -1 in positions:
            raise RuntimeError(f"stage {stage.name} produced rows whose sample_id/parent_ids match no input row")
        out = out.append_column(FRAG, pa.array([frag] * out.num_rows, pa.int32()))
        out = out.append_column(ROW, pa.array(positions, pa.int32()))
        out = out.append_column(SEQ, pa.array(range(out.num_rows), pa.int32()))
        outputs.append(out)
    return pa.concat_tables(outputs, promote_options="permissive")


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def plan_fragments(input_uris: list[str], stage_dir: str, retry_errors: bool) -> tuple[list[Fragment], int]:
    """Fragments still to do, and how many were already complete (and skipped)."""
    todo: list[Fragment] = []
    skipped = 0
    for uri in input_uris:
        name = uri.rsplit("/", 1)[1]
        out_uri = storage.join(stage_dir, name)
        frag = Fragment(index=len(todo), input_uri=uri, output_uri=out_uri)
        if storage.exists(out_uri):
            if not retry_errors:
                skipped += 1
                continue
            done = storage.read_table(out_uri, columns=["sample_id", "status"])
            errored = done.filter(pc.equal(done.column("status"), "error")).column("sample_id").to_pylist()
            if not errored:
                skipped += 1
                continue
            frag.only_ids = sorted(set(errored))
            frag.expected = len(frag.only_ids)
        else:
            status = storage.read_table(uri, columns=["status"]).column("status")
            frag.expected = pc.sum(pc.equal(status, "ok")).as_py() or 0
        todo.append(frag)
    return todo, skipped


def _finish_fragment(frag: Fragment, parts: list[pa.Table], stage: Stage) -> None:
    """Sort a complete fragment into input order and write it atomically (merging retried rows)."""
    if parts:
        table = pa.concat_tables(parts, promote_options="permissive").sort_by([(ROW, "ascending"), (SEQ, "ascending")])
        table = table.drop_columns([c for c in table.column_names if c.startswith(PRIVATE_PREFIX)])
    else:
        input_schema = public_schema(storage.read_schema(frag.input_uri))
        table = stage.output_schema(input_schema).empty_table()
    if frag.only_ids is not None:
        # retry_errors: keep the earlier rows except the retried samples' error rows, then add the new rows.
        previous = storage.read_table(frag.output_uri)
        retried = pa.array(frag.only_ids, pa.string())
        keep = pc.invert(
            pc.and_(pc.is_in(previous.column("sample_id"), value_set=retried), pc.equal(previous.column("status"), "error"))
        )
        table = pa.concat_tables([previous.filter(keep), table], promote_options="permissive")
    storage.write_table_atomic(table, frag.output_uri)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", disable=not enabled, dynamic_ncols=True)


def fit_to_cluster(name: str, res: Resources, cluster_cpus: float | None = None) -> Resources:
    """Shrink the actor pool so it never holds every CPU: Ray Data's read tasks would then never
    be scheduled and the job would hang (seen on 2-core machines). Warns when it changes anything."""
    import ray

    total = cluster_cpus if cluster_cpus is not None else ray.cluster_resources().get("CPU", 0.0)
    spare = total - READ_TASK_CPUS
    if res.num_cpus > spare:
        raise ValueError(f"stage {name}: one worker asks for num_cpus={res.num_cpus} but the cluster has {total:g} "
                         f"CPUs and reading input needs {READ_TASK_CPUS}; lower {name}.resources.num_cpus")
    fit = int(spare // res.num_cpus)
    if cluster_cpus is None:
        for resource, amount in dict(res.custom_resources, **({"GPU": res.num_gpus} if res.num_gpus else {})).items():
            # Not an error: an autoscaling cluster adds such nodes when the workers ask for them.
            if ray.cluster_resources().get(resource, 0.0) < amount:
                log.warning("stage %s: its workers need %s=%g and no node has that now; they wait for one "
                            "(an autoscaler's worker group, or `ray start --resources`)", name, resource, amount)
    if fit >= res.concurrency[1]:
        return res
    lo, hi = min(res.concurrency[0], fit), fit
    log.warning("stage %s: %d workers x %g CPUs would hold all %g CPUs; using at most %d so input can be read",
                name, res.concurrency[1], res.num_cpus, total, hi)
    return res.model_copy(update={"concurrency": (lo, hi)})


def run_map_stage(stage: Stage, fragments: list[Fragment], progress: bool, nodes: Counter | None = None) -> int:
    """Stream all fragments through the stage's actor pool; returns input rows processed.
    `nodes` (if given) counts the output rows each Ray node's workers returned."""
    import ray.data

    if not fragments:
        return 0
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours (per sample) is the one users read
    ctx.verbose_stats_logs = False
    # Ray Data announces every execution at INFO (and resets its logger when first imported).
    logging.getLogger("ray.data").setLevel(logging.WARNING)

    res = fit_to_cluster(stage.name, stage.resources)
    index_ds = ray.data.from_items([{"index": f.index} for f in fragments], override_num_blocks=len(fragments))
    rows_ds = index_ds.map_batches(
        _read_fragments, fn_kwargs={"fragments": fragments}, batch_size=1, batch_format="pyarrow", num_cpus=READ_TASK_CPUS
    )
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing actor options as **kwargs but has no named parameter for
        # these yet; its default (-1) would retry a sample that crashes its worker forever.
        warnings.simplefilter("ignore", DeprecationWarning)
        out_ds = rows_ds.map_batches(
            StageWorker,
            fn_constructor_kwargs={"stage": stage},
            compute=ray.data.ActorPoolStrategy(
                min_size=res.concurrency[0],
                max_size=res.concurrency[1],
                max_concurrent_calls_per_actor=res.calls_per_worker if res.calls_per_worker > 1 else None,
                enable_true_multi_threading=res.calls_per_worker > 1,  # else Ray runs the calls one at a time
            ),
            batch_size=res.batch_size,
            batch_format="pyarrow",
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus or None,
            resources=res.custom_resources or None,
            max_restarts=MAX_WORKER_RESTARTS,  # a crashed worker is restarted and its batch retried
            max_task_retries=MAX_WORKER_RESTARTS,
        )

    buffers: dict[int, list[pa.Table]] = defaultdict(list)
    seen: dict[int, set[int]] = defaultdict(set)
    processed = 0
    pending = {f.index: f for f in fragments}
    for f in list(pending.values()):
        if f.expected == 0:
            _finish_fragment(f, [], stage)
            del pending[f.index]
    total = sum(f.expected for f in pending.values())
    with _progress(total, stage.name, progress) as bar:
        if pending:
            for batch in out_ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
                if nodes is not None:
                    nodes.update(batch.column(NODE).to_pylist())
                for frag_index in pc.unique(batch.column(FRAG)).to_pylist():
                    part = batch.filter(pc.equal(batch.column(FRAG), frag_index))
                    buffers[frag_index].append(part)
                    before = len(seen[frag_index])
                    seen[frag_index].update(part.column(ROW).to_pylist())
                    newly = len(seen[frag_index]) - before
                    processed += newly
                    bar.update(newly)
                    frag = pending.get(frag_index)
                    if frag is not None and len(seen[frag_index]) >= frag.expected:
                        _finish_fragment(frag, buffers.pop(frag_index), stage)
                        del pending[frag_index]
    if pending:
        missing = ", ".join(f.input_uri for f in pending.values())
        raise RuntimeError(f"stage {stage.name}: rows missing from the output of fragments {missing}")
    return processed


def run_stage(name: str, cfg: DictConfig, input_uri: str | None, stage_dir: str) -> StageResult:
    stage = build_stage(name, cfg)
    record = RunRecord.start(cfg, stage, input_uri, stage_dir)
    t0 = time.perf_counter()
    storage.makedirs(stage_dir)
    extra: dict[str, Any] = {}
    if isinstance(stage, SinkStage):
        result = stage.run_sink(SinkContext(input_uri=input_uri, stage_dir=stage_dir, run_dir=layout.run_dir_of(stage_dir),
                                            config_hash=record.record["config_hash"], progress=bool(cfg.progress),
                                            max_restarts=MAX_WORKER_RESTARTS))
        processed, skipped, done = result.processed, result.skipped, result.done
        extra = result.extra
    else:
        inputs = stage.input_fragments(input_uri, stage_dir)
        fragments, skipped = plan_fragments(inputs, stage_dir, bool(cfg.retry_errors))
        stage.on_driver_start()
        try:
            nodes: Counter = Counter()
            processed = run_map_stage(stage, fragments, bool(cfg.progress), nodes)
            stage.finalize(stage_dir)
        finally:
            stage.on_driver_end()
        done = len(fragments)
        extra = stage.run_extra(stage_dir)
        extra["worker_nodes"] = dict(sorted(nodes.items()))  # Ray node id -> output rows made there
    wall = time.perf_counter() - t0
    counts = count_outcomes(stage_dir)
    record.finish(counts=counts, processed=processed, wall_s=wall, skipped_fragments=skipped, done_fragments=done, extra=extra)
    return StageResult(name, stage_dir, counts, processed, wall, skipped, done, extra, record.record["random_weights"],
                       type(stage).result_notes(extra))


def run(cfg: DictConfig) -> list[StageResult]:
    """Run `cfg.stages` in order; each stage reads the previous one's manifest."""
    if not cfg.stages:
        raise ValueError("nothing to run: give stage=<name> or pipeline=<name> (see `curate stages`)")
    if cfg.output is None:
        raise ValueError("give output=<run dir>")
    run_dir = cfg.output if "://" in cfg.output else os.path.abspath(cfg.output)
    init_ray(cfg.cluster)
    results = []
    input_uri = cfg.input
    pipeline = len(cfg.stages) > 1
    for position, name in enumerate(cfg.stages, start=1):
        stage_dir = layout.stage_dir_for(run_dir, name, position if pipeline else None)
        if input_uri is None and stage_kind(get_stage_class(name)) != "source":
            input_uri = layout.default_input(run_dir, name)
        if input_uri is not None and "://" not in input_uri:
            input_uri = os.path.abspath(input_uri)
        result = run_stage(name, cfg, input_uri, stage_dir)
        if cfg.progress:
            print_stage_summary(result)
        results.append(result)
        input_uri = stage_dir
    summary: dict[str, Any] = {r.name: {"stage_dir": r.stage_dir, "counts": r.counts, "wall_s": round(r.wall_s, 3), **r.extra}
                               for r in results}
    if pipeline:
        rows = funnel([(r.name, r.counts) for r in results])
        summary["_funnel"] = rows
        if cfg.progress:
            console.print(funnel_table(f"funnel: {run_dir}", rows))
    storage.write_json_atomic(storage.join(run_dir, layout.SUMMARY_JSON), summary)
    return results

