"""The masked loss option (issue 23 item 4): edits whose shards carry grounded masks weight the loss
inside the edit's region; everything else trains as before."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from curation.train import flow
from curation.train.config import compose_train
from curation.train.data import build_loader
from curation.train.data_config import DataConfig
from curation.train.examples import ExampleMaker
from curation.train.loop import train

from tests.fixtures.training import session_frames, write_tar


def png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    return session_frames(2)


def grounded_pair(key: str, frames: list[bytes], masks: bool = True) -> dict:
    width, height = Image.open(io.BytesIO(frames[0])).size
    src, tgt = np.zeros((height, width), np.uint8), np.zeros((height, width), np.uint8)
    src[: height // 2, : width // 4] = 255  # what leaves: the top-left quarter-width strip
    tgt[: height // 2, width // 2: 3 * width // 4] = 255  # what arrives
    sample = {"__key__": key, "json": json.dumps({"kind": "pair"}).encode(), "txt": b"move the box", "src.jpg": frames[0],
              "tgt.jpg": frames[1]}
    if masks:
        sample.update({"mask_src.png": png(src), "mask_tgt.png": png(tgt)})
    return sample


def test_the_region_is_the_union_of_both_masks_cropped_like_the_frames(frames):
    sample = grounded_pair("p0", frames)
    config = DataConfig(shards="unused", resolution=32, random_crop=False, regions=True)
    (example,) = ExampleMaker(config)(sample, 0)
    region = example.region[0, :, :, 0] > 127
    h, w = region.shape
    assert example.region.shape == (1, *example.target.shape[1:3], 1)
    assert region[: h // 2 - 2].any(axis=0).sum() > 0 and not region[h // 2 + 2:].any()  # the top half only
    inside = region[h // 4]  # one row through both boxes
    assert inside.sum() == pytest.approx(w / 2, abs=w / 8)  # a quarter of the width from each mask
    # off by default: nothing is decoded and the batch key does not change
    (plain,) = ExampleMaker(DataConfig(shards="unused", resolution=32))(sample, 0)
    assert plain.region is None and plain.batch_key[-1] is False


def test_region_weights_scale_the_loss_inside_and_normalise_it():
    """Weight w inside the region and 1 outside; the per-sample loss is the weighted mean, so a
    uniform error gives the same loss at any weight, and an error only inside grows with w."""
    region = torch.zeros(1, 1, 1, 8, 8)
    region[..., :4, :] = 1.0  # top half
    weights = flow.region_weights(region, (2, 4, 4), 5.0)
    assert weights.shape == (1, 1, 2, 4, 4) and weights[0, 0, :, :2].eq(5).all() and weights[0, 0, :, 2:].eq(1).all()
    x1 = torch.zeros(1, 3, 2, 4, 4)

    def predicts(value_inside: float, value_outside: float):
        def model(x, t, **_):
            v = torch.full_like(x, value_outside)
            v[..., :2, :] = value_inside
            return v - torch.randn(x.shape, generator=torch.Generator().manual_seed(0))  # the target x1 - x0 is -x0
        return model

    def loss(model, weight: float) -> float:
        config = flow.FlowConfig(region_weight=weight, drop_text=0, drop_source=0)
        conditions = {"region": region, "text": None, "text_mask": None, "source": None}
        return float(flow.training_losses(model, x1, conditions, config, torch.Generator().manual_seed(0))["loss"])

    assert loss(predicts(1.0, 1.0), 5.0) == pytest.approx(loss(predicts(1.0, 1.0), 1.0), rel=1e-5)
    assert loss(predicts(1.0, 0.0), 5.0) == pytest.approx(2.5 / 3, rel=1e-4)  # error 1 on the inside half: (5·½)/(5·½ + ½)
    assert loss(predicts(1.0, 0.0), 1.0) == pytest.approx(0.5, rel=1e-4)


def test_training_with_the_masked_loss_batches_grounded_and_plain_edits_apart(frames, tmp_path):
    write_tar(tmp_path / "shards" / "edits-000000.tar",
              [grounded_pair(f"g{i}", frames) for i in range(3)] + [grounded_pair(f"p{i}", frames, masks=False) for i in range(3)])
    cfg = compose_train([f"shards={tmp_path / 'shards'}", "model=tiny", f"output={tmp_path / 'run'}", "progress=false",
                         "data.resolution=32", "data.batch_size=2", "data.num_workers=0", "data.shuffle_buffer=2",
                         "model.patch_size=[1,4,4]", "preview_every=0", "steps=4", "flow.region_weight=4.0"])
    assert cfg.data.regions
    loader, _ = build_loader(cfg.data)
    batches = [b for _, b in zip(range(6), loader)]
    for batch in batches:
        grounded = {k.startswith("g") for k in batch["keys"]}
        assert len(grounded) == 1 and ("region" in batch) == grounded.pop()
    records = train(cfg, keep_records=True)
    assert len(records) == 4 and all(np.isfinite(r.loss) for r in records)
