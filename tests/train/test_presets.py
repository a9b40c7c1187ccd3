"""Trainer presets (curation/config/train/preset/): each loads into a valid config, carries the numbers
its paper publishes, and the real batch mixer reproduces its configured mix over 2,000 draws."""

from __future__ import annotations

from collections import Counter

import pytest

from curation.train.config import TRAIN_CONFIG_DIR, compose_train
from curation.train.data import MixDraws

PRESETS = sorted(p.stem for p in (TRAIN_CONFIG_DIR / "preset").glob("*.yaml"))


def preset(name: str, tmp_path):
    return compose_train([f"shards={tmp_path}", f"preset={name}"])


def test_the_issue_s_presets_all_exist_and_name_their_source():
    assert set(PRESETS) == {"vincie", "instructx", "kiwi_stage2", "kiwi_stage3", "imvideoedit"}
    for name in PRESETS:
        text = (TRAIN_CONFIG_DIR / "preset" / f"{name}.yaml").read_text()
        assert "§" in text and "Ours" in text, name  # the seed section, and what the paper leaves to us


@pytest.mark.parametrize("name", PRESETS)
def test_preset_mix_over_2000_draws_is_within_3_points(name, tmp_path):
    """The shares the loader's seeded mixer draws match the preset's normalised mix (groups with zero
    weight are never drawn)."""
    mix = preset(name, tmp_path).data.mix
    weights = {g: w for g, w in mix.items() if w > 0}  # as ShardStream passes them
    mixer = MixDraws(weights, seed=23)
    counts = Counter(mixer.draw() for _ in range(2000))
    total = sum(mix.values())
    for group, weight in mix.items():
        assert abs(counts[group] / 2000 - weight / total) <= 0.03, (name, group, counts)


def test_presets_carry_the_published_numbers(tmp_path):
    vincie = preset("vincie", tmp_path)
    assert vincie.data.mix == {"image": 1.0, "video": 0.0, "reference": 0.0}
    assert (vincie.data.max_context, vincie.flow.drop_source, vincie.flow.sample_steps, vincie.flow.guidance) == (19, 0.2, 50, 10.0)

    assert preset("instructx", tmp_path).data.mix == {"image": 0.4, "video": 0.6, "reference": 0.0}

    stage2 = preset("kiwi_stage2", tmp_path)
    assert stage2.data.mix == {"image": 1.0, "video": 1.0, "reference": 0.0}
    assert stage2.data.resolution ** 2 == 360_000 and stage2.data.max_frames == 81
    stage3 = preset("kiwi_stage3", tmp_path)
    assert stage3.data.mix == {"image": 2.0, "video": 1.0, "reference": 1.0} and stage3.data.max_frames == 81

    imvideoedit = preset("imvideoedit", tmp_path)
    assert imvideoedit.flow.t_sampling == "uniform"
    assert abs(imvideoedit.data.resolution ** 2 - 480 * 832) / (480 * 832) < 0.01


def test_a_preset_is_a_layer_under_key_value_overrides(tmp_path):
    cfg = compose_train([f"shards={tmp_path}", "preset=instructx", "data.mix.reference=0.3", "data.mix.video=0.3"])
    assert cfg.data.mix == {"image": 0.4, "video": 0.3, "reference": 0.3}
    assert cfg.flow.t_sampling == "logit_normal"  # keys a preset leaves alone keep train.yaml's values
