"""Connect to Ray: a local runtime by default, or a cluster when `cluster.address` is set."""

from __future__ import annotations

import logging
import os
from importlib.util import find_spec

from omegaconf import DictConfig

log = logging.getLogger(__name__)

# What the Ray dashboard imports before it starts (ray/dashboard/optional_deps.py): the packages
# of Ray's `default` extra that `ray[data]` does not bring. Checked by name, nothing imported.
DASHBOARD_MODULES = ("aiohttp", "aiohttp_cors", "grpc", "opencensus", "opentelemetry", "prometheus_client")
DASHBOARD_EXTRA = "pip install 'curation[dashboard]'"


def check_dashboard(cluster: DictConfig) -> None:
    """`cluster.dashboard=true` on a local runtime needs the dashboard's packages: fail before Ray
    starts, in one line, rather than half way through `ray.init`. A cluster (`cluster.address`)
    serves its own dashboard, so the key has no effect there and nothing is checked."""
    if not cluster.get("dashboard") or cluster.address:
        return
    missing = [m for m in DASHBOARD_MODULES if find_spec(m) is None]
    if missing:
        raise ValueError(f"cluster.dashboard=true needs Ray's dashboard packages, which are not installed "
                         f"({', '.join(missing)}): {DASHBOARD_EXTRA}")


def init_ray(cluster: DictConfig) -> None:
    """Idempotent: reuse a connection that is already up (tests and pipelines run many stages)."""
    import ray

    from curation.core.run_logs import quiet_ray_console

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # A local runtime's workers inherit this process's environment: no per-model "Loading weights"
    # bars from transformers / huggingface_hub in every worker's output (curate draws its own bars).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    quiet_ray_console()
    kwargs = dict(
        namespace=cluster.namespace,
        # INFO reaches a run's log file (run_logs.py); Ray's console handlers print WARNING and up.
        logging_level=logging.INFO,
        log_to_driver=True,
    )
    if cluster.address:
        ray.init(address=cluster.address, **kwargs)
        return
    dashboard = bool(cluster.get("dashboard", False))
    # A laptop run serves nobody else: keep every Ray endpoint on loopback, the dashboard too.
    context = ray.init(num_cpus=cluster.num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                       _node_ip_address="127.0.0.1", **kwargs)
    if dashboard and context.dashboard_url:
        from curation.core.summary import console

        url = f"http://{context.dashboard_url}"
        log.info("Ray dashboard: %s", url)
        console.print(f"Ray dashboard: {url}", highlight=False)
