"""Every config group loads; unknown keys are errors that name the key; YAML documents every option."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from curation.core.config import CONFIG_DIR, ConfigError, build_stage, compose, pipelines
from curation.core.stage import registry


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


@pytest.mark.parametrize("name", ["openai", "gemini", "local", "vllm"])
def test_each_vlm_group_file_sets_every_vlm_option_and_builds_annotate(name):
    from curation.backends.vlm import VLMConfig

    assert set(OmegaConf.load(CONFIG_DIR / "vlm" / f"{name}.yaml")) == set(VLMConfig.model_fields)
    cfg = compose([f"vlm={name}", "vlm.max_in_flight=3", "budget.max_usd=2.5"])
    stage = build_stage("annotate", cfg)
    assert stage.vlm.backend == name and stage.vlm.max_in_flight == 3 and stage.max_usd == 2.5


def test_model_profiles_swap_models_and_an_explicit_vlm_group_wins():
    real = compose([])
    assert real.models == "real" and real.vlm.backend == "local" and not real.vlm.model.startswith("tiny:")
    assert real.ground.detector.model == "IDEA-Research/grounding-dino-tiny"
    tiny = compose(["models=tiny"])
    assert tiny.models == "tiny" and tiny.vlm.model == "tiny:qwen2-vl"
    assert tiny.ground.detector.model == "tiny:grounding-dino" and tiny.ground.segmenter.model == "tiny:sam2"
    assert build_stage("annotate", tiny).models()["vlm"].random_weights
    mixed = compose(["models=tiny", "vlm=openai", "vlm.model=gpt-x"])
    assert mixed.vlm.backend == "openai" and mixed.vlm.model == "gpt-x" and mixed.ground.detector.model == "tiny:grounding-dino"


@pytest.mark.parametrize("override, match", [("vlm=claude", "unknown vlm 'claude'"), ("models=huge", "unknown models 'huge'"),
                                             ("vlm.max_in_fligth=3", "max_in_fligth")])
def test_unknown_groups_and_vlm_keys_are_errors_that_name_them(override, match):
    with pytest.raises(ConfigError, match=match):
        compose([override])
