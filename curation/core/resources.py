"""Size each stage's actor pool to the Ray cluster it runs on, and group stages that stream together.

Why here and not in the YAMLs: the same command runs on a 2-core laptop and on a GPU cluster. On
the laptop a pool holding every CPU starves Ray Data's read tasks and the job hangs; on a cluster a
pool capped at two workers leaves it idle, and a model stage asking for no GPU is hidden from the
GPUs and silently runs on the CPU.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from curation.core.stage import Resources, Stage

log = logging.getLogger(__name__)
READ_TASK_CPUS = 0.25  # each fragment-reading task; actor pools must leave at least this much free


@dataclass(frozen=True)
class Cluster:
    """What the Ray cluster holds now (an autoscaler may add more)."""

    cpus: float
    gpus: float = 0.0
    custom: dict[str, float] = field(default_factory=dict)

    @classmethod
    def current(cls) -> Cluster:
        import ray

        total = ray.cluster_resources()
        return cls(total.get("CPU", 0.0), total.get("GPU", 0.0), dict(total))


def gpu_share(stage: Stage, res: Resources) -> Resources:
    """The stage's resources without a GPU share when, as configured, it runs no local model on
    one (an API VLM, a CPU shot detector): the share would hold a GPU it leaves idle."""
    if res.num_gpus and not stage.uses_gpu():
        log.info("stage %s: its configured backend runs no model on a GPU; not asking Ray for its %g GPU share",
                 stage.name, res.num_gpus)
        return res.model_copy(update={"num_gpus": 0.0})
    return res


def fit_to_cluster(name: str, res: Resources, cluster: Cluster | None = None) -> Resources:
    """The pool's (min, max) for this cluster: never every CPU (Ray Data's read tasks would never
    be scheduled and the job would hang, as seen on 2-core machines), and an open maximum
    (`concurrency: [n, null]`) becomes as many workers as the cluster's CPUs, GPUs and custom
    resources hold. Warns when it shrinks what the config asked for."""
    cluster = cluster or Cluster.current()
    spare = cluster.cpus - READ_TASK_CPUS
    if res.num_cpus > spare:
        raise ValueError(f"stage {name}: one worker asks for num_cpus={res.num_cpus} but the cluster has {cluster.cpus:g} "
                         f"CPUs and reading input needs {READ_TASK_CPUS}; lower {name}.resources.num_cpus")
    fits = [int(spare // res.num_cpus)]
    asks = dict(res.custom_resources, **({"GPU": res.num_gpus} if res.num_gpus else {}))
    for resource, amount in asks.items():
        held = cluster.gpus if resource == "GPU" else cluster.custom.get(resource, 0.0)
        if held < amount:
            # Not an error: an autoscaling cluster adds such nodes when the workers ask for them.
            log.warning("stage %s: its workers need %s=%g and no node has that now; they wait for one "
                        "(an autoscaler's worker group, or `ray start --resources`)", name, resource, amount)
        else:
            fits.append(int(math.floor(held / amount + 1e-9)))
    fit = max(1, min(fits))
    lo, hi = res.concurrency
    if hi is None:
        return res.model_copy(update={"concurrency": (min(lo, fit), fit)})
    if fit >= hi:
        return res
    log.warning("stage %s: %d workers x %g CPUs would hold all %g CPUs; using at most %d so input can be read",
                name, hi, res.num_cpus, cluster.cpus, fit)
    return res.model_copy(update={"concurrency": (min(lo, fit), fit)})


def plan_chains(stages: list[Stage], cluster: Cluster, stream: bool) -> list[list[tuple[Stage, Resources]]]:
    """Consecutive map stages grouped into chains that run as one streamed plan, each with the
    resources its pool gets. A chain ends after a stage that rewrites its parts once all are
    written (`finalize`: a later stage must not read rows that may still change), and before a
    stage whose smallest pool would not fit beside the chain's earlier ones: their CPUs plus a
    read task's, or the cluster's GPUs. All pools of a chain start together; one that cannot
    start would stall every stage of the chain, so a small machine streams shorter chains."""
    chains: list[list[tuple[Stage, Resources]]] = []
    current: list[tuple[Stage, Resources]] = []
    cpus_held = gpus_held = 0.0
    spare = cluster.cpus - READ_TASK_CPUS
    for stage in stages:
        res = gpu_share(stage, stage.resources)
        cpus, gpus = res.concurrency[0] * res.num_cpus, res.concurrency[0] * res.num_gpus
        overflows = cpus_held + cpus > spare + 1e-9 or (cluster.gpus and gpus_held + gpus > cluster.gpus + 1e-9)
        if current and (not stream or overflows):
            chains.append(current)
            current, cpus_held, gpus_held = [], 0.0, 0.0
        current.append((stage, res))
        cpus_held, gpus_held = cpus_held + cpus, gpus_held + gpus
        if type(stage).finalize is not Stage.finalize:
            chains.append(current)
            current, cpus_held, gpus_held = [], 0.0, 0.0
    if current:
        chains.append(current)
    return [_fit_chain(chain, cluster) for chain in chains]


def _fit_chain(chain: list[tuple[Stage, Resources]], cluster: Cluster) -> list[tuple[Stage, Resources]]:
    """Each pool's maximum, leaving the chain's other pools their smallest size and a read task
    its CPUs: pools that grew into every CPU would starve the reads that feed them."""
    fitted = []
    for stage, res in chain:
        others = sum(r.concurrency[0] * r.num_cpus for s, r in chain if s is not stage)
        fitted.append((stage, fit_to_cluster(stage.name, res, cluster=Cluster(cluster.cpus - others, cluster.gpus, cluster.custom))))
    return fitted


def cpu_fallback_warnings(name: str, devices: dict[str, set[str]], cluster: Cluster) -> list[str]:
    """Lines for the summary and `_run.json` when a model ran on the CPU although the cluster has GPUs."""
    if not cluster.gpus:
        return []
    return [f"{name}: model {role} ran on {', '.join(sorted(d for d in seen if d.startswith('cpu')))} while the cluster "
            f"has {cluster.gpus:g} GPUs; give {name}.resources.num_gpus a share (or resources=gpu) and device=auto"
            for role, seen in sorted(devices.items()) if any(d.startswith("cpu") for d in seen)]
