"""A spending cap for paid API calls, local to a worker or shared by every worker of a run.

`budget.max_usd` caps the whole run: every stage that pays draws on one ledger (a Ray actor named
after the run directory), whose total persists in `<run_dir>/_spend.json`, so neither a second
paid stage nor a rerun starts again from zero.

The backend calls `check()` before sending each request and `charge(usd)` after the response.
Cache hits are free and are served even when the budget is spent. What a call costs comes from
`pricing.token_price`; a call it cannot price cannot be held to a cap, so under a cap the backend
refuses it before sending (`budget_unpriced`) rather than charge a made-up number.

Overshoot: a request is checked before it is sent and charged when it returns, so the total can
exceed `max_usd` by what was already in flight when it was crossed: at most `max_in_flight`
requests per worker (times the number of workers sharing a ledger), each at most
`max_tokens` of output plus its prompt.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from curation.backends.usage import VLMError

log = logging.getLogger(__name__)


FLUSH_EVERY_S = 0.5  # the ledger writes its file at most this often (and when a stage ends)


class _Ledger:
    """Ray actor holding a run's running total (see `create_ledger`). With a `path`, it starts
    from the total a previous attempt left there and writes it back, so a rerun spends only
    what is left of `budget.max_usd`. A thread writes the file at most every `FLUSH_EVERY_S`:
    charges are never slowed by a write to an object store, and a killed run loses at most
    that much time's worth of charges from the file (the manifests still hold every answer's usage)."""

    def __init__(self, path: str | None = None) -> None:
        from curation.core import storage

        self.path = path
        state = storage.read_json(path) if path and storage.exists(path) else {}
        self.total = float(state.get("spent_usd", 0.0))
        self.by_stage: dict[str, float] = {k: float(v) for k, v in (state.get("by_stage") or {}).items()}
        self._lock = threading.Lock()
        self._dirty = False
        if path:
            threading.Thread(target=self._flush_loop, daemon=True).start()

    def add(self, usd: float, stage: str | None = None) -> float:
        with self._lock:
            self.total += usd
            if stage:
                self.by_stage[stage] = self.by_stage.get(stage, 0.0) + usd
            self._dirty = True
            return self.total

    def spent(self) -> float:
        return self.total

    def flush(self) -> float:
        """Write the file now (the driver calls this when a stage ends); returns the total."""
        from curation.core import storage

        with self._lock:
            dirty, state = self._dirty, {"spent_usd": self.total, "by_stage": dict(self.by_stage),
                                         "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            self._dirty = False
        if self.path and dirty:
            storage.write_json_atomic(self.path, state)
        return state["spent_usd"]

    def _flush_loop(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY_S)
            try:
                self.flush()
            except OSError as e:  # a storage hiccup must not kill the ledger; the next flush retries
                log.warning("could not write the spend ledger %s: %s", self.path, e)
                self._dirty = True


def create_ledger(name: str, path: str | None = None) -> Any:
    """Create (or reuse) the named ledger actor; `path` is the run's spend file. The driver calls
    this before a stage starts and gives `name` to the workers' `Budget(..., ledger_name=name)`.
    Every stage of a run gets the same name, so they share one total. The actor holds no CPU (it
    never competes with workers for a slot), lives as long as the driver, and runs on the
    driver's node, so a local run directory is the driver's."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(_Ledger).options(name=name, get_if_exists=True, scheduling_strategy=here).remote(path)


class Budget:
    """`max_usd=None` means no cap (spend is still counted). With `ledger_name`, the total lives in
    the named Ray actor so that every worker of every stage of a run draws on one budget (each
    check is one actor round trip; the backend makes it off its event loop); `stage` names whose
    charges these are in the run's spend file."""

    def __init__(self, max_usd: float | None, ledger_name: str | None = None, stage: str | None = None):
        if max_usd is not None and max_usd < 0:
            raise ValueError(f"max_usd must be >= 0 or None, got {max_usd}")
        self.max_usd = max_usd
        self.ledger_name = ledger_name
        self.stage = stage
        self._local_total = 0.0
        self._ledger: Any = None
        self._lock = threading.Lock()
        self._warned = False

    def _handle(self) -> Any:
        if self._ledger is None:
            import ray

            self._ledger = ray.get_actor(self.ledger_name)
        return self._ledger

    def spent(self) -> float:
        """Dollars charged so far (by every worker, with a ledger)."""
        if self.ledger_name is None:
            with self._lock:
                return self._local_total
        import ray

        return float(ray.get(self._handle().spent.remote()))

    def check(self) -> None:
        """Raise VLMError("budget_exhausted: ...") once the cap is reached; warn once per worker."""
        if self.max_usd is None:
            return
        spent = self.spent()
        if spent < self.max_usd:
            return
        if not self._warned:
            self._warned = True
            log.warning(
                "VLM budget exhausted (spent $%.4f of $%.4f): no further requests from this worker; "
                "cached responses are still served", spent, self.max_usd,
            )
        raise VLMError(
            f"budget_exhausted: spent ${spent:.4f} of ${self.max_usd:.4f}; "
            "raise budget.max_usd or rerun with retry_errors=true"
        )

    def charge(self, usd: float) -> None:
        if usd <= 0:
            return
        if self.ledger_name is None:
            with self._lock:
                self._local_total += usd
            return
        # Waited for (the backend calls this off its event loop), so any later check() from any
        # thread of this worker sees the charge.
        import ray

        ray.get(self._handle().add.remote(usd, self.stage))
