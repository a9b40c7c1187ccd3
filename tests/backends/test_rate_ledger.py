"""One request rate for every worker of a run: the rate ledger actor (`limits.create_rate_ledger`)
and the workers' `SharedRateLimiter`, against a loopback OpenAI-compatible server that records
when each request arrived.

A provider counts requests per API key, so the limit has to hold for the workers together: two
workers with their own limiters at the same `requests_per_minute` would send about twice it.
"""

from __future__ import annotations

import pickle
import time

import pytest

from curation.backends.limits import Bucket, _RateLedger, request_lease
from curation.backends.vlm import VLMConfig, VLMReply, VLMRequest, make_vlm
from curation.core.config import build_stage, compose
from curation.prompts.transition import TransitionAnnotation

from tests.backends.test_vlm import ANNOTATION, jpeg
from tests.fixtures.vlm_servers import ok, openai_server

RPM = 120  # two requests a second over the whole run
PER_WORKER = 6  # requests each of the two workers sends


class Worker:
    """One worker of a run, as a Ray actor: its own backend (own loop, own HTTP client), drawing its
    permits from the named rate ledger when given one, else from its own limiter."""

    def __init__(self, cfg: VLMConfig, rate_ledger: str | None):
        self.vlm = make_vlm(cfg)
        self.vlm.rate_ledger = rate_ledger
        self.vlm.open()

    def send(self, prompts: list[str]) -> int:
        """How many of the requests came back parsed."""
        replies = self.vlm.generate_many([VLMRequest(p, [jpeg()], TransitionAnnotation) for p in prompts])
        return sum(isinstance(r, VLMReply) and r.parsed is not None for r in replies)


def most_in_any_window(starts: list[float], burst: float, per_s: float) -> int:
    """The largest excess, over all spans [starts[i], starts[j]], of requests sent in the span over
    what the limit allows there (the initial burst plus the rate times the span's length)."""
    starts = sorted(starts)
    return max(j - i + 1 - (burst + per_s * (starts[j] - starts[i]))
               for i in range(len(starts)) for j in range(i, len(starts)))


# ---- the bucket and the ledger, no Ray -----------------------------------------------------------


def test_bucket_grants_what_it_holds_and_says_how_long_to_wait_otherwise():
    bucket = Bucket(60.0, capacity=3.0)  # one unit a second, three at most
    granted, wait = bucket.take(5.0, 1.0)
    assert wait == 0.0 and 3.0 <= granted < 3.1  # what it held (plus any refill since), not the 5 asked for
    granted, wait = bucket.take(1.0, 1.0)
    assert granted == 0.0 and 0.0 < wait <= 1.0
    # A request larger than the bucket is granted once the bucket is full, and leaves a debt.
    big = Bucket(60.0, capacity=2.0)
    assert big.take(5.0, 5.0)[0] == 5.0 and big.level < 0


def test_ledger_leases_never_exceed_the_burst_plus_the_rate():
    ledger = _RateLedger(requests_per_minute=600.0, tokens_per_minute=6000.0)
    t0 = time.monotonic()
    leases = [ledger.lease(requests=request_lease(600.0), tokens=50.0, tokens_needed=50.0) for _ in range(200)]
    elapsed = time.monotonic() - t0
    # 200 calls back to back: the buckets hand out their capacity, then only what refilled since,
    # and tell the other callers when to come back. A slower machine only makes the bound looser.
    assert any(lease.retry_in_s > 0 for lease in leases)
    assert 1.0 <= sum(lease.requests for lease in leases) <= request_lease(600.0) + 10.0 * elapsed + 1e-6
    assert 50.0 <= sum(lease.tokens for lease in leases) <= 100.0 + 100.0 * elapsed + 1e-6
    no_requests = _RateLedger(None, 6000.0).lease(requests=3.0, tokens=0.0, tokens_needed=0.0)
    assert (no_requests.requests, no_requests.tokens, no_requests.retry_in_s) == (0.0, 0.0, 0.0)


# ---- two workers on Ray -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    with openai_server(default=ok(ANNOTATION)) as srv:
        yield srv


def run_two_workers(ray, server, rate_ledger: str | None) -> list[float]:
    """Two Ray actors, each with its own backend at RPM, send PER_WORKER requests each at once;
    the arrival times at the server."""
    cfg = VLMConfig(backend="openai", model="m", base_url=server.url, cache=False, max_retries=0,
                    max_in_flight=8, requests_per_minute=RPM, timeout_s=10.0)
    actor = ray.remote(num_cpus=0)(Worker)
    workers = [actor.remote(cfg, rate_ledger) for _ in range(2)]
    ray.get([w.__ray_ready__.remote() for w in workers])  # both clients exist before either sends
    server.reset(default=ok(ANNOTATION))
    parsed = ray.get([w.send.remote([f"w{k}-p{i}" for i in range(PER_WORKER)]) for k, w in enumerate(workers)])
    for w in workers:
        ray.kill(w)
    assert parsed == [PER_WORKER, PER_WORKER]
    return [r.started for r in server.requests]


def test_two_workers_share_one_requests_per_minute(ray_local, server):
    from curation.backends.limits import create_rate_ledger

    ledger = create_rate_ledger("test-rates-shared", RPM, None)
    try:
        starts = run_two_workers(ray_local, server, "test-rates-shared")
    finally:
        ray_local.kill(ledger)
    assert len(starts) == 2 * PER_WORKER
    # Over every span of the run, no more requests arrived than the bucket's initial burst plus
    # RPM/60 a second allows, with one request of slack for arrival jitter at the server. Two
    # workers with their own limiters send 12 requests in about 3 s, 6 more than allowed.
    assert most_in_any_window(starts, burst=request_lease(RPM), per_s=RPM / 60.0) <= 1.0


# ---- a stage's run: the ledger is made on the driver and found by the workers ----------------------


def test_a_vlm_stage_creates_the_rate_ledger_on_the_driver_and_its_workers_use_it(ray_local, tmp_path):
    cfg = compose(["stage=annotate", f"input={tmp_path}", f"output={tmp_path / 'run'}", "vlm=openai",
                   "vlm.base_url=http://127.0.0.1:9", "vlm.api_key_env=null", f"vlm.requests_per_minute={RPM}",
                   "vlm.tokens_per_minute=60000"])
    stage = build_stage("annotate", cfg)
    stage.on_driver_start()
    try:
        name = stage._rate_ledger_name
        assert name is not None and ray_local.get_actor(name) is not None
        worker = pickle.loads(pickle.dumps(stage))  # what travels to a worker
        assert worker._rate_ledger_name == name and worker._rate_ledger is None
        worker.setup()
        assert worker._backend.rate_ledger == name
        worker._backend.close()
    finally:
        stage.on_driver_end()
    with pytest.raises(ValueError):
        ray_local.get_actor(name)
    unlimited = build_stage("annotate", compose(["stage=annotate", "vlm=openai", "vlm.api_key_env=null"]))
    unlimited.on_driver_start()
    assert unlimited._rate_ledger_name is None  # no limit configured: no actor, nothing on the request path
    unlimited.on_driver_end()
