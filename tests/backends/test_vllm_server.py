"""`vlm=vllm`'s server lifecycle on the session's local Ray, with the engine replaced by a stand-in
process speaking the same OpenAI API (tests/fixtures/openai_standin_server.py): servers placed as
CPU-only actors, requests spread over them through the OpenAI backend, a killed or crashed server
restarted with nothing lost or duplicated, start failures reported with the model and the cause,
and no process left behind. Waits are bounded by pytest-timeout, not asserted."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from pydantic import BaseModel

from curation.backends.vllm_pool import ServerPool, acquire_servers, release_servers
from curation.backends.vllm_server import ServerStartError, VLLMServerConfig, free_port
from curation.backends.vlm import VLMConfig, VLMError, VLMReply, VLMRequest, make_vlm

from tests.fixtures.openai_standin_server import command, processes_with

MODEL = "org/standin-vl"


class Caption(BaseModel):
    text: str


def standin(*flags: str, model: str = "{model}") -> list[str]:
    return command('{"text": "a red car"}', *flags, model=model)


def server_config(*flags: str, **fields) -> VLLMServerConfig:
    # num_gpus=0, num_cpus=0: the stand-ins fit beside the stage workers on a CPU-only test cluster.
    base = dict(command=standin(*flags), replicas=2, num_gpus=0, num_cpus=0, host="127.0.0.1", start_timeout_s=120,
                max_restarts=2)
    return VLLMServerConfig(**{**base, **fields})


def client(pool: ServerPool, server: VLLMServerConfig):
    cfg = VLMConfig(backend="vllm", model=MODEL, cache=False, max_in_flight=4, max_retries=4, backoff_initial_s=0.05,
                    backoff_max_s=0.2, timeout_s=10, server=server.model_copy(update={"urls": pool.urls}))
    return make_vlm(cfg)


def ask(backend, count: int, tag: str) -> list[VLMReply]:
    replies = backend.generate_many([VLMRequest(f"{tag} {i}", [], Caption) for i in range(count)])
    assert all(isinstance(r, VLMReply) and r.parsed == Caption(text="a red car") for r in replies), replies
    return replies


def stats(url: str) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=5) as response:
        return json.loads(response.read())


def pids(pool: ServerPool) -> list[int | None]:
    import ray

    return ray.get([actor.pid.remote() for actor in pool.actors])


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def healthy(url: str) -> bool:
    try:
        stats(url)
    except OSError:
        return False
    return True


def wait_until(predicate, poll_s: float = 0.2) -> None:
    while not predicate():  # bounded by the test's pytest-timeout
        time.sleep(poll_s)


@pytest.mark.timeout(240)
def test_two_servers_share_the_requests_and_stop_without_leftovers(ray_local):
    tag = f"spread-{uuid.uuid4().hex}"
    server = server_config("--engine-child", "--tag", tag)
    pool = ServerPool.start(server, MODEL)
    try:
        started = pids(pool)
        assert len(set(pool.urls)) == 2 and all(started), (pool.urls, started)
        with client(pool, server) as backend:
            replies = ask(backend, 16, "spread")
            answered = backend.answered()
        per_server = [stats(url)["chat_requests"] for url in pool.urls]
        assert all(n > 0 for n in per_server), per_server  # both served
        assert sum(per_server) == sum(answered.values()) == 16  # each request answered once
        assert sum(r.usage.requests for r in replies) == 16
    finally:
        pool.stop()
    assert not any(alive(pid) for pid in started)
    assert not processes_with(tag)  # nor their engine children


@pytest.mark.timeout(240)
def test_a_killed_server_is_restarted_on_its_url_and_requests_still_succeed(ray_local):
    import ray

    server = server_config()
    pool = ServerPool.start(server, MODEL)
    try:
        with client(pool, server) as backend:
            ask(backend, 8, "before")
            victim = pids(pool)[0]
            os.kill(victim, signal.SIGKILL)
            ask(backend, 16, "during")  # some meet the dead server: retried on the other one
            wait_until(lambda: ray.get(pool.actors[0].restart_count.remote()) == 1 and pids(pool)[0] not in (None, victim))
            wait_until(lambda: healthy(pool.urls[0]))
            assert stats(pool.urls[0])["pid"] == pids(pool)[0]  # the same URL, a new process

            def new_process_serves() -> bool:
                ask(backend, 4, "after")
                return stats(pool.urls[0])["chat_requests"] > 0

            wait_until(new_process_serves)  # the client takes the server back once its /health answers
        after = pids(pool)
    finally:
        pool.stop()
    assert not any(alive(pid) for pid in [victim, *after] if pid)


@pytest.mark.timeout(240)
def test_a_server_that_dies_mid_request_loses_nothing_and_duplicates_nothing(ray_local, tmp_path):
    import ray

    # One of the two servers exits on its 4th request without answering it (a crashed engine),
    # leaving its engine child behind, which must go before the restart.
    tag = f"crash-{uuid.uuid4().hex}"
    server = server_config("--die-after", "3", "--die-marker", str(tmp_path / "died"), "--engine-child", "--tag", tag)
    pool = ServerPool.start(server, MODEL)
    try:
        with client(pool, server) as backend:
            replies = ask(backend, 24, "crash")
            answered = backend.answered()
        assert (tmp_path / "died").exists()
        assert sum(answered.values()) == 24  # every request answered exactly once
        assert sum(r.usage.retries for r in replies) >= 1  # the lost one was asked again
        wait_until(lambda: sum(ray.get([a.restart_count.remote() for a in pool.actors])) == 1)
        wait_until(lambda: all(healthy(url) for url in pool.urls))
        assert len(processes_with(tag)) == 4  # two servers, two engines: the crashed one's engine was killed
    finally:
        pool.stop()
    assert not processes_with(tag)


@pytest.mark.timeout(60)  # far below start_timeout_s: a failure is reported when the server exits, not at the timeout
@pytest.mark.parametrize("command, cause", [
    (standin("--fail-at-start", "OSError: no model weights found at org/standin-vl"),
     "OSError: no model weights found at org/standin-vl"),
    (standin(model="another-model"), "not 'org/standin-vl'"),
    (["no-such-vllm-binary", "serve", "{model}"], "cannot run 'no-such-vllm-binary'"),
], ids=["exits", "serves-another-model", "not-installed"])
def test_a_server_that_fails_to_start_is_an_error_naming_model_and_cause(ray_local, command, cause):
    token = f"start-failure-{uuid.uuid4().hex}"  # finds this test's processes, if any were left
    with pytest.raises(ServerStartError) as error:
        acquire_servers(server_config(command=[*command, "--tag", token], start_timeout_s=600), MODEL)
    message = str(error.value)
    assert MODEL in message and cause in message, message
    assert not processes_with(token), "the servers of a failed start must be stopped"


@pytest.mark.timeout(240)
def test_stages_asking_for_the_same_servers_share_them_until_the_last_one_ends(ray_local):
    server = server_config(replicas=1)
    first = acquire_servers(server, MODEL)
    second = acquire_servers(server, MODEL)
    try:
        assert second is first
        (pid,) = pids(first)
        release_servers(first)
        assert alive(pid) and stats(first.urls[0])["pid"] == pid  # still serving the other stage
    finally:
        release_servers(second)
    assert not alive(pid)


def test_without_gpus_the_default_replica_count_is_an_error_that_says_what_to_set(ray_local):
    with pytest.raises(ServerStartError, match=r"cluster has 0 GPUs: set vlm.server.replicas"):
        acquire_servers(server_config(replicas=None, num_gpus=1), MODEL)


def test_replicas_0_sends_to_servers_started_elsewhere():
    from tests.fixtures.vlm_servers import ok, openai_server

    with openai_server(default=ok({"text": "a red car"})) as running:
        pool = acquire_servers(server_config(replicas=0, urls=[running.url]), MODEL)
        try:
            assert pool.urls == [running.url] and not pool.actors
            with client(pool, server_config()) as backend:
                ask(backend, 3, "external")
            assert len(running.requests) == 3
        finally:
            release_servers(pool)


@pytest.mark.timeout(60)
def test_with_every_server_gone_a_request_fails_once_none_came_back_in_time():
    # The first attempt finds the port closed and sets the server aside; the retry waits for its
    # /health (start_timeout_s) instead of failing at once, then gives up with the reason.
    down = VLMConfig(backend="vllm", model=MODEL, cache=False, max_retries=1, backoff_initial_s=0.01, timeout_s=5,
                     server=server_config(urls=[f"http://127.0.0.1:{free_port('127.0.0.1')}/v1"], start_timeout_s=2))
    with make_vlm(down) as backend:
        (reply,) = backend.generate_many([VLMRequest("anyone?", [], Caption)])
    assert isinstance(reply, VLMError) and reply.reason.startswith("vlm_connection: no vLLM server answered /health"), reply
