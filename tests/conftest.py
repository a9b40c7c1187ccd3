"""Session fixtures: a private cache, one local Ray runtime, and the audit run. Helpers and test
data live in tests/fixtures/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def curate_cache(tmp_path_factory):
    """Tiny models and VLM responses go to a per-session cache, never the user's ~/.cache/curate.
    Set before Ray starts, so workers and `curate` subprocesses inherit it."""
    path = tmp_path_factory.mktemp("curate-cache")
    previous = os.environ.get("CURATE_CACHE")
    os.environ["CURATE_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("CURATE_CACHE", None)
    else:
        os.environ["CURATE_CACHE"] = previous


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray runtime shared by the tests that run stages through Ray (starting one costs seconds)."""
    import ray
    from omegaconf import OmegaConf

    from curation.core.config import CONFIG_DIR
    from curation.core.ray_env import init_ray

    init_ray(OmegaConf.load(CONFIG_DIR / "run.yaml").cluster)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def audit_run(tmp_path_factory, ray_local) -> Path:
    """The example pipeline's run with scripted VLM answers and masks (tests/audit_fixtures.py),
    shared by the report and browse tests."""
    from tests.fixtures.audit_run import build_audit_run

    return build_audit_run(tmp_path_factory.mktemp("audit"))


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The test plugin (tests/fixtures/plugin_stages.py) installed for one test: its distribution's
    metadata on sys.path, its module pickled by value for Ray workers. Yields the site directory
    (a subprocess gets it through PYTHONPATH)."""
    import ray.cloudpickle

    from tests.fixtures import plugin_stages

    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    plugin_stages.install_plugin(tmp_path / "site")
    ray.cloudpickle.register_pickle_by_value(plugin_stages)
    yield tmp_path / "site"
    plugin_stages.forget_registry()  # monkeypatch takes the plugin off sys.path
