"""Trainer presets (curation/config/train/preset/): each loads into a valid config, carries the numbers
its paper publishes, and the real batch mixer reproduces its configured mix over 2,000 draws; the real
stream follows those draws and routes quads by the preset's `data.quads` (hand-made shards of real
frames, tests/fixtures/training.py)."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest

from curation.train.config import TRAIN_CONFIG_DIR, compose_train
from curation.train.data import MixDraws, ShardStream
from curation.train.examples import seed_of

from tests.fixtures.training import write_small_edit_shards

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
    assert (vincie.data.max_context, vincie.flow.sample_steps, vincie.flow.guidance) == (19, 50, 10.0)
    session = vincie.data.session
    assert (session.mode, session.roe_probability, session.drop_current_frame, session.drop_current_roe,
            session.drop_next_roe, session.camera_prefix, vincie.flow.sample_camera) == ("sequence", 0.8, 0.2, 0.7, 0.7, True, "none")

    instructx = preset("instructx", tmp_path)
    assert instructx.data.mix == {"image": 0.4, "video": 0.6, "reference": 0.0} and instructx.data.quads == "modality"
    assert not any(instructx.data.group_batch_size.values())  # 128/32 are global batches: a comment, not per-rank sizes

    stage2 = preset("kiwi_stage2", tmp_path)
    assert stage2.data.mix == {"image": 1.0, "video": 1.0, "reference": 0.0}
    assert stage2.data.resolution ** 2 == 360_000 and stage2.data.max_frames == 81
    assert stage2.steps == 10_000 and [r ** 2 for _, r in stage2.data.resolution_schedule] == [360_000, 960_400]
    switch = stage2.data.resolution_schedule[1][0]  # ours: §5.1 gives none
    assert 0 < switch < stage2.steps
    assert (stage2.data.at_step(switch - 1).resolution, stage2.data.at_step(switch).resolution) == (600, 980)
    stage3 = preset("kiwi_stage3", tmp_path)
    assert stage3.data.mix == {"image": 2.0, "video": 1.0, "reference": 1.0} and stage3.data.max_frames == 81

    imvideoedit = preset("imvideoedit", tmp_path)
    assert imvideoedit.flow.t_sampling == "uniform"
    assert abs(imvideoedit.data.resolution ** 2 - 480 * 832) / (480 * 832) < 0.01


def test_a_preset_is_a_layer_under_key_value_overrides(tmp_path):
    cfg = compose_train([f"shards={tmp_path}", "preset=instructx", "data.mix.reference=0.3", "data.mix.video=0.3"])
    assert cfg.data.mix == {"image": 0.4, "video": 0.3, "reference": 0.3}
    assert cfg.flow.t_sampling == "logit_normal"  # keys a preset leaves alone keep train.yaml's values


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("small-shards")
    return root, write_small_edit_shards(root)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_stream_follows_its_mix_and_routes_quads_by_modality_or_group(name, small_shards):
    """The preset's loader on shards of pairs, triplets, image quads and video quads (stats say only
    `quad`): batches come from the groups the seeded mixer draws, in order, so the 2,000-draw shares
    above are the stream's; with quads=modality an image quad only ever comes in image batches and a
    video quad in video batches (each in buckets of their own: one reference frame), with quads=group
    both in reference batches."""
    root, keys = small_shards
    cfg = compose_train([f"shards={root}", f"preset={name}", "data.resolution=32", "data.resolution_schedule=[]",
                         "data.batch_size=1", "data.num_workers=0", "data.shuffle_buffer=2"]).data
    stream = ShardStream(cfg)
    batches = list(islice(iter(stream), 40))
    mixer = MixDraws(stream.weights, seed_of(cfg.seed, "mix", 0))
    assert [b["group"] for b in batches] == [mixer.draw() for _ in batches]

    where: dict[str, set[tuple[str, int, int]]] = {}  # kind -> (group, frames, reference frames)
    for batch in batches:
        kind = next(k for k, names in keys.items() if batch["keys"][0].split("#")[0] in names)
        where.setdefault(kind, set()).add((batch["group"], batch["target"].shape[2], batch["reference"].shape[2]))
    image_quad, video_quad = ("image", "video") if cfg.quads == "modality" else ("reference", "reference")
    expected = {"pair": ("image", 1, 0), "triplet": ("video", 5, 0), "image_quad": (image_quad, 1, 1),
                "video_quad": (video_quad, 5, 1)}
    for kind, seen in where.items():
        assert seen == {expected[kind]}, (name, kind, seen)
    assert {kind for kind in expected if expected[kind][0] in stream.weights} == set(where), (name, where)
