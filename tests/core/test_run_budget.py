"""`budget.max_usd` caps a whole run: every paid stage draws on one ledger, whose total persists in
`<run_dir>/_spend.json`, so a second paid stage and a rerun spend only what is left; `curate
status` shows it.

The paid stages are the test plugin's `ask_number` and `ask_again` (one request per number)
against a scripted OpenAI-compatible server; each request costs 10 prompt tokens at $100,000 per
million, $1, so counts of requests and dollars are the same numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.compute as pc
import pytest

from curation.core import storage
from curation.core.config import compose
from curation.core.runinfo import run_spend
from curation.core.runner import run

from tests.fixtures.vlm_servers import ok, openai_server


def _args(tmp_path, server, max_usd: float, *extra: str) -> list[str]:
    paid = []
    for stage in ("ask_number", "ask_again"):
        paid += [f"{stage}.vlm.base_url={server.url}", f"{stage}.vlm.usd_per_mtok_input=100000", f"{stage}.vlm.usd_per_mtok_output=0",
                 f"{stage}.vlm.max_in_flight=1", f"{stage}.vlm.cache_dir={tmp_path / 'cache'}", f"{stage}.vlm.max_retries=0",
                 f"{stage}.max_usd={max_usd}", f"{stage}.resources.concurrency=[1,1]", f"{stage}.resources.batch_size=1"]
    # count://4 lists 0..3; count_source fails 3, so 3 numbers reach each paid stage.
    return ["stages=[count_source,ask_number,ask_again]", "input=count://4", f"output={tmp_path / 'run'}", "progress=false",
            "stream=false", *paid, *extra]


def _errors(stage_dir) -> list[str]:
    table = storage.read_table(str(stage_dir))
    return table.filter(pc.equal(table.column("status"), "error")).column("reason").to_pylist()


def test_one_budget_across_stages_and_attempts(tmp_path, plugin, ray_local):
    with openai_server(default=ok({"even": True})) as server:
        run(compose(_args(tmp_path, server, 4.5)))
        # ask_number spends $3; ask_again may start while the run is under $4.5: two requests, then it stops.
        assert len(server.requests) == 5
        spend = run_spend(str(tmp_path / "run"))
        assert spend["spent_usd"] == pytest.approx(5.0)
        assert spend["by_stage"] == {"ask_number": pytest.approx(3.0), "ask_again": pytest.approx(2.0)}
        assert len([r for r in _errors(tmp_path / "run" / "03-ask_again") if r.startswith("budget_exhausted")]) == 1

        # A rerun of the errors under the same cap spends nothing: the run's $5 are on record.
        run(compose(_args(tmp_path, server, 4.5, "retry_errors=true")))
        assert len(server.requests) == 5
        # Raised to $6.5, the rerun sends the one request left, and the total goes on from $5.
        run(compose(_args(tmp_path, server, 6.5, "retry_errors=true")))
        assert len(server.requests) == 6
    assert run_spend(str(tmp_path / "run"))["spent_usd"] == pytest.approx(6.0)
    assert not [r for r in _errors(tmp_path / "run" / "03-ask_again") if r.startswith("budget_exhausted")]


def test_curate_status_shows_the_cost_so_far(tmp_path, plugin, ray_local):
    with openai_server(default=ok({"even": True})) as server:
        run(compose(_args(tmp_path, server, 4.5)))
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "curation.cli", "status", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=120, check=True)
    shown = done.stdout + done.stderr  # the tables go to the console's stream
    assert "paid API calls: spent so far: $5.0000 (ask_again $2.0000, ask_number $3.0000)" in shown, shown
    stored = json.loads((tmp_path / "run" / "_spend.json").read_text())
    assert stored["spent_usd"] == pytest.approx(5.0)


def test_the_report_shows_the_run_spend(tmp_path, plugin, ray_local):
    from curation.audit.report import write_report

    with openai_server(default=ok({"even": True})) as server:
        run(compose(_args(tmp_path, server, 1.5)))  # $1 + $1: the second request crossed the cap, then it stopped
    page = write_report(str(tmp_path / "run")).read_text()
    spent = page.split('id="run-spend"', 1)[1].split("</p>", 1)[0]
    assert "<strong>$2.00</strong>" in spent, spent
