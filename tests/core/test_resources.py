"""Resource profiles and pool sizing: GPU shares for the stages that run a model on one, pools
that grow to what the cluster holds, and streamed chains that fit the machine."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from typer.testing import CliRunner

from curation.cli import app
from curation.core.config import build_stage, compose, needs_cluster_facts
from curation.core.resources import Cluster, cpu_fallback_warnings, fit_to_cluster, gpu_share, plan_chains
from curation.core.stage import Resources, registry

# Stages whose packaged defaults run a local model a GPU speeds up (models=real, vlm=local).
MODEL_STAGES = {"annotate", "caption", "edit_score", "score_reference", "ground", "ground_edit", "embed", "dedup",
                "choose_subject", "mask_video", "check_removal", "erasure_instructions"}


def test_print_config_resources_gpu_gives_every_model_stage_a_gpu_share():
    result = CliRunner().invoke(app, ["run", "--print-config", "resources=gpu", "pipeline=sessions"])
    assert result.exit_code == 0, result.output
    cfg = OmegaConf.create(result.output)
    assert cfg.resources == "gpu"
    for name in MODEL_STAGES | {"scene_split", "reference", "erase"}:  # the last three drop it for their offline backends
        assert cfg[name].resources.num_gpus > 0, name
    for name in registry():
        assert cfg[name].resources.concurrency[1] is None, name  # grows to what the cluster holds
    # built from that config, the stages that run a local model keep their share
    for name in MODEL_STAGES:
        stage = build_stage(name, compose(["resources=gpu"]))
        assert stage.uses_gpu() and gpu_share(stage, stage.resources).num_gpus > 0, name


def test_auto_is_local_until_the_cluster_is_seen_then_gpu_when_it_has_gpus():
    unresolved = compose([])
    assert unresolved.resources == "auto" and needs_cluster_facts(unresolved)
    assert unresolved.ground.resources.num_gpus == 0
    assert compose([], gpus=False).resources == "local" and compose([], gpus=False).ground.resources.num_gpus == 0
    on_gpus = compose([], gpus=True)
    assert on_gpus.resources == "gpu" and on_gpus.ground.resources.num_gpus == 0.5 and not needs_cluster_facts(on_gpus)
    # a key set on the command line still wins over the profile
    assert compose(["ground.resources.num_gpus=1"], gpus=True).ground.resources.num_gpus == 1


def test_a_stage_running_no_local_model_drops_its_gpu_share():
    for overrides, name in ((["vlm=openai"], "annotate"), (["scene_split.detector=adaptive"], "scene_split"),
                            (["embed.embedder.backend=phash"], "embed"), (["reference.backend=composite"], "reference")):
        stage = build_stage(name, compose(["resources=gpu", *overrides]))
        assert stage.resources.num_gpus > 0 and gpu_share(stage, stage.resources).num_gpus == 0, name
    transnet = build_stage("scene_split", compose(["resources=gpu", "scene_split.detector=transnetv2"]))
    assert gpu_share(transnet, transnet.resources).num_gpus == 0.1


def test_open_pools_grow_to_the_cpus_and_gpus_the_cluster_holds():
    gpu_pool = Resources(num_cpus=0.5, num_gpus=0.5, concurrency=(1, None))
    assert fit_to_cluster("ground", gpu_pool, cluster=Cluster(cpus=64, gpus=8)).concurrency == (1, 16)  # GPU-bound
    assert fit_to_cluster("ground", gpu_pool, cluster=Cluster(cpus=4.25, gpus=8)).concurrency == (1, 8)  # CPU-bound
    cpu_pool = Resources(num_cpus=0.5, concurrency=(1, None))
    assert fit_to_cluster("ingest", cpu_pool, cluster=Cluster(cpus=200)).concurrency == (1, 399)
    custom = Resources(num_cpus=1, custom_resources={"decode": 1}, concurrency=(2, None))
    assert fit_to_cluster("split", custom, cluster=Cluster(cpus=100, custom={"decode": 3})).concurrency == (2, 3)


def test_streamed_chains_never_ask_for_more_gpus_than_the_cluster_has():
    cfg = compose(["resources=gpu", "pipeline=sessions"])
    stages = [build_stage(n, cfg) for n in ["sample_frames", "annotate", "ground", "embed"]]
    one_gpu = plan_chains(stages, Cluster(cpus=16, gpus=1), stream=True)
    # annotate's local VLM holds the GPU, so ground (0.5) starts a new chain
    assert [[s.name for s, _ in c] for c in one_gpu] == [["sample_frames", "annotate"], ["ground", "embed"]]
    four_gpus = plan_chains(stages, Cluster(cpus=16, gpus=4), stream=True)
    assert [[s.name for s, _ in c] for c in four_gpus] == [["sample_frames", "annotate", "ground", "embed"]]


def test_a_model_on_the_cpu_of_a_gpu_cluster_is_a_warning():
    seen = {"detector": {"cpu"}, "segmenter": {"cuda:0"}}
    assert cpu_fallback_warnings("ground", seen, Cluster(cpus=8)) == []
    (warning,) = cpu_fallback_warnings("ground", seen, Cluster(cpus=8, gpus=2))
    assert "detector ran on cpu" in warning and "ground.resources.num_gpus" in warning


@pytest.mark.parametrize("bad", [(2, 1), (0, 4), (0, None)])
def test_bad_concurrency_names_the_problem(bad):
    with pytest.raises(ValueError, match="concurrency"):
        Resources(concurrency=bad)
