"""The import graph reads one way: core <- libraries <- stages <- auditors' tools <- CLI, and the
trainer depends on nothing but itself (it reads only the shard format). Checked on the source,
every `import` counted, including those inside functions and under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Where each shipped package lives in the repo (pyproject.toml maps the last three in).
PACKAGE_DIRS = {"curation": REPO / "curation", "curation.stages": REPO / "stages", "curation.prompts": REPO / "prompts",
                "curation.adapters": REPO / "manifests" / "adapters"}
CORE = "curation.core"
TRAIN = "curation.train"
# Libraries: what stages are built from. They may import the core and each other, nothing above.
LIBRARIES = ("curation.backends", "curation.dedup", "curation.labels", "curation.media", "curation.prompts",
             "curation.quality", "curation.regions", "curation.shards", "curation.sources", "curation.adapters")


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if package == "curation" and parts[0] in ("stages", "prompts", "adapters"):
                continue  # mapped from their own folders
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Modules of ours that `name` imports. `from pkg import sub` depends on `pkg.sub` (a package's
    own __init__ runs for any of its submodules and is not counted as a dependency on it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    deps = set()
    for target in targets:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name and target.startswith("curation"):
            deps.add(target)
    return deps


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _violations(allowed) -> list[str]:
    return sorted(f"{m} imports {d}" for m, deps in GRAPH.items() for d in deps if not allowed(m, d))


def test_the_graph_sees_every_package():
    for package in (CORE, TRAIN, "curation.stages", "curation.stages.base", "curation.prompts", *LIBRARIES):
        assert package in MODULES, package
    assert "curation.core.stage" in GRAPH["curation.stages.ingest"]


def test_the_framework_core_names_no_stage_and_no_backend():
    """The core imports only the core: stages and backends reach it through the stage contract's hooks."""
    assert _violations(lambda m, d: not _in(m, CORE) or _in(d, CORE)) == []


def test_the_trainer_depends_only_on_itself():
    assert _violations(lambda m, d: not _in(m, TRAIN) or _in(d, TRAIN)) == []


def test_libraries_import_only_the_core_and_libraries():
    assert _violations(lambda m, d: not _in(m, *LIBRARIES) or _in(d, CORE, *LIBRARIES)) == []


def test_only_the_application_imports_stages():
    """Stages are found through entry points; nothing else names one (the auditors read `_run.json`)."""
    assert _violations(lambda m, d: not _in(d, "curation.stages") or _in(m, "curation.stages")) == []


def test_nothing_below_the_application_imports_the_cli_or_the_auditors():
    assert _violations(lambda m, d: not _in(d, "curation.cli", "curation.audit") or _in(m, "curation.cli", "curation.audit")) == []


def test_no_import_cycles():
    """Tarjan's strongly connected components over modules: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []


@pytest.mark.parametrize("bad", ["curation.stages.ingest", "curation.backends.vlm"])
def test_the_checker_catches_a_core_import_of(bad, monkeypatch):
    """The checks are not vacuous: a core module importing a stage or a backend is reported."""
    monkeypatch.setitem(GRAPH, "curation.core.runner", GRAPH["curation.core.runner"] | {bad})
    assert _violations(lambda m, d: not _in(m, CORE) or _in(d, CORE)) == [f"curation.core.runner imports {bad}"]
