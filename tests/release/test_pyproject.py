"""pyproject.toml against the tree, without building anything: the explicit `packages` list names
every package directory (and nothing else), the extras refer to the distribution by its own name,
and the lint configuration is what scripts/test.sh runs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import curation
from curation.prompts import editscore

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
# The folders whose packages ship; tests/, bench/, docker/ and docs/ never do.
SHIPPED_ROOTS = {"curation": "curation", "stages": "curation.stages", "prompts": "curation.prompts",
                 "manifests/adapters": "curation.adapters"}


def _package_dirs() -> dict[str, Path]:
    """Import name -> directory for every directory with an __init__.py under the shipped roots."""
    found: dict[str, Path] = {}
    for root, name in SHIPPED_ROOTS.items():
        base = ROOT / root
        for init in sorted(base.rglob("__init__.py")):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(base)
            found[".".join([name, *rel.parts])] = init.parent
    return found


def test_packages_list_names_every_package_directory():
    listed = SETUPTOOLS["packages"]
    assert len(listed) == len(set(listed)), "duplicates in [tool.setuptools] packages"
    on_disk = _package_dirs()
    missing, extra = sorted(set(on_disk) - set(listed)), sorted(set(listed) - set(on_disk))
    assert not missing, f"[tool.setuptools] packages lacks {missing}: their modules would not be in the wheel"
    assert not extra, f"[tool.setuptools] packages names {extra}, which have no __init__.py in the tree"


def test_package_dir_maps_the_top_level_folders():
    assert SETUPTOOLS["package-dir"] == {name: root for root, name in SHIPPED_ROOTS.items() if root != "curation"}


def test_no_stray_python_packages_outside_the_list():
    """A folder of .py files without __init__.py under a shipped root would silently stay out of the
    wheel (or be a namespace package only in the checkout)."""
    for root in SHIPPED_ROOTS:
        for py in (ROOT / root).rglob("*.py"):
            if "__pycache__" in py.parts:
                continue
            assert (py.parent / "__init__.py").exists(), f"{py.relative_to(ROOT)} is in no package"


def test_package_data_patterns_match_files():
    dirs = _package_dirs()
    for package, patterns in SETUPTOOLS["package-data"].items():
        assert package in dirs, f"package-data for {package}, which is not a package"
        for pattern in patterns:
            assert list(dirs[package].glob(pattern)), f"package-data {package}: {pattern!r} matches no file"


def test_version_is_the_packages():
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert SETUPTOOLS["dynamic"]["version"] == {"attr": "curation.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", curation.__version__)


def test_metadata():
    project = PYPROJECT["project"]
    assert project["name"] == "curation"
    assert project["scripts"] == {"curate": "curation.cli:app"}
    assert project["license"] == "Apache-2.0"
    for path in [project["readme"], *project["license-files"]]:
        assert (ROOT / path).is_file(), path
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert project["description"] and project["requires-python"] == ">=3.10"
    assert not any(c.startswith("License ::") for c in project["classifiers"]), "PEP 639: the licence is the SPDX expression"
    versions = {c.rsplit(" :: ", 1)[1] for c in project["classifiers"] if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    assert "3.10" in versions and "3.11" in versions


def test_extras_refer_to_the_distribution_by_its_name():
    name = canonicalize_name(PYPROJECT["project"]["name"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    self_refs = [Requirement(r) for reqs in extras.values() for r in reqs
                 if canonicalize_name(Requirement(r).name) in (name, "curate")]
    assert self_refs, "the `all` extra should name the project's other extras"
    for req in self_refs:
        assert canonicalize_name(req.name) == name, f"{req}: the distribution is {name}, not {req.name}"
        assert set(req.extras) <= set(extras), f"{req}: unknown extras {set(req.extras) - set(extras)}"
    assert {str(r) for r in self_refs} == {"curation[clip,faiss,mllm,nsfw,quality,s3]"}
    # vllm pins its own torch (pyproject.toml says why): installed apart, never part of `all`; editscore
    # is installed without its dependencies (scripts/setup.sh), which an extra in `all` would resolve;
    # dashboard (Ray's web UI for cluster.dashboard=true) is opt-in: no stage needs its server stack.
    assert set(Requirement(extras["all"][0]).extras) == set(extras) - {"all", "dev", "vllm", "editscore", "dashboard"}


def test_editscore_is_installed_at_its_pin_without_dependencies():
    """edit_score reads EditScore's prompts from the package pinned in pyproject's `editscore` extra;
    setup.sh and the Dockerfile install exactly that version, with --no-deps."""
    (pin,) = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["editscore"]]
    assert pin.name == "editscore" and str(pin.specifier).startswith("==")
    version = str(pin.specifier).removeprefix("==")
    assert version == editscore.PINNED, "prompts/editscore.py checks the installed version against its own pin"
    assert re.search(rf"pip install --no-deps '?editscore=={re.escape(version)}'?", (ROOT / "scripts" / "setup.sh").read_text())
    assert re.search(rf"pip install [^\n]*--no-deps [^\n]*editscore=={re.escape(version)}", (ROOT / "docker" / "Dockerfile").read_text())


def test_stage_entry_points_name_the_packaged_modules():
    """Never the pre-rename top-level `stages.*`: every entry point resolves inside `curation.stages`."""
    eps = PYPROJECT["project"]["entry-points"]["curate.stages"]
    for name, target in eps.items():
        module, _, attr = target.partition(":")
        assert module == f"curation.stages.{name}" and attr, f"{name} = {target!r}"
        assert (ROOT / "stages" / f"{name}.py").is_file(), f"{name}: stages/{name}.py does not exist"


def test_ruff_is_configured_and_run_by_the_test_script():
    dev = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]}
    assert "ruff" in dev
    ruff = PYPROJECT["tool"]["ruff"]
    assert ruff["target-version"] == "py" + PYPROJECT["project"]["requires-python"].removeprefix(">=").replace(".", "")
    assert ruff["line-length"] >= 100 and ruff["lint"]["select"]
    lines = [ln.strip() for ln in (ROOT / "scripts" / "test.sh").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    lint = next(i for i, ln in enumerate(lines) if re.match(r"(\.venv/bin/)?ruff check\b", ln))
    tests = next(i for i, ln in enumerate(lines) if "pytest" in ln)
    assert lint < tests, "scripts/test.sh must lint before it runs pytest"
    assert "set -euo pipefail" in lines, "a lint failure must stop scripts/test.sh"
    assert "|| true" not in lines[lint]


@pytest.mark.parametrize("script", ["setup.sh", "test.sh"])
def test_scripts_import_no_top_level_stages(script):
    text = (ROOT / "scripts" / script).read_text()
    for found in re.findall(r'python -c "import ([\w., ]+)"', text):
        modules = {m.strip() for m in found.split(",")}
        assert not modules & {"stages", "prompts"}, f"scripts/{script} imports a top-level {modules & {'stages', 'prompts'}}"
