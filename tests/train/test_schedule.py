"""Per-group batch sizes and the resolution schedule, on hand-made shards of real frames
(tests/fixtures/training.py): each group fills batches of its own size; the trainer switches the
loader's resolution at the scheduled step, examples waiting in buckets are re-made and re-bucketed at
the new size, a run resumed on either side of the switch reads at its step's resolution, and resume
stays exact across the switch (keys, weights, data position)."""

from __future__ import annotations

import io
import json
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from curation.train import loop, media
from curation.train.config import TrainConfigError, compose_train
from curation.train.data import DataConfig, LoaderPosition, ShardStream, build_loader
from curation.train.loop import train

from tests.fixtures.training import same_checkpoints, session_frames, write_small_edit_shards, write_tar


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small-shards")
    write_small_edit_shards(root)
    return root


def test_each_group_fills_batches_of_its_own_size(shards):
    cfg = compose_train([f"shards={shards}", "data.batch_size=1", "data.group_batch_size.image=3",
                         "data.group_batch_size.video=2", "data.resolution=32", "data.num_workers=0",
                         "data.shuffle_buffer=2"]).data
    sizes = {(b["group"], len(b["keys"]), b["target"].shape[0]) for b in islice(iter(ShardStream(cfg)), 30)}
    assert sizes == {("image", 3, 3), ("video", 2, 2), ("reference", 1, 1)}  # reference keeps data.batch_size


def test_schedule_config_is_checked():
    cfg = DataConfig(shards="x", resolution=64, resolution_schedule=[[2, 32], [5, 48]])
    assert [cfg.at_step(s).resolution for s in range(7)] == [64, 64, 32, 32, 32, 48, 48]
    assert cfg.at_step(0) is cfg  # no switch yet: the same config
    for bad in ([[3, 32], [3, 48]], [[4, 32], [2, 48]], [[-1, 32]], [[0, 8]]):
        with pytest.raises(ValueError, match="resolution_schedule"):
            DataConfig(shards="x", resolution_schedule=bad)
    with pytest.raises(TrainConfigError, match="group_batch_size"):
        compose_train(["shards=x", "data.group_batch_size.image=0"])


def test_waiting_examples_are_bucketed_afresh_at_the_new_resolution(tmp_path):
    """At resolution 32 a square and a 4:3 photo share the 32x32 bucket; at 64 they do not (64x64
    and 80x48). A position saved with both waiting in one bucket resumes at 64 into batches of one
    shape each, and the same way every time."""
    from PIL import Image

    frame = np.asarray(Image.open(io.BytesIO(session_frames(1)[0])).convert("RGB"))

    def jpeg(width: int, height: int) -> bytes:
        out = io.BytesIO()
        Image.fromarray(frame[:height, :width]).save(out, "JPEG")
        return out.getvalue()

    sizes = {"square": (64, 64), "four_three": (64, 48), "wide0": (96, 54), "wide1": (96, 54), "wide2": (96, 54)}
    write_tar(tmp_path / "photos-000000.tar", [
        {"__key__": key, "json": json.dumps({"kind": "pair"}), "txt": "brighten", "src.jpg": jpeg(*size),
         "tgt.jpg": jpeg(*size)} for key, size in sizes.items()])
    cfg = DataConfig(shards=str(tmp_path / "photos-000000.tar"), resolution=32, batch_size=3, num_workers=0,
                     shuffle_buffer=1, mix={"image": 1, "video": 0, "reference": 0})
    loader, position = build_loader(cfg)
    position.consumed(next(iter(loader)))
    saved = position.state_dict()
    assert [[key for _, key in bucket] for bucket in saved["streams"][0]["groups"]["image"]["pending"]] == \
        [["square#0", "four_three#0"]]

    larger = cfg.model_copy(update={"resolution": 64})
    runs = [[(b["keys"], tuple(b["target"].shape[-2:])) for b in islice(iter(build_loader(
        larger, position=LoaderPosition(0, saved))[0]), 6)] for _ in range(2)]
    assert runs[0] == runs[1]
    assert {shape for _, shape in runs[0]} == {(64, 64), (48, 80)}


def overrides(shards: Path, output: Path, steps: int) -> list[str]:
    return [f"shards={shards}", "model=tiny", f"output={output}", f"steps={steps}", "progress=false",
            "data.resolution_schedule=[[0,32],[3,48]]", "data.batch_size=2", "data.num_workers=2",
            "data.shuffle_buffer=2", "model.patch_size=[1,4,4]", "preview_every=0", "log_every=1",
            "checkpoint_every=1000", "optim.warmup_steps=2"]


def test_the_schedule_switches_at_its_step_and_resume_is_exact_across_it(shards, tmp_path, monkeypatch):
    """6 steps straight, and 2 + 2 + 2 with resumes at step 2 (before the switch at 3) and step 4 (after
    it), with 2 loader workers (whose prefetched batches the switch discards): the same keys, weights
    and data position; steps 1-3 train on frames of the 32 bucket, steps 4-6 on the 48 bucket."""
    sizes: list[set[tuple[int, int]]] = []
    real_step = loop.Trainer.train_step

    def recording_step(self, batches):
        sizes.append({tuple(b["target"].shape[-2:]) for b in batches})
        return real_step(self, batches)

    monkeypatch.setattr(loop.Trainer, "train_step", recording_step)
    straight = train(compose_train(overrides(shards, tmp_path / "straight", 6)), keep_records=True)
    resumed = [r for steps in (2, 4, 6) for r in train(compose_train(overrides(shards, tmp_path / "resumed", steps)),
                                                        keep_records=True)]

    assert [r.keys for r in straight] == [r.keys for r in resumed]
    assert len({k for r in straight for k in r.keys}) >= 4  # the order compared spans several samples
    small, large = ({(b.height, b.width)} for b in (media.pick_bucket(96, 54, res, DataConfig(shards="x").aspects, 16)
                                                     for res in (32, 48)))
    assert small != large and sizes == [small] * 3 + [large] * 3 + [small] * 3 + [large] * 3  # straight, then resumed
    logged = [json.loads(line)["resolution"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [32, 32, 32, 48, 48, 48]
    a, _ = same_checkpoints(tmp_path / "straight", tmp_path / "resumed")
    assert a["step"] == 6
