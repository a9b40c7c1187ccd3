"""Client-side flow control shared by every VLM backend: rate limits, retry policy, backoff.

Everything here runs on a backend's own event loop. Providers enforce their limits over short
windows (OpenAI quantises per-minute limits to per-second buckets), so the limiters pace
requests evenly instead of allowing a minute's burst up front.

A provider's limit is per API key, not per worker: a stage run on Ray creates one `_RateLedger`
actor (`create_rate_ledger`, like the spend ledger in `budget.py`) and every worker's
`SharedRateLimiter` draws its permits from it, so `requests_per_minute` and `tokens_per_minute`
hold for the whole run. Without Ray, `RateLimiter` holds them for the one process.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# A Retry-After longer than this is treated as this long: a worker should not sleep for an hour
# on one request; after the retries it fails with a reason and a rerun picks it up.
RETRY_AFTER_CAP_S = 300.0
# Status codes worth another attempt: request timeout, conflict, rate limit, server errors.
RETRYABLE_STATUS = frozenset({408, 409, 429})


class Bucket:
    """A token bucket that never waits itself: refills at `per_minute / 60` units per second up to
    `capacity`, and `take` either grants or says how long until it could. Shared by the async
    limiter below and by the run-wide ledger actor, so both count the same way."""

    def __init__(self, per_minute: float, capacity: float):
        if per_minute <= 0 or capacity <= 0:
            raise ValueError(f"rate and capacity must be positive, got {per_minute}/min, capacity {capacity}")
        self.rate_per_s = per_minute / 60.0
        self.capacity = capacity
        self.level = capacity
        self._updated = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate_per_s)
        self._updated = now

    def take(self, want: float, need: float) -> tuple[float, float]:
        """(granted, 0.0) once the bucket holds `min(need, capacity)`: grants at least `need` and at
        most `max(need, level)` of `want`, so the level goes negative only for a request larger
        than the bucket (which then waits for the refill instead of deadlocking). Else
        (0.0, seconds until it will hold that much)."""
        self._refill()
        floor = min(need, self.capacity)
        if self.level < floor:
            return 0.0, (floor - self.level) / self.rate_per_s
        granted = max(need, min(want, self.level))
        self.level -= granted
        return granted, 0.0

    def adjust(self, delta: float) -> None:
        """Correct an estimate once the real amount is known (positive: took more than estimated)."""
        self._refill()
        self.level = min(self.capacity, self.level - delta)


class TokenBucket:
    """`Bucket` for one event loop: `acquire(n)` waits until the bucket holds `min(n, capacity)`
    units, then takes `n`. Waiters are served in arrival order (asyncio.Lock is fair)."""

    def __init__(self, per_minute: float, capacity: float):
        self.bucket = Bucket(per_minute, capacity)
        self._lock = asyncio.Lock()

    async def acquire(self, amount: float = 1.0) -> None:
        async with self._lock:
            while True:
                _, wait = self.bucket.take(amount, amount)
                if not wait:
                    return
                await asyncio.sleep(wait)

    def adjust(self, delta: float) -> None:
        self.bucket.adjust(delta)


class RateLimiter:
    """One worker's limits (no Ray, or no shared ledger): requests per minute (paced one at a time:
    600/min means one every 0.1 s) and tokens per minute (one second's worth may go at once; an
    estimate is taken before sending and corrected with the usage the provider reports)."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.requests = TokenBucket(requests_per_minute, 1.0) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute, tokens_per_minute / 60.0) if tokens_per_minute else None

    async def acquire(self, estimated_tokens: int) -> None:
        if self.requests is not None:
            await self.requests.acquire(1.0)
        if self.tokens is not None:
            await self.tokens.acquire(float(estimated_tokens))

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        if self.tokens is not None:
            self.tokens.adjust(float(actual_tokens - estimated_tokens))


# --------------------------------------------------------------------------------------------
# one limit for every worker of a run
# --------------------------------------------------------------------------------------------

# A worker leases this many seconds' worth of the run's rate at a time (at least one request): the
# ledger actor sees a few calls a second instead of one per request, and what a worker that stops
# still holds (lost, never returned: the limit errs low) is at most this much.
LEASE_S = 0.5


def request_lease(requests_per_minute: float) -> float:
    """Request permits per lease; also the run's request burst (the shared bucket's capacity)."""
    return max(1.0, requests_per_minute / 60.0 * LEASE_S)


def token_lease(tokens_per_minute: float) -> float:
    return tokens_per_minute / 60.0 * LEASE_S


@dataclass(frozen=True)
class Lease:
    """Permits the ledger granted, and when to ask again for what it could not grant yet."""

    requests: float
    tokens: float
    retry_in_s: float


