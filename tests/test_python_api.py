"""The public Python API (`from curation import ...`) and README.md's "Python API" example, run as
written there in a fresh interpreter, so the README cannot drift from what works."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys

import pytest

import curation
from curation import compose

from tests.fixtures.media import REPO

README = REPO / "README.md"


def readme_section(title: str) -> str:
    """The text of README.md's `## <title>` section, up to the next `## ` heading."""
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README.read_text(), flags=re.DOTALL | re.MULTILINE)
    assert found, f"README.md has no '## {title}' section"
    return found.group(1)


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def fresh_python(code: str, cwd=REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def test_every_public_name_is_the_object_its_module_defines():
    assert sorted(curation.__all__) == sorted(["__version__", *curation._EXPORTS])
    for name in curation._EXPORTS:
        value = getattr(curation, name)
        assert value is getattr(importlib.import_module(curation._EXPORTS[name]), name), name
    assert {"compose", "run", "build_stage", "Stage", "SourceStage", "SinkStage", "StageResult", "ConfigError"} <= set(dir(curation))
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        curation.nonexistent  # noqa: B018 - the lookup is the test


def test_importing_curation_and_its_api_loads_neither_ray_nor_torch():
    heavy = "sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'torch', 'transformers', 'cv2', 'av'})"
    out = fresh_python(f"import sys, curation\nprint({heavy})\n"
                       f"from curation import Stage, build_stage, compose, run\nprint({heavy})\n").stdout
    assert out.splitlines() == ["[]", "[]"]


def test_stages_composes_with_a_pipeline():
    # The pipeline's stage list is replaced; its settings for the stages it keeps still apply.
    pipeline = compose(["pipeline=sessions_vincie"])
    chosen = compose(["pipeline=sessions_vincie", "stages=[ingest,scene_split]"])
    assert list(chosen.stages) == ["ingest", "scene_split"] and chosen.pipeline == "sessions_vincie"
    assert chosen.scene_split == pipeline.scene_split
    assert chosen.scene_split.max_clip_s is None and compose([]).scene_split.max_clip_s is not None


@pytest.mark.slow
def test_the_readme_example_runs_as_written_and_prints_what_the_readme_shows(tmp_path):
    section = readme_section("Python API")
    [example] = code_blocks(section, "python")
    [expected] = code_blocks(section, "text")
    # The example's relative paths, from a directory that is not the repository (its runs/ stays clean).
    for name in ("manifests", "examples"):
        (tmp_path / name).symlink_to(REPO / name)
    out = fresh_python(example, cwd=tmp_path).stdout
    assert out.splitlines() == expected.splitlines()
    assert (tmp_path / "runs" / "api-example" / "01-ingest" / "_run.json").exists()


def test_run_from_python_fails_before_ray_starts_as_the_cli_does(tmp_path):
    # A missing input: ValueError naming it, no Ray session started in this interpreter, nothing written.
    code = (f"import sys\nfrom curation import compose, run\n"
            f"try:\n    run(compose(['stage=ingest', 'input={tmp_path / 'missing'}', 'output={tmp_path / 'run'}']))\n"
            f"except ValueError as e:\n    print(e)\n"
            f"print('ray' in sys.modules and sys.modules['ray'].is_initialized())\n")
    out = fresh_python(code).stdout.splitlines()
    assert out == [f"input={tmp_path / 'missing'}: no such file, directory or glob match", "False"], out
    assert not (tmp_path / "run").exists()
