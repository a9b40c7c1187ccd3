"""Connect to Ray: a local runtime by default, or a cluster when `cluster.address` is set."""

from __future__ import annotations

import logging
import os

from omegaconf import DictConfig


def init_ray(cluster: DictConfig) -> None:
    """Idempotent: reuse a connection that is already up (tests and pipelines run many stages)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs = dict(
        namespace=cluster.namespace,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    if cluster.address:
        ray.init(address=cluster.address, **kwargs)
    else:
        # A laptop run serves nobody else: keep every Ray endpoint on loopback.
        ray.init(num_cpus=cluster.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
