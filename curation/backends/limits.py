"""Client-side flow control shared by every VLM backend: rate limits, retry policy, backoff.

Everything here runs on a backend's own event loop. Providers enforce their limits over short
windows (OpenAI quantises per-minute limits to per-second buckets), so the limiters pace
requests evenly instead of allowing a minute's burst up front.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

# A Retry-After longer than this is treated as this long: a worker should not sleep for an hour
# on one request; after the retries it fails with a reason and a rerun picks it up.
RETRY_AFTER_CAP_S = 300.0
# Status codes worth another attempt: request timeout, conflict, rate limit, server errors.
RETRYABLE_STATUS = frozenset({408, 409, 429})


class TokenBucket:
    """Refills at `per_minute / 60` units per second up to `capacity`. `acquire(n)` waits until the
    bucket holds `min(n, capacity)` units, then takes `n`: the level may go negative, so a request
    larger than the bucket waits for the refill instead of deadlocking. Waiters are served in
    arrival order (asyncio.Lock is fair)."""

    def __init__(self, per_minute: float, capacity: float):
        if per_minute <= 0 or capacity <= 0:
            raise ValueError(f"rate and capacity must be positive, got {per_minute}/min, capacity {capacity}")
        self.rate_per_s = per_minute / 60.0
        self.capacity = capacity
        self.level = capacity
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate_per_s)
        self._updated = now

    async def acquire(self, amount: float = 1.0) -> None:
        async with self._lock:
            need = min(amount, self.capacity)
            while True:
                self._refill()
                if self.level >= need:
                    self.level -= amount
                    return
                await asyncio.sleep((need - self.level) / self.rate_per_s)

    def adjust(self, delta: float) -> None:
        """Correct an estimate once the real amount is known (positive: took more than estimated)."""
        self._refill()
        self.level = min(self.capacity, self.level - delta)


class RateLimiter:
    """Requests per minute (paced one at a time: 600/min means one every 0.1 s) and tokens per
    minute (one second's worth may go at once; an estimate is taken before sending and corrected
    with the usage the provider reports)."""

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
