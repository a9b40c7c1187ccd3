"""The vLLM servers of a stage run, on the driver: how many, started all at once with the first
failure reported as soon as it happens, shared by the stages of one run that ask for the same
ones, and stopped by the last of them. Each server is a `vllm_server.ServerProcess` actor; why
servers at all is that module's docstring.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from curation.backends.vllm_server import STOP_GRACE_S, ServerProcess, ServerStartError, Started, VLLMServerConfig


def replicas_for(cfg: VLLMServerConfig) -> int:
    """How many servers to start: `replicas`, else one per `num_gpus` share of the cluster's GPUs."""
    import ray

    if cfg.replicas is not None:
        return cfg.replicas
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if cfg.num_gpus <= 0 or gpus < cfg.num_gpus:
        raise ServerStartError(f"vlm=vllm starts one server per {cfg.num_gpus:g} GPU(s) but the cluster has {gpus:g} GPUs: "
                               "set vlm.server.replicas (and vlm.server.num_gpus) or run on GPU nodes")
    return int(gpus // cfg.num_gpus)


class ServerPool:
    """The servers a stage run started. The driver holds the actor handles (Ray collects an actor
    nobody holds) and gives workers only the URLs."""

    def __init__(self, actors: list[Any], urls: list[str]):
        self.actors = actors
        self.urls = urls

    @classmethod
    def start(cls, cfg: VLLMServerConfig, model: str) -> ServerPool:
        """Start the servers and wait until all are healthy; on any failure stop them all and raise
        ServerStartError as soon as the first one reports it."""
        import ray

        count = replicas_for(cfg)
        if count == 0:
            if not cfg.urls:
                raise ServerStartError("vlm.server.replicas=0 starts no server: list running ones in vlm.server.urls")
            return cls([], list(cfg.urls))
        actor_cls = ray.remote(ServerProcess).options(
            num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, resources=cfg.custom_resources or None,
            max_restarts=0, max_concurrency=4)  # threaded: pid()/stop() answer while start() waits
        actors = [actor_cls.remote(cfg, model, f"{i + 1}/{count}") for i in range(count)]
        pool = cls(actors, [])
        pending = {actor.start.remote(): i for i, actor in enumerate(actors)}
        urls: dict[int, str] = {}
        # The actors time their own start; this bound also covers an actor Ray cannot place.
        deadline = time.monotonic() + cfg.start_timeout_s + 60
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                if not ready:
                    asks = dict(cfg.custom_resources or {}, CPU=cfg.num_cpus, GPU=cfg.num_gpus)
                    raise ServerStartError(
                        f"vLLM server for model {model}: {len(pending)} of {count} server(s) did not start within "
                        f"{cfg.start_timeout_s:g}s; each asks Ray for {asks} and the cluster has {ray.cluster_resources()}")
                index = pending.pop(ready[0])
                try:
                    started: Started = ray.get(ready[0])
                except ray.exceptions.RayError as e:
                    raise ServerStartError(f"vLLM server {index + 1}/{count} for model {model}: its actor died: {e}") from None
                if started.error:
                    raise ServerStartError(f"vLLM server {index + 1}/{count} for model {model} failed to start: {started.error}")
                urls[index] = started.url
        except BaseException:
            pool.stop()
            raise
        pool.urls = [urls[i] for i in range(count)]
        return pool

    def stop(self) -> None:
        """Stop every server (its process group), then release the actors."""
        import ray

        if not self.actors:
            return
        stops = [actor.stop.remote() for actor in self.actors]
        ray.wait(stops, num_returns=len(stops), timeout=STOP_GRACE_S + 10)
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


# Pools this driver process started, by what they serve: the VLM stages of one streamed chain
# start together, and two stages asking for the same servers must share them, not start a second
# server on every GPU (which would not fit). Counted, so the last stage to end stops them.
_POOLS: dict[str, tuple[ServerPool, int]] = {}
_POOLS_LOCK = threading.Lock()


def _pool_key(cfg: VLLMServerConfig, model: str) -> str:
    return json.dumps([model, cfg.model_dump(mode="json", exclude={"urls"})], sort_keys=True)


def acquire_servers(cfg: VLLMServerConfig, model: str) -> ServerPool:
    """The servers for `model` as `cfg` describes them: started now, or shared with another stage of
    this run that started them. Give each back with `release_servers`."""
    key = _pool_key(cfg, model)
    with _POOLS_LOCK:
        if key in _POOLS:
            pool, users = _POOLS[key]
            _POOLS[key] = (pool, users + 1)
            return pool
        pool = ServerPool.start(cfg, model)  # under the lock: a second stage waits for these servers
        _POOLS[key] = (pool, 1)
        return pool


def release_servers(pool: ServerPool) -> None:
    """One stage is done with `pool`; the last one stops its servers."""
    with _POOLS_LOCK:
        key = next((k for k, (p, _) in _POOLS.items() if p is pool), None)
        if key is not None:
            users = _POOLS[key][1] - 1
            if users > 0:
                _POOLS[key] = (pool, users)
                return
            del _POOLS[key]
    pool.stop()
