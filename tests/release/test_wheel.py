"""The wheel, installed: build it offline from what pyproject.toml packages, install it with
--no-deps into a fresh virtual environment, and run `curate` from there, from a directory outside
the checkout and with nothing of the checkout on sys.path.

The new environment does not install the dependencies a second time: a .pth file names the
development environment's site-packages. A path line in a .pth is only appended to sys.path; the
.pth files inside that directory are not run, so the editable install's import hook (its
`__editable__.curation-*.pth`) stays off and `curation` can only come from the wheel. The tests
check that it does (curation.__file__, the distribution's location, no editable finder on
sys.meta_path), that the pre-rename top-level `stages` and `prompts` are gone, that adapters and
prompt templates are found as package data, and run `pipeline=pairs` end to end with an adapter
loaded by name and the scripted judge of tests/fixtures (served from this process over HTTP).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import curation

from tests.fixtures.edits import build_edit_dataset, judge_answer
from tests.fixtures.vlm_servers import ok_from_prompt, openai_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
# Repository folder -> import package, for every folder that ships (pyproject's package-dir).
FOLDERS = {"curation": "curation", **{folder: pkg for pkg, folder in SETUPTOOLS["package-dir"].items()}}


@dataclass
class Installed:
    wheel: Path
    venv: Path
    site: Path  # the new environment's site-packages
    deps: list[str]  # the development environment's site-packages, named by the .pth
    cwd: Path  # an empty directory outside the checkout
    env: dict[str, str]

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def run(self, *argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(argv), cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        return proc

    def python_json(self, code: str) -> dict:
        """Run `code` in the new environment; it prints one JSON object as its last line."""
        return json.loads(self.run(self.python, "-c", code).stdout.strip().splitlines()[-1])


def _build_context(dest: Path) -> Path:
    """What the build reads (as the Docker image's context): pyproject.toml, the readme, the
    licence and every package folder; no build/ or *.egg-info left over from the checkout."""
    dest.mkdir()
    project = PYPROJECT["project"]
    for name in ["pyproject.toml", project["readme"], *project.get("license-files", [])]:
        shutil.copy2(ROOT / name, dest / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]", "*.egg-info"))
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _build_context(tmp / "src")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}"
    (wheel,) = (tmp / "dist").glob("curation-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, timeout=60).stdout.strip())
    # The development environment's pip installs into the new one (pip >= 22.3: --python).
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    paths = sysconfig.get_paths()
    deps = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    (site / "_curation_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))

    cwd = tmp / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONSAFEPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}", VIRTUAL_ENV=str(venv), PYTHONNOUSERSITE="1")
    return Installed(wheel=wheel, venv=venv, site=site, deps=deps, cwd=cwd, env=env)


def _shipped_files(pattern: str) -> set[str]:
    """Wheel paths of every file matching `pattern` under the shipped folders."""
    out = set()
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob(pattern):
            if "__pycache__" in path.parts or any(p.endswith(".egg-info") for p in path.parts):
                continue
            rel = path.relative_to(ROOT / folder)
            out.add("/".join([*package.split("."), *rel.parts]))
    return out


def test_wheel_holds_every_module_and_data_file(installed):
    with zipfile.ZipFile(installed.wheel) as zf:
        names = set(zf.namelist())
        dist_info = f"curation-{curation.__version__}.dist-info"
        meta = zf.read(f"{dist_info}/METADATA").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"curation", dist_info}, "the wheel ships one import package, curation"
    wanted = (_shipped_files("*.py") | _shipped_files("*.j2") | {f for f in _shipped_files("*.yaml") if "/config/" in f
                                                                  or f.startswith("curation/adapters/")}
              | _shipped_files("templates/*.html") | _shipped_files("static/*.css"))
    assert not wanted - names, f"missing from the wheel: {sorted(wanted - names)}"
    assert any(n.startswith("curation/adapters/") and n.endswith(".yaml") for n in names)
    assert any(n.startswith("curation/prompts/") and n.endswith(".j2") for n in names)
    assert "Name: curation\n" in meta and f"Version: {curation.__version__}\n" in meta
    assert "License-Expression: Apache-2.0" in meta and f"{dist_info}/licenses/LICENSE" in names
    assert "[console_scripts]\ncurate = curation.cli:app" in entry_points
    stage_lines = [ln for ln in entry_points.split("[curate.stages]")[1].split("[")[0].splitlines() if "=" in ln]
    assert stage_lines and all(ln.split("=", 1)[1].strip().startswith("curation.stages.") for ln in stage_lines)


PROBE = """
import importlib.metadata as md, json, sys
import curation, curation.stages, curation.prompts, curation.adapters
from curation.core.stage import registry
dist = md.distribution("curation")
print(json.dumps({
    "curation": curation.__file__, "stages": curation.stages.__file__, "prompts": curation.prompts.__file__,
    "adapters": curation.adapters.__file__, "version": curation.__version__, "dist_version": dist.version,
    "dist_at": str(dist.locate_file("")), "sys_path": sys.path,
    "meta_path": [type(f).__module__ + "." + type(f).__qualname__ for f in sys.meta_path],
    "editable_modules": sorted(m for m in sys.modules if "editable" in m.lower()),
    "stage_modules": sorted({cls.__module__ for cls in registry().values()}),
}))
"""


def test_curation_comes_from_the_wheel_not_the_checkout(installed):
    """How we know: every module's __file__ and the distribution's files are in the new
    environment's site-packages; sys.path holds the new environment and the development
    site-packages (the .pth) but nothing else of the checkout; no editable finder is installed."""
    got = installed.python_json(PROBE)
    site = installed.site.resolve()
    for key in ("curation", "stages", "prompts", "adapters"):
        assert Path(got[key]).resolve().is_relative_to(site), f"curation.{key} from {got[key]}, not the wheel in {site}"
    assert Path(got["dist_at"]).resolve() == site
    assert got["version"] == got["dist_version"] == curation.__version__
    deps = [Path(p).resolve() for p in installed.deps]
    for entry in got["sys_path"]:  # cv2 adds its own folder inside site-packages when imported
        resolved = Path(entry).resolve() if entry else installed.cwd.resolve()
        assert any(resolved.is_relative_to(d) for d in deps) or not resolved.is_relative_to(ROOT), (
            f"the checkout is on sys.path: {entry!r}")
    assert not got["editable_modules"], got["editable_modules"]
    assert not [f for f in got["meta_path"] if "editable" in f.lower()], got["meta_path"]
    assert got["stage_modules"] and all(m.startswith("curation.stages.") for m in got["stage_modules"]), got["stage_modules"]


@pytest.mark.parametrize("module", ["stages", "prompts", "manifests"])
def test_top_level_packages_of_the_checkout_do_not_import(installed, module):
    proc = installed.run(installed.python, "-c", f"import {module}", check=False)
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, (
        f"`import {module}` works in the installed environment:\n{proc.stdout}{proc.stderr}")


def test_adapters_and_prompt_templates_are_package_data(installed):
    got = installed.python_json("""
import json
from importlib.resources import files
from curation.prompts.templates import load_template, template_names
from curation.sources.edit_datasets import adapter_names, load_adapter
adapters = sorted(p.name for p in files("curation.adapters").iterdir() if p.name.endswith(".yaml"))
templates = sorted(p.name for p in files("curation.prompts").iterdir() if p.name.endswith(".j2"))
print(json.dumps({"adapters": adapters, "templates": templates, "names": adapter_names(),
                  "loaded": {n: load_adapter(n).dataset for n in adapter_names()},
                  "prompts": {n: load_template(n).file for n in template_names()},
                  "where": str(files("curation.adapters")), "prompts_at": str(files("curation.prompts"))}))
""")
    adapters = sorted(p.name for p in (ROOT / "manifests" / "adapters").glob("*.yaml"))
    assert got["adapters"] == adapters and "generic.yaml" in adapters
    assert sorted(got["names"]) == sorted(Path(a).stem for a in adapters), "adapter_names() does not see the packaged adapters"
    assert set(got["loaded"]) == {Path(a).stem for a in adapters}
    assert got["templates"] == sorted(p.name for p in (ROOT / "prompts").glob("*.j2"))
    assert set(got["prompts"].values()) <= set(got["templates"])
    for key in ("where", "prompts_at"):
        assert Path(got[key]).resolve().is_relative_to(installed.site.resolve()), got[key]


def test_curate_command(installed):
    version = installed.run("curate", "--version")
    assert version.stdout.strip() == f"curate {curation.__version__}"
    assert Path(shutil.which("curate", path=installed.env["PATH"])).parent == installed.venv / "bin"
    short = installed.run("curate", "-h")
    assert "Usage: curate" in short.stdout and "--version" in short.stdout
    assert installed.run("curate", "run", "-h").stdout == installed.run("curate", "run", "--help").stdout
    listing = installed.run("curate", "stages").stdout
    for stage in PYPROJECT["project"]["entry-points"]["curate.stages"]:
        assert f"{stage}  (v" in listing, f"`curate stages` does not list {stage}"
    assert "pairs: ingest -> edit_score" in listing


def test_pairs_pipeline_runs_from_the_wheel(installed, tmp_path):
    """`curate run pipeline=pairs` with the bundled `generic` adapter named on the command line and
    the scripted OpenAI-compatible judge: listing, judging, dedup and shards, all from the wheel."""
    import webdataset as wds

    root = tmp_path / "edits"
    edits = build_edit_dataset(root)
    out = tmp_path / "run"
    with openai_server(default=ok_from_prompt(judge_answer(edits))) as server:
        installed.run("curate", "run", "pipeline=pairs", "ingest.adapter=generic", "models=tiny", f"input={root}",
                      f"output={out}", "vlm=openai", f"vlm.base_url={server.url}", "vlm.model=judge", "vlm.api_key_env=null",
                      "vlm.max_retries=1", "vlm.backoff_initial_s=0.01", f"vlm.cache_dir={tmp_path / 'vlm-cache'}",
                      "shard.max_frames=24", "progress=false", "cluster.num_cpus=4", timeout=300)
        asked = len(server.requests)
    assert asked > 0, "the judge was never called"
    listing = json.loads((out / "01-ingest" / "_run.json").read_text())["listing"]
    assert listing["dataset"] == "generic" and listing["rows_listed"] == len(edits)
    tars = sorted((out / "shards").rglob("*.tar"))
    assert tars, f"no shards under {out / 'shards'}"
    samples = [s for tar in tars for s in wds.WebDataset(str(tar), shardshuffle=False)]
    assert samples and all(json.loads(s["json"])["kind"] in ("pair", "triplet") for s in samples)
