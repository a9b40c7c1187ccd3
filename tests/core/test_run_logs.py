"""A `curate run` as its user sees it: progress, stage summaries and warnings on the console, none
of Ray's three startup/streaming notices, and everything else in `<run_dir>/logs/` (the driver's
log, one file per invocation, and the Ray workers' output); an `s3://` run uploads its logs at the
end of each stage. `cluster.dashboard=true` without the dashboard's packages fails before Ray starts.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from curation.core import ray_env, run_logs
from curation.core.config import compose
from curation.core.runner import preflight

from tests.e2e.test_s3 import BUCKET, keys, s3  # noqa: F401 (s3: the moto server fixture)
from tests.fixtures.media import EXAMPLES, REPO

CURATE = [sys.executable, "-m", "curation.cli", "run"]

# The three lines a run used to print: Ray's token-auth notice, the C++ core worker's error line
# about actor constructor arguments (ray#53727) and Ray Data's "Progress bars disabled".
RAY_NOISE = ("Token authentication is enabled", "has constructor arguments in the object store", "Progress bars disabled")


def _curate(*args: str, env: dict[str, str] | None = None) -> str:
    # A user's fresh shell: none of the RAY_* variables a Ray session of this test process (ray_local)
    # exported, e.g. RAY_AUTH_MODE, which would silence the token notice at its source; and a local
    # runtime of its own.
    env = {k: v for k, v in (env or os.environ).items() if not k.startswith("RAY_")}
    env.update(RAY_ADDRESS="", COLUMNS="200")
    done = subprocess.run([*CURATE, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    return output


@pytest.fixture
def media(tmp_path: Path) -> Path:
    folder = tmp_path / "media"
    folder.mkdir()
    shutil.copy(EXAMPLES / "intel-sample-videos" / "bottle-detection.mp4", folder)
    return folder


@pytest.mark.slow
def test_a_run_prints_summaries_but_no_ray_noise_and_logs_to_the_run_dir(tmp_path, media):
    run_dir = tmp_path / "run"
    output = _curate("stages=[ingest,scene_split]", f"input={media}", f"output={run_dir}", "models=tiny")
    for line in RAY_NOISE:
        assert line not in output, output
    assert "scene_split -> " in output and "funnel: " in output  # the stage summaries and the funnel
    logs = run_dir / "logs"
    (first,) = sorted(logs.glob("curate-*.log"))
    assert re.fullmatch(r"curate-\d{8}T\d{6}Z(-\d+)?\.log", first.name)
    text = first.read_text()
    assert "curate run stages=[ingest,scene_split]" in text and "stage scene_split finished" in text
    for line in RAY_NOISE:  # nothing lost: what the console no longer shows is in the log
        assert line in text, line
    (session,) = (logs / "ray").iterdir()
    workers = list(session.glob("worker-*"))
    assert any(":actor_name:MapWorker(MapBatches(ChainWorker))" in w.read_text() for w in workers), workers
    assert list(session.glob("python-core-driver-*.log"))

    # A rerun (everything already done) logs to a file of its own and keeps the first one.
    before = first.read_text()
    _curate("stages=[ingest,scene_split]", f"input={media}", f"output={run_dir}", "models=tiny", "progress=false")
    files = sorted(logs.glob("curate-*.log"))
    assert len(files) == 2 and files[0] == first and first.read_text() == before
    assert "progress=false" in files[1].read_text() and "progress=false" not in before


@pytest.mark.slow
def test_an_s3_run_uploads_its_logs_after_each_stage(s3, tmp_path, monkeypatch):  # noqa: F811
    env, client = s3
    run = f"s3://{BUCKET}/runs/logs"
    _curate("stage=ingest", "models=tiny", f"input=s3://{BUCKET}/data/manifests/examples.jsonl", f"output={run}",
            "progress=false", env=env)
    listed = keys(client, "runs/logs/logs/")
    (driver,) = [k for k in listed if re.fullmatch(r"runs/logs/logs/curate-[0-9TZ-]+\.log", k)]
    text = client.get_object(Bucket=BUCKET, Key=driver)["Body"].read().decode()
    assert "stage ingest finished" in text
    assert any("/ray/session_" in k and "/worker-" in k for k in listed), listed

    # Uploaded when a stage ends, not only when the run does: the runner's hook while logging.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(name, env[name])
    cfg = OmegaConf.create({"output": f"s3://{BUCKET}/runs/hook", "cluster": {"address": "ray://elsewhere:10001"}})
    with run_logs.capture(cfg, ["stage=x"], redirect_native=False) as logs:
        logging.getLogger("curation.test").info("a line from the first stage")
        assert keys(client, "runs/hook/logs/") == []
        run_logs.stage_finished([])
        (key,) = keys(client, "runs/hook/logs/")
        assert "a line from the first stage" in client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    assert not os.path.exists(logs.local)  # the local copy of an object-store run's logs is removed


def test_dashboard_without_its_packages_fails_in_preflight(tmp_path, monkeypatch):
    cfg = compose(["stage=ingest", f"input={EXAMPLES}", f"output={tmp_path / 'run'}", "cluster.dashboard=true"])
    monkeypatch.setattr(ray_env, "find_spec", lambda name: None if name == "aiohttp_cors" else object())
    with pytest.raises(ValueError, match=r"^cluster\.dashboard=true needs .*\(aiohttp_cors\): pip install 'curation\[dashboard\]'$"):
        preflight(cfg)
    # A cluster serves its own dashboard: the key changes nothing there, and nothing is checked.
    preflight(compose(["stage=ingest", f"input={EXAMPLES}", f"output={tmp_path / 'run'}", "cluster.dashboard=true",
                       "cluster.address=auto"]))
    monkeypatch.setattr(ray_env, "find_spec", lambda name: None)
    preflight(compose(["stage=ingest", f"input={EXAMPLES}", f"output={tmp_path / 'run'}"]))  # default: off
    assert not (tmp_path / "run").exists()
