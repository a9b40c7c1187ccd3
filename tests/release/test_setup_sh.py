"""scripts/setup.sh against a throwaway repository whose .venv/bin/python is a fake that records
its command lines: an environment still holding the pre-rename distribution `curate` is cleaned
before the install, a stale curate.egg-info is removed, and a second run installs nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "{log}"
case "$*" in
  *"distribution('curate')"*) [ -f "{marker}" ] ;;      # the old distribution is installed while the marker exists
  *"pip uninstall -y curate"*) rm -f "{marker}" ;;
  *) exit 0 ;;
esac
"""


@pytest.fixture
def repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    (repo / ".venv" / "bin").mkdir(parents=True)
    python = repo / ".venv" / "bin" / "python"
    python.write_text(FAKE_PYTHON.format(log=tmp_path / "python.log", marker=tmp_path / "old-dist-installed"))
    python.chmod(0o755)
    return repo


def _setup(repo: Path) -> list[str]:
    """Run setup.sh; the fake python's command lines of this run."""
    log = repo.parent / "python.log"
    log.unlink(missing_ok=True)
    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHON": "false"})  # never create a real venv here
    assert proc.returncode == 0, proc.stderr
    return log.read_text().splitlines() if log.exists() else []


def _index(calls: list[str], needle: str) -> int:
    return next(i for i, c in enumerate(calls) if needle in c)


def test_old_distribution_and_egg_info_are_removed_before_installing(repo):
    (repo.parent / "old-dist-installed").touch()
    stale = repo / "curate.egg-info"
    stale.mkdir()
    (stale / "entry_points.txt").write_text("[curate.stages]\ningest = stages.ingest:Ingest\n")

    calls = _setup(repo)
    uninstall = _index(calls, "-m pip uninstall -y curate")
    install = _index(calls, "-m pip install -e")
    assert uninstall < install, calls
    assert not stale.exists(), "setup.sh left the stale curate.egg-info in the repository root"
    assert (repo / ".venv" / ".curate-installed").exists()
    imports = calls[_index(calls, "-c import ")]
    assert "stages" not in {m.strip() for m in imports.removeprefix("-c import ").split(",")}
    assert any("entry_points" in c and "curate.stages" in c for c in calls), "no check for stale stage entry points"

    assert _setup(repo) == [], "a second run with nothing changed must not call python at all"


def test_a_clean_environment_is_not_uninstalled(repo):
    calls = _setup(repo)
    assert not any("uninstall" in c for c in calls), calls
    assert _index(calls, "-m pip install -e") >= 0


def test_a_changed_pyproject_reinstalls(repo):
    _setup(repo)
    with (repo / "pyproject.toml").open("a") as f:
        f.write("\n# changed\n")
    assert any("-m pip install -e" in c for c in _setup(repo))
