"""`curate run --dry-run`, as a user runs it: the CLI in a subprocess against loopback API servers.
Per stage it says the fragments it would run and skip, whether the API key is set and the endpoint
answers (asked with `GET /models`, generating nothing), and what the run would send and cost;
it starts no Ray, writes nothing, and exits 1 when the run would fail.

The paid stages are the test plugin's `ask_number` and `ask_again` (one request per number);
`count://4` lists 0..3 in two fragments, and count_source fails the number 3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from curation.core.config import compose
from curation.core.runner import run

from tests.fixtures.vlm_servers import gemini_server, ok, openai_server

KEY = "sk-test-dry-run"


def _args(tmp_path: Path, url: str, *extra: str, stages: str = "count_source,ask_number,ask_again") -> list[str]:
    paid = []
    for stage in ("ask_number", "ask_again"):
        paid += [f"{stage}.vlm.base_url={url}", f"{stage}.vlm.api_key_env=DRY_RUN_KEY", f"{stage}.vlm.usd_per_mtok_input=100000",
                 f"{stage}.vlm.usd_per_mtok_output=0", f"{stage}.vlm.cache_dir={tmp_path / 'cache'}",
                 f"{stage}.expected.prompt_tokens=10", f"{stage}.expected.completion_tokens=0"]
    return [f"stages=[{stages}]", "input=count://4", f"output={tmp_path / 'run'}", "progress=false",
            "count_source.fragment_size=2", *paid, *extra]


def _dry_run(tmp_path: Path, plugin: Path, args: list[str], key: str | None = KEY) -> tuple[int, str]:
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray"), "COLUMNS": "250",
           "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])}
    env.pop("DRY_RUN_KEY", None)
    if key is not None:
        env["DRY_RUN_KEY"] = key
    done = subprocess.run([sys.executable, "-m", "curation.cli", "run", *args, "--dry-run"], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert not (tmp_path / "ray").exists() or not any((tmp_path / "ray").iterdir()), "Ray was started"
    return done.returncode, done.stdout + done.stderr


def _run_keyless(tmp_path: Path, url: str) -> None:
    """Run count_source and ask_number for real (Ray workers do not see a key set after Ray started,
    so the server takes any key here; the key variable is how to reach the API, not part of the config)."""
    run(compose(_args(tmp_path, url, "ask_number.vlm.api_key_env=null", stages="count_source,ask_number")))


def _row(output: str, stage: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith(f"│ {stage} "))
    return [cell.strip() for cell in line.strip("│").split("│")]


def test_a_fresh_run_lists_its_fragments_checks_each_api_and_writes_nothing(tmp_path, plugin):
    with openai_server() as server:
        server.required_key = KEY
        rc, out = _dry_run(tmp_path, plugin, _args(tmp_path, server.url))
    assert rc == 0, out
    assert _row(out, "count_source")[1:4] == ["2", "0", "4"]  # 2 fragments to run, none done, 4 sources
    ask = _row(out, "ask_number")
    assert ask[3] == "?" and ask[4] == "ok: answers; serves test-model"
    assert ask[5:8] == ["1,000 per 1,000 rows", "10,000", "$1,000.0000 per 1,000 rows"]
    assert "ask_number: 1 requests per row, 10+0 tokens per request, configured (ask_number.expected)" in out
    assert server.lookups == [KEY, KEY] and not server.requests  # asked, never generated
    assert not (tmp_path / "run").exists()


def test_after_a_partial_run_it_skips_finished_fragments_and_uses_measured_use(tmp_path, plugin, ray_local):
    with openai_server(default=ok({"even": True})) as server:
        _run_keyless(tmp_path, server.url)
        server.required_key = KEY
        sent = len(server.requests)
        rc, out = _dry_run(tmp_path, plugin, _args(tmp_path, server.url))
        assert len(server.requests) == sent == 3
    assert rc == 0, out
    assert _row(out, "count_source")[1:3] == ["0", "2"]
    assert _row(out, "ask_number")[1:4] == ["0", "2", "3"]
    again = _row(out, "ask_again")
    assert again[1:4] == ["2", "0", "3"]  # numbers 0, 1 and 2 reach it, exactly
    assert again[5:8] == ["3", "30", "$3.0000"]
    assert "ask_number: 1 requests per row, 10+5 tokens per request, measured on 3 rows" in out
    assert "spent so far $3.0000; no budget.max_usd; estimated for the known rows $3.0000" in out


def test_a_missing_key_or_a_dead_endpoint_fails_the_dry_run(tmp_path, plugin):
    with openai_server() as server:
        rc, out = _dry_run(tmp_path, plugin, _args(tmp_path, server.url), key=None)
        assert not server.lookups  # no request without the key
    assert rc == 1 and "would fail: stage ask_number: vlm_auth: environment variable DRY_RUN_KEY is not set" in out, out
    rc, out = _dry_run(tmp_path, plugin, _args(tmp_path, "http://127.0.0.1:9/v1", "ask_number.vlm.timeout_s=5",
                                               "ask_again.vlm.timeout_s=5"))
    assert rc == 1 and "would fail: stage ask_number: vlm_connection" in out, out
    with openai_server() as server:
        server.required_key = "sk-another"
        rc, out = _dry_run(tmp_path, plugin, _args(tmp_path, server.url))
    assert rc == 1 and "would fail: stage ask_number: vlm_auth: HTTP 401" in out, out


def test_a_model_the_endpoint_does_not_serve_is_named(tmp_path, plugin):
    with openai_server() as server:
        server.models = ["other-model"]
        rc, out = _dry_run(tmp_path, plugin, _args(tmp_path, server.url))
    assert rc == 1 and "model_not_served: test-model is not among the 1 models it serves (other-model)" in out, out


def test_gemini_endpoints_are_asked_for_the_model(tmp_path, plugin):
    with gemini_server() as server:
        args = _args(tmp_path, server.url, "ask_number.vlm.backend=gemini", "ask_again.vlm.backend=gemini")
        rc, out = _dry_run(tmp_path, plugin, args)
        assert server.lookups == [KEY, KEY]
        server.models = []
        rc_missing, out_missing = _dry_run(tmp_path, plugin, args)
    assert rc == 0 and _row(out, "ask_number")[4] == "ok: answers; serves test-model", out
    assert rc_missing == 1 and "models/test-model is not found" in out_missing, out_missing


def test_a_changed_config_is_reported_as_what_the_run_would_do(tmp_path, plugin, ray_local):
    with openai_server(default=ok({"even": True})) as server:
        _run_keyless(tmp_path, server.url)
        changed = _args(tmp_path, server.url, "ask_number.vlm.temperature=0.5")
        rc, out = _dry_run(tmp_path, plugin, changed)
        rc_keep, out_keep = _dry_run(tmp_path, plugin, [*changed, "on_change=keep"])
    assert rc == 1 and "ask_number.vlm.temperature: 0.0 -> 0.5" in out and "the run would stop" in out, out
    assert rc_keep == 0 and "on_change=keep keeps those parts" in out_keep, out_keep
