"""A spending cap for paid VLM calls, local to a worker or shared by all workers of a stage.

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
from typing import Any

from curation.backends.usage import VLMError

log = logging.getLogger(__name__)


class _Ledger:
    """Ray actor holding one stage's running total (see `create_ledger`)."""

    def __init__(self) -> None:
        self.total = 0.0

    def add(self, usd: float) -> float:
        self.total += usd
        return self.total

    def spent(self) -> float:
        return self.total


def create_ledger(name: str) -> Any:
    """Create (or reuse) the named ledger actor. The driver calls this once per stage run, keeps
    the returned handle while the stage runs (Ray collects an actor nobody holds), and gives
    `name` to the workers' `Budget(..., ledger_name=name)`. It holds no CPU, so it never competes
    with the stage's workers for a slot."""
    import ray

    return ray.remote(num_cpus=0)(_Ledger).options(name=name, get_if_exists=True).remote()


class Budget:
    """`max_usd=None` means no cap (spend is still counted). With `ledger_name`, the total lives in
    the named Ray actor so that every worker of a stage draws on one budget (each check is one
    actor round trip; the backend makes it off its event loop)."""

    def __init__(self, max_usd: float | None, ledger_name: str | None = None):
        if max_usd is not None and max_usd < 0:
            raise ValueError(f"max_usd must be >= 0 or None, got {max_usd}")
        self.max_usd = max_usd
        self.ledger_name = ledger_name
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

        ray.get(self._handle().add.remote(usd))
