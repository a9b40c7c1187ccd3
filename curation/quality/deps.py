"""Optional dependencies, imported only when the check that needs them is enabled.

A missing package becomes an error that names what to install (datatrove's
`_requires_dependencies`), instead of a bare ModuleNotFoundError deep inside a worker.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependency(ImportError):
    """An enabled check needs a package that is not installed."""


def require(module: str, *, install: str, check: str, why: str = "") -> ModuleType:
    """Import `module`, or raise MissingDependency saying `pip install {install}`.

    `install` is the pip argument list (e.g. `--no-deps nudenet`); `why` explains anything unusual
    about installing it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        hint = f" ({why})" if why else ""
        raise MissingDependency(
            f"the {check} quality check needs the '{install.split()[-1]}' package: "
            f"pip install {install}{hint}; or disable the check ({check}.enabled=false)"
        ) from e
