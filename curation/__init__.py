"""curate: distributed data curation for image and video editing models.

Ray stages turn raw videos, image pairs and edit triplets into Parquet manifests (one row per
sample, with lineage, scores and drop reasons) and WebDataset training shards. The layout and what
may import what are in docs/architecture.md.

The Python API is what `curate run` calls (README.md, "Python API"):

    from curation import compose, run
    results = run(compose(["pipeline=sessions", "input=manifests/examples.jsonl", "output=runs/example"]))

and what a plugin stage subclasses (docs/plugins.md): `Stage`, `SourceStage`, `SinkStage`. The
names below are imported on first use, so `import curation` stays cheap: it loads neither Ray nor
torch, and a plugin's entry point can import it without pulling the runner in.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# Public name -> the module that defines it.
_EXPORTS = {
    # config and running
    "compose": "curation.core.config",
    "build_stage": "curation.core.config",
    "ConfigError": "curation.core.config",
    "run": "curation.core.runner",
    "compose_for_cluster": "curation.core.runner",
    "StageResult": "curation.core.runner",
    # the stage contract
    "Stage": "curation.core.stage",
    "SourceStage": "curation.core.stage",
    "SinkStage": "curation.core.stage",
    "SinkContext": "curation.core.stage",
    "SinkResult": "curation.core.stage",
    "StageError": "curation.core.stage",
    "Resources": "curation.core.stage",
    "ModelRef": "curation.core.stage",
    "Threshold": "curation.core.stage",
    "Row": "curation.core.stage",
    "stage_names": "curation.core.stage",
    "get_stage_class": "curation.core.stage",
}

__all__ = [  # a literal list, so linters and IDEs read it; a test keeps it equal to _EXPORTS
    "ConfigError",
    "ModelRef",
    "Resources",
    "Row",
    "SinkContext",
    "SinkResult",
    "SinkStage",
    "SourceStage",
    "Stage",
    "StageError",
    "StageResult",
    "Threshold",
    "__version__",
    "build_stage",
    "compose",
    "compose_for_cluster",
    "get_stage_class",
    "run",
    "stage_names",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from curation.core.config import ConfigError, build_stage, compose
    from curation.core.runner import StageResult, compose_for_cluster, run
    from curation.core.stage import (
        ModelRef,
        Resources,
        Row,
        SinkContext,
        SinkResult,
        SinkStage,
        SourceStage,
        Stage,
        StageError,
        Threshold,
        get_stage_class,
        stage_names,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'curation' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
