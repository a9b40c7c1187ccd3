"""Training end to end on shards our shard stage wrote from real media: the tiny pixel-space
editor overfits a few samples, resume is exact (weights and data order), two torchrun ranks with
gloo see disjoint samples, latent-space training with a tiny VAE and T5, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from curation.train.config import TrainConfigError, compose_train
from curation.train.loop import CHECKPOINT, train

from tests.fixtures.media import REPO
from tests.fixtures.training import build_training_shards, same_checkpoints, save_text_model, save_vae

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local) -> dict[str, Path]:
    return build_training_shards(tmp_path_factory.mktemp("train-shards"))


def overrides(shards: dict[str, Path], output: Path, *extra: str, which=("edits", "sessions", "quads")) -> list[str]:
    return [f"shards={','.join(str(shards[k]) for k in which)}", "model=tiny", f"output={output}", "progress=false",
            "data.resolution=32", "data.batch_size=2", "data.num_workers=0", "data.shuffle_buffer=8",
            "model.patch_size=[1,4,4]", "preview_every=0", "log_every=1", *extra]


def test_tiny_pixel_model_overfits_a_few_real_samples(shards, tmp_path):
    """The 5 real photo edits, centre-cropped, batch 4, seed pinned: after 200 steps the loss
    (mean of the last 20) is under 40% of the first 5 steps' (the untrained loss is ~1.1)."""
    cfg = compose_train(overrides(shards, tmp_path / "run", "steps=200", "data.batch_size=4", "data.random_crop=false",
                                  "data.mix.video=0", "data.mix.reference=0", "optim.lr=2e-3", "optim.warmup_steps=10",
                                  "seed=1", which=("edits",)))
    records = train(cfg, keep_records=True)
    first = sum(r.loss for r in records[:5]) / 5
    last = sum(r.loss for r in records[-20:]) / 20
    assert first > 0.8 and last < 0.4 * first, (first, last)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 200 and {"loss", "lr", "samples_per_s", "skipped"} <= set(lines[-1])


def test_resume_is_exact_in_weights_and_data_order(shards, tmp_path):
    """2k steps straight, and k steps + save + resume for k more (2 loader workers, grad
    accumulation 2, EMA, warmup): the same parameters, EMA, optimizer step and example order."""
    k = 4
    common = ("data.num_workers=2", "optim.grad_accum=2", "optim.warmup_steps=3", "flow.drop_text=0.3",
              "checkpoint_every=1000", "preview_every=3", "preview_count=1")
    straight = train(compose_train(overrides(shards, tmp_path / "straight", f"steps={2 * k}", *common)), keep_records=True)
    first = train(compose_train(overrides(shards, tmp_path / "resumed", f"steps={k}", *common)), keep_records=True)
    second = train(compose_train(overrides(shards, tmp_path / "resumed", f"steps={2 * k}", *common)), keep_records=True)
    assert [r.keys for r in straight] == [r.keys for r in first + second]
    assert len({g for r in straight for g in r.keys}) > 4  # the order compared spans many examples
    assert [r.step for r in second] == list(range(k + 1, 2 * k + 1))
    a, _ = same_checkpoints(tmp_path / "straight", tmp_path / "resumed")
    assert a["step"] == 2 * k
    assert (tmp_path / "resumed" / "previews" / "step_0000006.png").is_file()
    # a finished run reruns as a no-op; a different worker count is refused with the fix
    assert train(compose_train(overrides(shards, tmp_path / "resumed", f"steps={2 * k}", *common)), keep_records=True) == []
    with pytest.raises(ValueError, match=r"data.num_workers=2"):
        train(compose_train(overrides(shards, tmp_path / "resumed", f"steps={3 * k}", *common[1:])), keep_records=True)


def test_torchrun_two_ranks_with_gloo_see_disjoint_samples(shards, tmp_path):
    out = tmp_path / "ddp"
    args = overrides(shards, out, "steps=3", "log_sample_keys=true", "data.num_workers=1", which=("sessions", "edits"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                           "-m", "curation.train", *args], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    keys = {rank: [k for line in (out / "sample_keys" / f"rank{rank}.jsonl").read_text().splitlines()
                   for k in json.loads(line)["keys"]] for rank in (0, 1)}
    assert len(keys[0]) == len(keys[1]) == 6  # 3 steps x batch 2 on each rank
    assert not set(keys[0]) & set(keys[1])
    checkpoint = torch.load(out / CHECKPOINT, weights_only=False)
    assert checkpoint["world_size"] == 2 and len(checkpoint["ranks"]) == 2 and checkpoint["step"] == 3


def test_latent_space_training_with_a_tiny_vae_and_t5(shards, tmp_path):
    save_vae("AutoencoderKL", tmp_path / "vae")
    save_text_model("t5", tmp_path / "t5")
    records = train(compose_train(overrides(
        shards, tmp_path / "run", "steps=3", "encoder=pretrained", f"encoder.vae={tmp_path / 'vae'}",
        f"encoder.text={tmp_path / 't5'}", "encoder.max_text_tokens=16", "model.patch_size=[1,2,2]",
        f"encoder.latent_cache={tmp_path / 'latents'}", "preview_every=3")), keep_records=True)
    assert len(records) == 3 and all(r.loss == r.loss for r in records)
    assert any((tmp_path / "latents").rglob("*.pt"))
    assert (tmp_path / "run" / "previews" / "step_0000003.png").is_file()


def test_cli_help_and_config_errors(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "curation.cli", "train", *a], capture_output=True,  # noqa: E731
                                    text=True, cwd=REPO, timeout=120)
    assert "shards=" in run("--help").stdout
    missing = run("model=tiny")
    assert missing.returncode == 2 and "shards=" in missing.stderr
    typo = run(f"shards={tmp_path}", "data.batch_sise=3")
    assert typo.returncode == 2 and "data.batch_sise" in typo.stderr
    with pytest.raises(TrainConfigError, match="unknown model"):
        compose_train([f"shards={tmp_path}", "model=XXL"])
    with pytest.raises(TrainConfigError, match="mix"):
        compose_train([f"shards={tmp_path}", "data.mix.image=-1"])
    nothing = run(f"shards={tmp_path}", f"output={tmp_path / 'o'}", "steps=1")
    assert nothing.returncode == 2 and "no shards" in nothing.stderr


def test_every_train_config_group_file_loads(tmp_path):
    """Each group file composes into a valid config (lightning-hydra-template's test_configs)."""
    from curation.train.config import TRAIN_CONFIG_DIR, TRAIN_GROUPS

    for group in TRAIN_GROUPS:
        for path in sorted((TRAIN_CONFIG_DIR / group).glob("*.yaml")):
            compose_train([f"shards={tmp_path}", f"{group}={path.stem}"])
    mix = compose_train([f"shards={tmp_path}", "mix=instructx"]).data.mix
    assert mix == {"image": 0.4, "video": 0.6, "reference": 0.0}
    assert compose_train([f"shards={tmp_path}", "model=B"]).model.size == "B"
