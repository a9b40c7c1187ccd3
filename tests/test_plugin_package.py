"""docs/plugins.md's plugin package, installed for real and run in a pipeline.

The package's files are the guide's own code blocks, so the guide cannot drift from what works.
They are written into a temporary directory, built and installed by pip (its wheel, its
`curate.stages` entry point in an installed dist-info) into a temporary virtualenv, and `curate`
run by that virtualenv's Python finds the stage through the entry point alone: the repository is
not on its path. The virtualenv is layered on the environment running the tests (a `.pth` file adds
its site-packages), so curate and its dependencies are there without a download or a reinstall,
and the install is offline (`--no-index --no-build-isolation`: setuptools comes from that
environment too)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.fixtures.media import REPO

GUIDE = REPO / "docs" / "plugins.md"
PACKAGE_FILES = ("pyproject.toml", "curate_longest/__init__.py")  # each a code block whose first line names it


def guide_file(path: str) -> str:
    """The code block of docs/plugins.md whose first line is the comment `# <path>`."""
    blocks = re.findall(r"^```\w+\n(# (\S+)\n.*?)^```$", GUIDE.read_text(), flags=re.DOTALL | re.MULTILINE)
    found = [text for text, name in blocks if name == path]
    assert len(found) == 1, f"docs/plugins.md has {len(found)} code blocks starting '# {path}'"
    return found[0]


def layered_venv(where: Path) -> Path:
    """A virtualenv that also sees this environment's packages; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # addsitedir, not a bare path line: the base environment's own .pth files (curation's editable
    # install among them) must be processed too.
    Path(site, "_base_environment.pth").write_text(f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n")
    return python


def call(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
def test_the_guides_plugin_package_installs_into_a_virtualenv_and_runs_in_a_pipeline(tmp_path):
    assert importlib.util.find_spec("curate_longest") is None  # only the virtualenv below has it
    package = tmp_path / "curate-longest"
    for path in PACKAGE_FILES:
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text(guide_file(path))
    python = layered_venv(tmp_path / "venv")
    call(python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", str(package),
         cwd=tmp_path)
    work = tmp_path / "work"  # not the repository: the stage must come from the installed package
    work.mkdir()
    curate = ("-m", "curation.cli")

    listing = call(python, *curate, "stages", "longest", cwd=work).stdout
    assert "longest  (v1)" in listing
    assert "Keeps videos of at least `min_s` seconds" in listing
    assert "longest.min_s = 5.0" in listing and "drop videos shorter than this (seconds)" in listing
    assert "longest.keep = null" in listing

    stages = "stages=[ingest,longest]"
    shown = yaml.safe_load(call(python, *curate, "run", stages, "--print-config", cwd=work).stdout)
    assert shown["stages"] == ["ingest", "longest"]
    assert shown["longest"]["min_s"] == 5.0 and shown["longest"]["keep"] is None
    assert shown["longest"]["resources"]["num_cpus"] == 0.25 and shown["longest"]["resources"]["batch_size"] == 32

    run_dir = tmp_path / "run"
    call(python, *curate, "run", stages, f"input={REPO / 'manifests' / 'examples.jsonl'}", f"output={run_dir}",
         "longest.min_s=25", "longest.keep=1", "progress=false", cwd=work)
    rows = sorted(pq.read_table(run_dir / "02-longest").to_pylist(), key=lambda r: r["duration_s"])
    # The example videos last 24.0, 30.2 and 39.9 s: one too short, one not the longest, one kept.
    assert [(r["source_uri"].rsplit("/", 1)[-1], r["status"], r["reason"], r["length_rank"]) for r in rows] == [
        ("testvideo.mp4", "dropped", "too_short: 24.0 s", None),
        ("car-detection.mp4", "dropped", "not_longest: rank 1", 1),
        ("bottle-detection.mp4", "ok", None, 0),
    ]
    record = json.loads((run_dir / "02-longest" / "_run.json").read_text())
    assert record["stage_config"]["keep"] == 1 and record["stage_config"]["min_s"] == 25.0
    assert record["counts"]["total"] == 3 and record["counts"]["ok"] == 1
