"""Write an empty copy of the project that pip can install: pyproject.toml plus an empty
`__init__.py` for every package it lists, the version attribute, the readme and the licence files.

The Dockerfile installs this skeleton with the `all` extra to put every dependency into a layer
keyed on pyproject.toml alone, before any code is copied; a code change then rebuilds only the
small layer that installs the real project (with --no-deps) on top.

    python skeleton.py PYPROJECT OUT_DIR
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path


def package_dir(name: str, mapping: dict[str, str]) -> Path:
    """Where setuptools looks for package `name` under `package-dir` (longest mapped parent wins)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        parent = ".".join(parts[:i])
        if parent in mapping:
            return Path(mapping[parent], *parts[i:])
    return Path(mapping.get("", "."), *parts)


def write_skeleton(pyproject: Path, out: Path) -> list[Path]:
    """The files written under `out`, relative to it."""
    config = tomllib.loads(pyproject.read_text())
    project, setuptools = config["project"], config.get("tool", {}).get("setuptools", {})
    out.mkdir(parents=True, exist_ok=True)
    if (out / "pyproject.toml").resolve() != pyproject.resolve():
        shutil.copyfile(pyproject, out / "pyproject.toml")
    written: list[Path] = []

    def touch(rel: Path, text: str = "") -> None:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(text)
            written.append(rel)

    packages = setuptools.get("packages")
    if not isinstance(packages, list):
        raise SystemExit("skeleton.py: [tool.setuptools] packages must be an explicit list")
    mapping = setuptools.get("package-dir", {})
    version_attr = setuptools.get("dynamic", {}).get("version", {}).get("attr")
    if version_attr:  # `pkg.mod.__version__`: setuptools reads it from the module's source
        module, _, attr = version_attr.rpartition(".")
        if module in packages:
            touch(package_dir(module, mapping) / "__init__.py", f'{attr} = "0.0.0"\n')
        else:
            pkg, _, mod = module.rpartition(".")
            touch(package_dir(pkg, mapping) / f"{mod}.py", f'{attr} = "0.0.0"\n')
    for name in packages:
        touch(package_dir(name, mapping) / "__init__.py")
    readme = project.get("readme")
    if readme:
        touch(Path(readme if isinstance(readme, str) else readme["file"]))
    for pattern in project.get("license-files", []):
        if not any(ch in pattern for ch in "*?["):
            touch(Path(pattern))
    return written


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    write_skeleton(Path(sys.argv[1]), Path(sys.argv[2]))
