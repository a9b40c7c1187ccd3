"""Run a stage or a pipeline on Ray Data, one output part per input fragment, resumably.

Consecutive map stages stream through one Ray Data plan (streaming.py): decoded clips reach the
model stages while later videos are still being decoded, and each stage still writes its own part
per fragment. A rerun skips parts that exist, so a killed run resumes where it stopped and, because
sample ids are deterministic, never duplicates a sample. Pools are sized to the cluster
(resources.py); sink stages (shards) run on their own.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import Any

from omegaconf import DictConfig, OmegaConf

from curation.core import config_change, layout, run_logs, storage
from curation.core.config import build_stage, compose, needs_cluster_facts, pipelines, validate
from curation.core.ray_env import check_dashboard, init_ray
from curation.core.resources import Cluster, cpu_fallback_warnings, plan_chains
from curation.core.runinfo import RunRecord, count_outcomes
from curation.core.stage import Resources, SinkContext, SinkStage, Stage, get_stage_class, stage_kind, stage_names
from curation.core.streaming import MAX_WORKER_RESTARTS, ChainLink, plan_chain, run_chain
from curation.core.summary import console, funnel, funnel_table, print_stage_summary

log = logging.getLogger(__name__)
__all__ = ["MAX_WORKER_RESTARTS", "StageResult", "compose_for_cluster", "preflight", "run", "run_stage"]


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


def compose_for_cluster(overrides: list[str]) -> DictConfig:
    """The config for these overrides with `auto` profiles resolved against the Ray cluster it
    connects to (`resources=auto` becomes gpu when the cluster has GPUs, local otherwise)."""
    cfg = compose(overrides)
    if needs_cluster_facts(cfg):
        init_ray(cfg.cluster)
        cfg = compose(overrides, gpus=Cluster.current().gpus > 0)
    return cfg


# --------------------------------------------------------------------------------------------
# Pre-flight: what can be known before Ray starts is checked before Ray starts
# --------------------------------------------------------------------------------------------


def preflight(cfg: DictConfig, changes_allowed: bool = False) -> list[Stage]:
    """Everything a run can get wrong without running: each value (`validate`), the output, the
    input the first stage reads, each stage's optional packages, and finished parts made with
    another config (unless `changes_allowed`: a dry run reports them). Raises ValueError with one
    line naming the key or path and what would work; reads only, so a failed check leaves no
    Ray session and no output directory. Returns the built stages."""
    if not cfg.stages:
        raise ValueError("nothing to run: give stage=<name> or pipeline=<name> (see `curate stages`)")
    if cfg.output is None:
        raise ValueError("give output=<run dir>")
    stages = validate(cfg)
    check_dashboard(cfg.cluster)
    _check_input(cfg, stages[0])
    for stage in stages:
        for module, how in stage.required_modules().items():
            if find_spec(module) is None:  # found, not imported: torch-sized packages stay off the driver
                raise ValueError(f"stage {stage.name} needs the {module!r} package, which is not installed: {how}")
    if not changes_allowed:
        changes = config_change.find_changes(stages, planned_stage_dirs(cfg))
        if changes and cfg.on_change == "stop":
            raise ValueError(config_change.refusal(changes, run_dir_of(cfg)))
    return stages


def run_dir_of(cfg: DictConfig) -> str:
    return cfg.output if "://" in cfg.output else os.path.abspath(cfg.output)


def planned_stage_dirs(cfg: DictConfig) -> list[str]:
    """The directory each stage of the run writes: existing ones are reused (resume)."""
    run_dir = run_dir_of(cfg)
    names = list(cfg.stages)
    return layout.stage_dirs_for(run_dir, names) if len(names) > 1 else [layout.stage_dir_for(run_dir, names[0], None)]


def _apply_on_change(cfg: DictConfig, stages: list[Stage]) -> None:
    """What a rerun does about finished parts made with another stage config (config_change.py)."""
    changes = config_change.find_changes(stages, planned_stage_dirs(cfg))
    if not changes:
        return
    if cfg.on_change == "stop":
        raise ValueError(config_change.refusal(changes, run_dir_of(cfg)))
    if cfg.on_change == "keep":
        for change in changes:
            log.warning("on_change=keep: %s; they are kept, new parts use this run's config", change.describe())
        return
    by_name = {stage.name: stage for stage in stages}

    def outputs_of(name: str) -> list[str]:
        stage = by_name.get(name) or build_stage(name, cfg)
        return stage.outputs_outside(run_dir_of(cfg))

    first = min(changes, key=lambda c: c.stage_dir)
    log.warning("on_change=recompute: %s", first.describe())
    config_change.move_aside(run_dir_of(cfg), first.stage_dir, outputs_of)


def _check_input(cfg: DictConfig, first: Stage) -> None:
    """A source stage lists raw input (files, a glob, a source manifest); any other stage reads a
    manifest directory: `input=`, or the latest earlier stage of the run directory."""
    spec = cfg.input
    local = spec is not None and "://" not in spec
    if stage_kind(type(first)) == "source":
        if local and not (glob.glob(spec, recursive=True) if glob.has_magic(spec) else os.path.exists(spec)):
            raise ValueError(f"input={spec}: no such file, directory or glob match")
        first.check_input(spec)  # the source's own reading of it (a plan spec's keys), nothing listed
        return
    run_dir = cfg.output if "://" in cfg.output else os.path.abspath(cfg.output)
    uri = spec if spec is not None else layout.default_input(run_dir, first.name)
    if uri is not None and _is_manifest(uri):
        return
    # The pipelines' first stages are asked first: importing every stage class costs seconds.
    firsts = [OmegaConf.load(path).get("stages", [None])[0] for path in pipelines().values()]
    names = dict.fromkeys([n for n in firsts if n in stage_names()] + list(stage_names()))
    source = next((n for n in names if stage_kind(get_stage_class(n)) == "source"), None)
    chosen = f" instead of stage={cfg.stage}" if cfg.stage else f" instead of pipeline={cfg.pipeline}" if cfg.pipeline else ""
    start = f"stages=[{','.join([source, *cfg.stages])}]{chosen}" if source else "a source stage"
    what = (f"input={spec} does not exist" if local and not os.path.exists(spec) else
            f"input={spec} is not a manifest directory (no part-*.parquet)" if spec is not None else
            f"output={cfg.output} holds no earlier stage and no input= was given")
    raise ValueError(f"{what}: stage {first.name} reads a manifest; start the run at a source stage ({start}) "
                     f"or give input=<run dir>/NN-<stage> of an earlier run")


def _is_manifest(uri: str) -> bool:
    if "://" not in uri and not os.path.isdir(uri):
        return False
    try:
        return bool(layout.manifest_parts(uri if "://" in uri else os.path.abspath(uri)))
    except OSError:  # not a directory, or not reachable
        return False


def run_sink_stage(stage: SinkStage, cfg: DictConfig, input_uri: str | None, stage_dir: str) -> StageResult:
    """A sink (shards) reads the finished manifest itself; the runner hands it its context."""
    stage.bind_run(layout.run_dir_of(stage_dir), stage_dir)
    record = RunRecord.start(cfg, stage, input_uri, stage_dir)
    t0 = time.perf_counter()
    storage.makedirs(stage_dir)
    result = stage.run_sink(SinkContext(input_uri=input_uri, stage_dir=stage_dir, run_dir=layout.run_dir_of(stage_dir),
                                        config_hash=record.record["config_hash"], progress=bool(cfg.progress),
                                        max_restarts=MAX_WORKER_RESTARTS))
    wall = time.perf_counter() - t0
    counts = count_outcomes(stage_dir)
    record.finish(counts=counts, processed=result.processed, wall_s=wall, skipped_fragments=result.skipped,
                  done_fragments=result.done, extra=result.extra)
    return StageResult(stage.name, stage_dir, counts, result.processed, wall, result.skipped, result.done, result.extra,
                       record.record["random_weights"], type(stage).result_notes(result.extra))


def run_chain_stages(chain: list[tuple[Stage, Resources]], stage_dirs: list[str], cfg: DictConfig, input_uri: str | None,
                     cluster: Cluster) -> list[StageResult]:
    """Map stages streamed as one plan (a chain of one when streaming is off); one result each."""
    stages = [stage for stage, _ in chain]
    inputs_of = [input_uri, *stage_dirs[:-1]]
    for stage, stage_dir in zip(stages, stage_dirs):
        stage.bind_run(layout.run_dir_of(stage_dir), stage_dir)
    records = [RunRecord.start(cfg, stage, uri, d) for stage, uri, d in zip(stages, inputs_of, stage_dirs)]
    t0 = time.perf_counter()
    for stage_dir in stage_dirs:
        storage.makedirs(stage_dir)
    inputs = stages[0].input_fragments(input_uri, stage_dirs[0])
    fragments, skipped = plan_chain(inputs, stage_dirs, bool(cfg.retry_errors))
    links = [ChainLink(stage, d, res) for (stage, res), d in zip(chain, stage_dirs)]
    started: list[Stage] = []
    try:
        for stage in stages:
            stage.on_driver_start()
            started.append(stage)
        outcomes = run_chain(links, fragments, bool(cfg.progress))
        for stage, stage_dir in zip(stages, stage_dirs):
            stage.finalize(stage_dir)
    finally:
        for stage in started:
            stage.on_driver_end()
    wall = time.perf_counter() - t0
    results = []
    for k, (stage, stage_dir, record, outcome) in enumerate(zip(stages, stage_dirs, records, outcomes)):
        extra = stage.run_extra(stage_dir)
        extra["worker_nodes"] = dict(sorted(outcome.nodes.items()))  # Ray node id -> output rows made there
        extra["model_devices"] = {role: sorted(seen) for role, seen in sorted(outcome.devices.items())}
        extra["resources"] = links[k].resources.model_dump(mode="json")  # what the pool really ran with
        extra["worker_resources"] = [json.loads(a) for a in sorted(outcome.assigned)]  # what Ray gave its workers
        if len(stages) > 1:
            extra["streamed_with"] = [s.name for s in stages]  # one plan: its wall time is the chain's
        warnings = cpu_fallback_warnings(stage.name, outcome.devices, cluster)
        if warnings:
            extra["warnings"] = warnings
        counts = count_outcomes(stage_dir)
        record.finish(counts=counts, processed=outcome.processed, wall_s=wall, skipped_fragments=skipped[k],
                      done_fragments=outcome.done, extra=extra)
        notes = type(stage).result_notes(extra) + [f"[yellow]warning:[/yellow] {w}" for w in warnings]
        results.append(StageResult(stage.name, stage_dir, counts, outcome.processed, wall, skipped[k], outcome.done, extra,
                                   record.record["random_weights"], notes))
    return results


def run_stage(name: str, cfg: DictConfig, input_uri: str | None, stage_dir: str) -> StageResult:
    """One stage on its own, whatever its kind (benchmarks and tools that run a single stage)."""
    init_ray(cfg.cluster)
    stage = build_stage(name, cfg)
    if isinstance(stage, SinkStage):
        return run_sink_stage(stage, cfg, input_uri, stage_dir)
    cluster = Cluster.current()
    return run_chain_stages(plan_chains([stage], cluster, stream=False)[0], [stage_dir], cfg, input_uri, cluster)[0]


def run(cfg: DictConfig) -> list[StageResult]:
    """Run `cfg.stages` in order; each stage reads the previous one's manifest. Consecutive map
    stages stream through one plan unless `stream=false` (or `retry_errors=true`, which redoes
    one stage's error rows at a time). Everything `preflight` checks is checked first, so a call
    from Python fails as fast as `curate run` does, before Ray starts."""
    _apply_on_change(cfg, preflight(cfg, changes_allowed=True))
    run_dir = run_dir_of(cfg)
    init_ray(cfg.cluster)
    cluster = Cluster.current()
    if needs_cluster_facts(cfg) and cluster.gpus:
        log.warning("resources=auto is still unresolved and the cluster has %g GPUs: compose the config with "
                    "curation.core.runner.compose_for_cluster (as `curate run` does) so model stages get GPU shares",
                    cluster.gpus)
    names = list(cfg.stages)
    pipeline = len(names) > 1
    dirs = planned_stage_dirs(cfg)
    results: list[StageResult] = []
    input_uri = cfg.input
    i = 0
    while i < len(names):
        if input_uri is None and stage_kind(get_stage_class(names[i])) != "source":
            input_uri = layout.default_input(run_dir, names[i])
        if input_uri is not None and "://" not in input_uri:
            input_uri = os.path.abspath(input_uri)
        first = build_stage(names[i], cfg)
        if isinstance(first, SinkStage):
            done = [run_sink_stage(first, cfg, input_uri, dirs[i])]
        else:
            group = [first]
            while i + len(group) < len(names) and stage_kind(get_stage_class(names[i + len(group)])) == "map":
                group.append(build_stage(names[i + len(group)], cfg))
            done = []
            for chain in plan_chains(group, cluster, stream=bool(cfg.stream) and not cfg.retry_errors):
                at = i + len(done)
                done += run_chain_stages(chain, dirs[at:at + len(chain)], cfg, input_uri, cluster)
                input_uri = dirs[at + len(chain) - 1]
        for result in done:
            if cfg.progress:
                print_stage_summary(result)
        run_logs.stage_finished(done)  # <run_dir>/logs/ so far (uploaded for an object-store run)
        results += done
        i += len(done)
        input_uri = dirs[i - 1]
    summary: dict[str, Any] = {r.name: {"stage_dir": r.stage_dir, "counts": r.counts, "wall_s": round(r.wall_s, 3), **r.extra}
                               for r in results}
    if pipeline:
        rows = funnel([(r.name, r.counts) for r in results])
        summary["_funnel"] = rows
        if cfg.progress:
            console.print(funnel_table(f"funnel: {run_dir}", rows))
    storage.write_json_atomic(storage.join(run_dir, layout.SUMMARY_JSON), summary)
    return results
