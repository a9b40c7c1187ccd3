"""`curate run` checks everything it can before Ray starts: a bad value, a missing input, a stage
given something it cannot read, a missing optional package. Each fails with exit code 2 and one
line naming the key or path, starts no Ray session and writes nothing under output=.

The CLI runs in a subprocess with RAY_TMPDIR pointed at an empty folder: `ray.init` would create
its session directory there, so an empty folder afterwards means Ray never started.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from curation.core.config import build_stage

CURATE = [sys.executable, "-m", "curation.cli"]


def _curate(tmp_path: Path, *args: str, hide: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    """Run `curate run args...`; its exit code and its non-empty output lines (stdout + stderr)."""
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray"), "COLUMNS": "80"}
    if hide:  # make these packages look uninstalled: find_spec answers None for a None sys.modules entry
        site = tmp_path / "hide"
        site.mkdir()
        (site / "sitecustomize.py").write_text(f"import sys\nfor m in {hide!r}:\n    sys.modules[m] = None\n")
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    done = subprocess.run([*CURATE, "run", *args], capture_output=True, text=True, env=env, timeout=120, check=False)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return done.returncode, lines


def _assert_failed_fast(tmp_path: Path, rc: int, lines: list[str], *expected: str) -> str:
    assert rc == 2, lines
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(("error:", "config error:")), line
    for text in expected:
        assert text in line, line
    out = tmp_path / "run"
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    ray_dir = tmp_path / "ray"
    assert not ray_dir.exists() or not any(ray_dir.iterdir()), list(ray_dir.rglob("*"))[:5]
    return line


@pytest.fixture
def media(tmp_path: Path) -> Path:
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"not decoded before Ray starts")
    return folder


def test_bad_values_are_named_by_print_config(tmp_path):
    rc, lines = _curate(tmp_path, "stage=sample_frames", "sample_frames.interval_s=abc", "retry_errors=maybe", "--print-config")
    _assert_failed_fast(tmp_path, rc, lines, "sample_frames.interval_s='abc'", "valid number", "retry_errors='maybe'")


@pytest.mark.parametrize("key", ["retry_errors", "stream", "progress"])
def test_run_level_booleans_reject_anything_but_true_or_false(tmp_path, key):
    rc, lines = _curate(tmp_path, "stage=ingest", f"{key}=maybe", "--print-config")
    _assert_failed_fast(tmp_path, rc, lines, f"{key}='maybe'", "true or false")


def test_print_config_still_prints_a_valid_config(tmp_path):
    rc, lines = _curate(tmp_path, "stage=sample_frames", "sample_frames.interval_s=2", "retry_errors=true", "--print-config")
    assert rc == 0, lines
    assert "retry_errors: true" in lines and "  interval_s: 2" in lines


def test_bad_value_of_a_later_stage_fails_before_the_first_runs(tmp_path, media):
    rc, lines = _curate(tmp_path, "pipeline=sessions", f"input={media}", f"output={tmp_path / 'run'}",
                        "sample_frames.interval_s=-1")
    _assert_failed_fast(tmp_path, rc, lines, "sample_frames.interval_s")


def test_a_bad_choice_names_the_choices(tmp_path, media):
    rc, lines = _curate(tmp_path, "stages=[ingest,embed]", f"input={media}", f"output={tmp_path / 'run'}",
                        "embed.embedder.backend=clip")
    _assert_failed_fast(tmp_path, rc, lines, "embed.embedder.backend='clip'", "'open_clip', 'transformers' or 'phash'")


@pytest.mark.parametrize("spec", ["missing", "missing/**/*.mp4"])
def test_missing_input_of_a_source_stage(tmp_path, spec):
    rc, lines = _curate(tmp_path, "stage=ingest", f"input={tmp_path / spec}", f"output={tmp_path / 'run'}")
    _assert_failed_fast(tmp_path, rc, lines, f"input={tmp_path / spec}", "no such file")


def test_a_manifest_stage_given_a_source_file_says_how_to_get_a_manifest(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"source_uri": "a.jpg", "target_uri": "b.jpg", "instruction": "x"}\n')
    rc, lines = _curate(tmp_path, "stage=dedup", f"input={pairs}", f"output={tmp_path / 'run'}")
    _assert_failed_fast(tmp_path, rc, lines, f"input={pairs} is not a manifest directory",
                        "stages=[ingest,dedup] instead of stage=dedup")


def test_a_manifest_stage_without_input_in_a_new_run_dir(tmp_path):
    rc, lines = _curate(tmp_path, "stage=dedup", f"output={tmp_path / 'run'}")
    _assert_failed_fast(tmp_path, rc, lines, "no input= was given", "stages=[ingest,dedup]")


def test_a_missing_optional_package_is_found_before_any_stage_runs(tmp_path, media):
    rc, lines = _curate(tmp_path, "stages=[ingest,scene_split,filter_quality]", f"input={media}",
                        f"output={tmp_path / 'run'}", hide=("nudenet",))
    _assert_failed_fast(tmp_path, rc, lines, "filter_quality", "'nudenet'", "pip install 'curation[nsfw]'",
                        "filter_quality.quality.nsfw.enabled=false")


def test_a_missing_package_of_the_configured_backend_is_named(tmp_path, media):
    rc, lines = _curate(tmp_path, "stages=[ingest,embed]", f"input={media}", f"output={tmp_path / 'run'}",
                        hide=("open_clip",))
    _assert_failed_fast(tmp_path, rc, lines, "embed needs the 'open_clip' package", "curation[clip]")


def test_only_the_configured_backend_s_packages_are_required():
    assert "open_clip" in build_stage("embed", overrides=["models=real"]).required_modules()
    assert build_stage("embed", overrides=["embed.embedder=phash"]).required_modules() == {}
    assert set(build_stage("dedup", overrides=["dedup.embedder=phash"]).required_modules()) == {"faiss"}
    assert build_stage("dedup", overrides=["dedup.embedder=phash", "dedup.search.method=exact"]).required_modules() == {}
    quiet = ["filter_quality.quality.nsfw.enabled=false", "filter_quality.quality.text_overlay.enabled=false"]
    assert build_stage("filter_quality", overrides=quiet).required_modules() == {}


def test_a_bad_plan_spec_is_named_before_ray_starts(tmp_path):
    # A source stage reads its own input: plan_scenes checks the spec's keys in the pre-flight.
    spec = tmp_path / "plan.yaml"
    spec.write_text("environments: [a harbour]\nconditions: [fog]\nconditions_per_scene: 1\n"
                    "scenes_per_environment: 1\ntasks: {teleport: 1}\nseed: 0\n")
    rc, lines = _curate(tmp_path, "pipeline=synthesis", f"input={spec}", f"output={tmp_path / 'run'}")
    _assert_failed_fast(tmp_path, rc, lines, f"input={spec}", "tasks: unknown task type(s) teleport", "known: style_transfer")
