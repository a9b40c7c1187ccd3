"""bench/gpu_check.py's CPU dry run: tiny models (`models=tiny`) through every code path the GPU
check takes on the lent GPU machine, in a subprocess, as CI runs it.

With `--device-imports` the packages that machine lacks (Ray, PyAV, omegaconf, xgrammar, ...) are
refused, so an import that would fail there fails here first; without it the VLM goes through
`LocalVLM` with xgrammar, the path a GPU machine with xgrammar would take. No timing is asserted:
the figures of a 2-core CI machine mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.media import REPO

pytestmark = pytest.mark.slow

MODELS = {"grounding_dino": "ground", "sam2": "ground", "clip": "embed", "qwen_vl": "annotate"}
ROW_KEYS = {"model", "stage", "path", "params_m", "dtype", "batch", "batches", "seconds", "frames_per_s", "tokens_per_s",
            "busy_fwd", "busy_nvml", "feeder_frames_per_s", "peak_gib", "note"}
TRAIN_KEYS = {"case", "params_m", "steps_per_s", "tokens_per_s", "flops_per_s", "flops_per_step", "matmul_flops_per_s",
              "mfu_vs_matmul", "mfu_vs_peak"}


@pytest.mark.parametrize("device_imports", [True, False], ids=["device-imports", "local-imports"])
def test_cpu_dry_run(tmp_path, device_imports):
    out = tmp_path / "gpu_check.json"
    command = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--cpu", "--json", str(out)]
    if device_imports:
        command.append("--device-imports")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    table = [line.split() for line in done.stdout.splitlines()]
    for model, stage in MODELS.items():
        assert any(row[:2] == [model, stage] for row in table if len(row) > 2), f"no table row for {model}:\n{done.stdout}"
    assert any(row[:1] == ["train"] for row in table), done.stdout

    report = json.loads(out.read_text())
    assert {"device", "torch", "transformers", "profile", "settings", "env", "models", "train", "skipped", "errors",
            "elapsed_s"} <= set(report)
    assert report["profile"] == "tiny" and report["device"] == "cpu"
    assert report["errors"] == {} and report["skipped"] == []
    assert {row["model"]: row["stage"] for row in report["models"]} == MODELS
    for row in report["models"]:
        assert set(row) == ROW_KEYS, row["model"]
        assert row["batches"] >= 1 and row["frames_per_s"] > 0 and 0 <= row["busy_fwd"] <= 1, row
        assert row["peak_gib"] is None and row["busy_nvml"] is None  # GPU-only readings
    vlm = next(row for row in report["models"] if row["model"] == "qwen_vl")
    assert vlm["tokens_per_s"] > 0
    assert vlm["path"].startswith("LocalVLM") is not device_imports, vlm["path"]
    assert report["train"] and set(report["train"][0]) == TRAIN_KEYS
    assert report["train"][0]["mfu_vs_matmul"] > 0
    sessions = report["train"][1]  # the multi-turn case: whole-session sequences vs per-prefix turns
    assert "sessions" in sessions["case"] and sessions["mfu_vs_matmul"] > 0
    assert sessions["sequence_turns_per_s"] > 0 and sessions["sequence_vs_prefix_turns"] > 0

    env = report["env"]
    if device_imports:
        assert {"ray", "av", "omegaconf", "xgrammar"} <= set(env["refused"])
        assert "curation.media (without its PyAV __init__)" in env["mapped"]