class _RateLedger:
    """Ray actor holding a run's request and token buckets (see `create_rate_ledger`). Every permit
    any worker spends came out of these buckets, so over any span T the run sends at most the
    buckets' capacity plus T times the rate, however many workers share them."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.requests = Bucket(requests_per_minute, request_lease(requests_per_minute)) if requests_per_minute else None
        self.tokens = Bucket(tokens_per_minute, tokens_per_minute / 60.0) if tokens_per_minute else None

    def lease(self, requests: float, tokens: float, tokens_needed: float) -> Lease:
        """Up to `requests` request permits (granted once one is there) and up to `tokens` token
        permits (granted once `tokens_needed` are there); never waits, says when to ask again."""
        got_requests = got_tokens = wait = 0.0
        if requests > 0 and self.requests is not None:
            got_requests, wait = self.requests.take(requests, 1.0)
        if tokens > 0 and self.tokens is not None:
            got_tokens, wait_tokens = self.tokens.take(tokens, tokens_needed)
            wait = max(wait, wait_tokens)
        return Lease(got_requests, got_tokens, wait)


def create_rate_ledger(name: str, requests_per_minute: float | None, tokens_per_minute: float | None) -> Any:
    """Create (or reuse) the named rate ledger actor, as `budget.create_ledger` does for spend: the
    driver calls this once per stage run and keeps the handle while the stage runs (Ray collects an
    actor nobody holds); workers find it by `name`. It holds no CPU, so it never takes a worker's slot."""
    import ray

    return (ray.remote(num_cpus=0)(_RateLedger)
            .options(name=name, get_if_exists=True)
            .remote(requests_per_minute, tokens_per_minute))


class SharedRateLimiter:
    """`RateLimiter`'s contract with the limits held for all workers together: permits come from the
    named `_RateLedger` actor in leases of `LEASE_S` seconds' worth, so the actor is off most
    requests' path. Requests are still paced locally at the run's rate, so a lease is not spent in
    one burst. A token estimate's correction (`settle`) is charged to this worker's balance: a
    request that used more than estimated makes the next lease bigger."""

    def __init__(self, ledger_name: str, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.ledger_name = ledger_name
        self._pace = TokenBucket(requests_per_minute, 1.0) if requests_per_minute else None
        self._request_lease = request_lease(requests_per_minute) if requests_per_minute else 0.0
        self._token_lease = token_lease(tokens_per_minute) if tokens_per_minute else 0.0
        self._requests = 0.0  # permits leased and not yet spent
        self._tokens = 0.0  # may go negative after a correction
        self._lock = asyncio.Lock()  # one lease call at a time; waiters served in arrival order
        self._ledger: Any = None

    def _lease(self, requests: float, tokens: float, tokens_needed: float) -> Lease:
        """One actor round trip (blocking: run off the event loop)."""
        import ray

        if self._ledger is None:
            self._ledger = ray.get_actor(self.ledger_name)
        return ray.get(self._ledger.lease.remote(requests, tokens, tokens_needed))

    async def acquire(self, estimated_tokens: int) -> None:
        if self._pace is not None:
            await self._pace.acquire(1.0)
        async with self._lock:
            while True:
                want_requests = self._request_lease if self._request_lease and self._requests < 1.0 else 0.0
                short_tokens = estimated_tokens - self._tokens if self._token_lease else 0.0
                if want_requests == 0.0 and short_tokens <= 0.0:
                    break
                want_tokens = max(short_tokens, self._token_lease) if short_tokens > 0.0 else 0.0
                lease = await asyncio.to_thread(self._lease, want_requests, want_tokens, max(short_tokens, 0.0))
                if not (lease.requests or lease.tokens or lease.retry_in_s):
                    raise RuntimeError(f"rate ledger {self.ledger_name} holds no limit this worker was configured with")
                self._requests += lease.requests
                self._tokens += lease.tokens
                if lease.retry_in_s > 0.0:
                    await asyncio.sleep(lease.retry_in_s)
            if self._request_lease:
                self._requests -= 1.0
            if self._token_lease:
                self._tokens -= estimated_tokens

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        if self._token_lease:
            self._tokens -= actual_tokens - estimated_tokens


@dataclass(frozen=True)
class Failure:
    """One failed attempt, classified once so the retry loop is the same for every backend.
    `reason` is `"<stable_prefix>: <short message>"` and never holds a secret."""

    reason: str
    retryable: bool
    retry_after_s: float | None = None


def status_failure(status: int, message: str, retry_after_s: float | None = None) -> Failure:
    """The common mapping of an HTTP status: 401/403 are auth problems (never retried); 408, 409,
    429 and 5xx are transient; any other 4xx is the request's fault and would fail again."""
    if status in (401, 403):
        return Failure(f"vlm_auth: HTTP {status} {message}", retryable=False)
    retryable = status in RETRYABLE_STATUS or status >= 500
    return Failure(f"vlm_http_{status}: {message}", retryable=retryable, retry_after_s=retry_after_s)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds (decimals accepted) or
    an HTTP date; None when absent or unparseable."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    if (ms := lowered.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def backoff_delay(retry: int, initial_s: float, max_s: float, retry_after_s: float | None = None) -> float:
    """Seconds before retry number `retry` (0-based): exponential backoff with full jitter, so
    workers that failed together do not retry together; a server's Retry-After is honoured as a
    lower bound (capped at RETRY_AFTER_CAP_S)."""
    delay = random.uniform(0.0, min(max_s, initial_s * (2.0**retry)))
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, RETRY_AFTER_CAP_S))
    return delay
