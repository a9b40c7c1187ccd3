"""Session sequences from REAL session shards (the sessions pipeline with a scripted loopback VLM and
ground's masks, tests/fixtures/session_shards.py): each task's target and context, the camera
prefixes the text encoder receives, overfitting per task with per-task losses in metrics.jsonl,
and exact resume with session sequences."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from curation.train import media
from curation.train.config import compose_train
from curation.train.examples import ExampleMaker
from curation.train.loop import Distributed, Trainer, train
from curation.train.session_step import session_inputs
from curation.train.sessions import IMAGE, MASK, TASKS, camera_prompt, collate_sessions

from tests.fixtures.session_shards import build_session_shards, session_samples
from tests.fixtures.training import same_checkpoints

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local) -> Path:
    return build_session_shards(tmp_path_factory.mktemp("session-shards"))


@pytest.fixture(scope="module")
def samples(shards) -> list[dict]:
    out = session_samples(shards)
    for sample in out:
        sample["__key__"] = sample["__key__"].decode()
    return out


def overrides(shards: Path, output: Path, *extra: str) -> list[str]:
    return [f"shards={shards}", "model=tiny", f"output={output}", "progress=false", "data.resolution=32",
            "data.batch_size=2", "data.num_workers=0", "data.shuffle_buffer=4", "model.patch_size=[1,4,4]",
            "data.random_crop=false", "preview_every=0", "log_every=1", *extra]


def task_only(task: str) -> list[str]:
    return [f"data.session.tasks.{name}={float(name == task)}" for name in TASKS]


NO_DROPOUT = ("data.session.roe_probability=1.0", "data.session.drop_current_frame=0.0",
              "data.session.drop_current_roe=0.0", "data.session.drop_next_roe=0.0")


def _decoded(sample: dict, bucket: media.Bucket, member: str) -> np.ndarray:
    """A shard member at the bucket size, centre-cropped, 3 channels (a mask's one channel replicated)."""
    return media.crop(media.decode_image(sample[member], bucket), bucket, (0.5, 0.5))


class Recording:
    """The trainer's text encoder, keeping every list of texts it is asked to encode."""

    def __init__(self, encoder):
        self.encoder, self.seen = encoder, []

    def encode(self, texts: list[str]):
        self.seen.append(texts)
        return self.encoder.encode(texts)


@pytest.mark.parametrize("task", TASKS)
def test_each_task_targets_the_right_image_with_exactly_the_earlier_turns_as_context(samples, shards, tmp_path, task):
    """NIP: frame k+1; CSP: turn k's source mask; NSP: turn k's target mask (only turns whose RoE was
    found; the others train NIP). Before each target: exactly turns 0..k's frames and instructions,
    which reach the text encoder with their camera prefix."""
    config = compose_train(overrides(shards, tmp_path, *NO_DROPOUT, *task_only(task)))
    maker = ExampleMaker(config.data)
    checked = dict.fromkeys(TASKS, 0)
    for sample in samples:
        turns = json.loads(sample["turns.json"])
        frame_count = sum(1 for k in sample if k.startswith("frame_"))
        bucket = maker._bucket(*media.image_size(sample["frame_0.jpg"]))
        decoded = partial(_decoded, sample, bucket)
        (sequence,) = maker(sample, epoch=0)
        targets = sequence.targets()
        assert [t.turn for t in targets] == list(range(frame_count - 1))
        for k, target in enumerate(targets):
            found = turns[k]["roe"] == "found"
            expected = task if found else "nip"
            assert TASKS[target.task] == expected
            member = {"nip": f"frame_{k + 1}.jpg", "csp": f"mask_{k}_src.png", "nsp": f"mask_{k}_tgt.png"}[expected]
            np.testing.assert_array_equal(target.pixels, decoded(member))
            assert target.kind == (IMAGE if expected == "nip" else MASK)
            context = [s for s in sequence.segments if s.order < target.order and not s.noisy]
            assert sorted({s.turn for s in context}) == list(range(k + 1))
            frames = [s for s in context if s.kind == IMAGE]
            for j, segment in enumerate(frames):
                np.testing.assert_array_equal(segment.pixels, decoded(f"frame_{j}.jpg"))
            assert len(frames) == k + 1
            texts = [t for t in sequence.texts if t.order < target.order and t.instruction]
            assert [t.text for t in texts] == [turns[j]["instruction"] for j in range(k + 1)]
            checked[expected] += 1
        # what the text encoder receives: each instruction with its turn's camera label
        trainer = Trainer(config, Distributed())
        trainer.text_encoder = Recording(trainer.text_encoder)
        session_inputs(trainer, collate_sessions([sequence]))
        instructions = [p for p in trainer.text_encoder.seen[0] if p.startswith("[###CAMERA:")]
        assert instructions == [camera_prompt(turns[j]["camera"], turns[j]["instruction"]) for j in range(frame_count - 1)]
        assert all("pan-left" in p for p in instructions)  # the fixture's VLM labels every turn pan-left
    assert checked[task] > 0, checked  # the fixture guarantees found turns


def test_loss_falls_on_every_task_and_each_is_logged(shards, tmp_path):
    """Overfitting the fixture's sessions (tasks 1:1:1, seed pinned, 200 steps): each task's loss, mean
    of its last 20 logged values, is under 40% of its first 5 (the overfit test's rule), and
    metrics.jsonl carries loss_nip / loss_csp / loss_nsp."""
    cfg = compose_train(overrides(shards, tmp_path / "run", "steps=200", "data.batch_size=3", "optim.lr=2e-3",
                                  "optim.warmup_steps=10", "seed=1", "flow.drop_text=0.0",
                                  "data.session.tasks.nip=1.0", "data.session.tasks.csp=1.0", "data.session.tasks.nsp=1.0"))
    train(cfg)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 200
    for task in TASKS:
        values = [line[f"loss_{task}"] for line in lines if f"loss_{task}" in line]
        assert len(values) > 40, (task, len(values))
        first, last = np.mean(values[:5]), np.mean(values[-20:])
        assert last < 0.4 * first, (task, first, last)


def test_resume_is_exact_with_session_sequences(shards, tmp_path):
    """2k steps straight = k steps + save + resume for k more, with session sequences (tasks, dropout,
    camera prefixes, previews) and 2 loader workers: same example order, weights and EMA."""
    k = 3
    common = ("data.num_workers=2", "optim.grad_accum=2", "flow.drop_text=0.3", "checkpoint_every=1000",
              "preview_every=2", "preview_count=1", "data.random_crop=true")
    straight = train(compose_train(overrides(shards, tmp_path / "straight", f"steps={2 * k}", *common)), keep_records=True)
    first = train(compose_train(overrides(shards, tmp_path / "resumed", f"steps={k}", *common)), keep_records=True)
    second = train(compose_train(overrides(shards, tmp_path / "resumed", f"steps={2 * k}", *common)), keep_records=True)
    assert [r.keys for r in straight] == [r.keys for r in first + second]
    assert all(key.endswith("#s0") for r in straight for key in r.keys)
    a, _ = same_checkpoints(tmp_path / "straight", tmp_path / "resumed")
    assert a["step"] == 2 * k
    assert (tmp_path / "resumed" / "previews" / "step_0000004.png").is_file()
