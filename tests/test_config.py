"""Every config group loads; unknown keys are errors that name the key; YAML documents every option."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from curation.config import CONFIG_DIR, ConfigError, build_stage, compose, pipelines
from curation.stage import registry


@pytest.mark.parametrize("name", sorted(registry()))
def test_each_stage_yaml_matches_its_fields_and_builds(name):
    cls = registry()[name]
    yaml_keys = set(OmegaConf.load(CONFIG_DIR / "stage" / f"{name}.yaml"))
    assert yaml_keys == set(cls.model_fields), f"{name}.yaml keys differ from {cls.__name__} fields"
    for field_name, info in cls.model_fields.items():
        assert info.description, f"{name}.{field_name} has no description (curate stages prints it)"
    text = (CONFIG_DIR / "stage" / f"{name}.yaml").read_text()
    assert "#" in text, f"{name}.yaml documents nothing"
    stage = build_stage(name)
    assert stage.name == name and stage.version


@pytest.mark.parametrize("pipeline", sorted(pipelines()))
def test_each_pipeline_composes(pipeline):
    cfg = compose([f"pipeline={pipeline}", "input=x", "output=y"])
    assert cfg.stages and all(s in registry() for s in cfg.stages)
    for s in cfg.stages:
        build_stage(s, cfg)


def test_overrides_apply_and_stage_selects_one():
    cfg = compose(["stage=shard", "shard.max_count=7", "cluster.address=auto"])
    assert list(cfg.stages) == ["shard"] and cfg.shard.max_count == 7 and cfg.cluster.address == "auto"
    assert build_stage("shard", cfg).max_count == 7


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["shard.max_cnt=3"], "max_cnt"),
        (["nonsense=1"], "nonsense"),
        (["shard.resources.batch_sise=3"], "batch_sise"),
        (["stage=nope"], "unknown stage 'nope'"),
        (["pipeline=nope"], "unknown pipeline 'nope'"),
        (["stage=shard", "pipeline=sessions"], "not both"),
        (["shard"], "not key=value"),
    ],
)
def test_bad_overrides_name_the_problem(overrides, match):
    with pytest.raises((ConfigError, KeyError), match=match):
        compose(overrides)


def test_invalid_values_are_rejected_by_the_stage_model():
    with pytest.raises(ValueError, match="max_count"):
        build_stage("shard", overrides=["shard.max_count=0"])
    with pytest.raises(ValueError, match="concurrency"):
        build_stage("shard", overrides=["shard.resources.concurrency=[3,1]"])
