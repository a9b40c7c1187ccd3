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
MIN_CPU_SHARE = 0.05  # a streamed stage's smallest CPU ask after scaling (Ray's CPU is a scheduling number)


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


def fit_to_cluster(name: str, res: Resources, cluster_cpus: float | None = None, cluster: Cluster | None = None) -> Resources:
    """The pool's (min, max) for this cluster: never every CPU (Ray Data's read tasks would never
    be scheduled and the job would hang, as seen on 2-core machines), and an open maximum
    (`concurrency: [n, null]`) becomes as many workers as the cluster's CPUs, GPUs and custom
    resources hold. Warns when it shrinks what the config asked for."""
    if cluster is None:
        cluster = Cluster(cluster_cpus) if cluster_cpus is not None else Cluster.current()
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
    stage whose minimum pool would not fit the GPUs the chain's earlier pools already hold.
    The pools of one chain all start together, so on a small machine their CPU asks are scaled
    down to fit beside the read tasks (Ray's CPU count is a scheduling number, not a pin)."""
    chains: list[list[tuple[Stage, Resources]]] = []
    current: list[tuple[Stage, Resources]] = []
    gpus_held = 0.0
    for stage in stages:
        res = gpu_share(stage, stage.resources)
        need = res.concurrency[0] * res.num_gpus
        if current and (not stream or (cluster.gpus and gpus_held + need > cluster.gpus + 1e-9)):
            chains.append(current)
            current, gpus_held = [], 0.0
        current.append((stage, res))
        gpus_held += need
        if type(stage).finalize is not Stage.finalize:
            chains.append(current)
            current, gpus_held = [], 0.0
    if current:
        chains.append(current)
    return [_fit_chain(chain, cluster) for chain in chains]


def _fit_chain(chain: list[tuple[Stage, Resources]], cluster: Cluster) -> list[tuple[Stage, Resources]]:
    spare = cluster.cpus - READ_TASK_CPUS
    floor_cpus = sum(res.concurrency[0] * res.num_cpus for _, res in chain)
    if len(chain) > 1 and floor_cpus > spare:
        scale = spare / floor_cpus
        log.info("streaming %s: their smallest pools ask for %g CPUs of %g; scaling each worker's CPU ask by %.2f",
                 ", ".join(s.name for s, _ in chain), floor_cpus, cluster.cpus, scale)
        chain = [(s, res.model_copy(update={"num_cpus": max(MIN_CPU_SHARE, math.floor(res.num_cpus * scale * 100) / 100)}))
                 for s, res in chain]
    return [(s, fit_to_cluster(s.name, res, cluster=cluster)) for s, res in chain]


def cpu_fallback_warnings(name: str, devices: dict[str, set[str]], cluster: Cluster) -> list[str]:
    """Lines for the summary and `_run.json` when a model ran on the CPU although the cluster has GPUs."""
    if not cluster.gpus:
        return []
    return [f"{name}: model {role} ran on {', '.join(sorted(d for d in seen if d.startswith('cpu')))} while the cluster "
            f"has {cluster.gpus:g} GPUs; give {name}.resources.num_gpus a share (or resources=gpu) and device=auto"
            for role, seen in sorted(devices.items()) if any(d.startswith("cpu") for d in seen)]
