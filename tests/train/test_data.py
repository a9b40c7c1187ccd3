"""The trainer's streaming loader on shards our shard stage wrote from real media: decoded shapes,
corrupt samples skipped and counted, kind mixing by ratio, disjoint rank/worker splits, buckets and
an exactly resumable position."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from curation.train import media
from curation.train.data import DataConfig, LoaderPosition, MixDraws, ShardStream, build_loader, list_shards, shard_groups
from curation.train.examples import seed_of

from tests.fixtures.training import build_training_shards

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local) -> dict[str, Path]:
    return build_training_shards(tmp_path_factory.mktemp("train-shards"))


def config(spec: str, **overrides) -> DataConfig:
    """Sessions as per-turn examples: these tests check the stream's mechanics (splits, buckets,
    resume), for which many small examples of one shape serve best; whole-session sequences have
    their own tests (test_sessions.py, test_session_training.py)."""
    options = dict(shards=spec, resolution=64, batch_size=2, num_workers=0, shuffle_buffer=4, session={"mode": "turns"})
    options.update(overrides)
    return DataConfig(**options)


def take(loader, n: int, position: LoaderPosition | None = None) -> list[dict]:
    batches = []
    for batch in islice(iter(loader), n):
        if position is not None:
            position.consumed(batch)
        batches.append(batch)
    return batches


def test_mp4_and_jpg_samples_decode_to_c_t_h_w(shards):
    """A pair is two 1-frame videos, a triplet's mp4s keep the longest allowed length (the shard
    capped them at 17 frames), a quad's reference is one frame at the bucket size, a session turn
    carries its earlier frames as references."""
    spec = ",".join(str(shards[k]) for k in ("edits", "sessions", "quads"))
    loader, _ = build_loader(config(spec, batch_size=1))
    seen: dict[tuple, tuple] = {}
    for batch in islice(iter(loader), 40):
        kind = (batch["group"], batch["reference"].shape[2])
        seen[kind] = (tuple(batch["source"].shape), tuple(batch["target"].shape), tuple(batch["reference"].shape))
        assert batch["target"].dtype == torch.uint8 and batch["source"].shape == batch["target"].shape
    # the 384x216 clip and the 451x300 / 600x400 photos all fall in the 80x48 bucket at resolution 64
    assert seen[("video", 0)] == ((1, 3, 17, 48, 80),) * 2 + ((1, 3, 0, 48, 80),)
    assert seen[("image", 0)] == ((1, 3, 1, 48, 80),) * 2 + ((1, 3, 0, 48, 80),)
    assert seen[("reference", 1)] == ((1, 3, 1, 48, 80),) * 3
    assert seen[("image", 1)][2] == (1, 3, 1, 48, 80)  # a session's second turn sees frame 0 as context
    # as whole sequences, a 3-frame session without RoE maps holds 2 turns: frame 0, target 1, frame 1, target 2
    # (less a current frame the 20% context dropout took)
    loader, _ = build_loader(config(str(shards["sessions"]), batch_size=1, session={"mode": "sequence"}))
    for batch in islice(iter(loader), 6):
        assert batch["layout"] == "session" and batch["frames"].dtype == torch.uint8
        assert batch["frames"].shape[:2] == (1, 3) and batch["frames"].shape[3:] == (48, 80)
        assert 2 <= batch["frames"].shape[2] <= 4 and batch["segment_task"].eq(0).sum() == 2


def test_frames_are_the_real_pixels_resized(shards):
    """The decoded target of a pair is the shard's own JPEG decoded independently (OpenCV, full
    size), area-resized to cover the 80x48 bucket and centre-cropped: same region, same scale."""
    import cv2

    loader, _ = build_loader(config(str(shards["edits"]), batch_size=1, random_crop=False, mix={"image": 1, "video": 0, "reference": 0}))
    batch = next(iter(loader))
    key = batch["keys"][0].split("#")[0]
    with tarfile.open(next(shards["edits"].glob("*.tar"))) as tar:
        jpeg = tar.extractfile(f"{key}.tgt.jpg").read()
    full = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = full.shape[:2]
    scale = max(80 / w, 48 / h)
    cover = cv2.resize(full, (max(80, round(w * scale)), max(48, round(h * scale))), interpolation=cv2.INTER_AREA)
    top, left = (cover.shape[0] - 48) // 2, (cover.shape[1] - 80) // 2
    expected = cover[top:top + 48, left:left + 80].astype(np.float32)
    got = batch["target"][0, :, 0].permute(1, 2, 0).numpy().astype(np.float32)
    assert got.shape == expected.shape
    # the best-matching window among shifts of up to 4 px is the unshifted one (give or take the
    # resamplers' half-pixel differences), and it matches far better than a window 4 px off
    errors = {(dy, dx): np.abs(got[4:-4, 4:-4] - expected[4 + dy:44 + dy, 4 + dx:76 + dx]).mean()
              for dy in range(-4, 5) for dx in range(-4, 5)}
    best = min(errors, key=errors.get)
    assert max(abs(best[0]), abs(best[1])) <= 1, errors
    assert errors[best] < 0.6 * min(errors[(4, 0)], errors[(0, 4)], errors[(-4, 0)], errors[(0, -4)])


def _corrupted_copy(src_dir: Path, dst: Path) -> tuple[list[str], list[str]]:
    """A copy of the edits tar where one pair's tgt.jpg and one triplet's tgt.mp4 are garbage."""
    broken: list[str] = []
    keys: list[str] = []
    with tarfile.open(next(src_dir.glob("*.tar"))) as tar, tarfile.open(dst, "w") as out:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            key, ext = member.name.split(".", 1)
            if key not in keys:
                keys.append(key)
            if ext in ("tgt.jpg", "tgt.mp4") and not any(b.endswith(ext) for b in broken):
                data = b"\xff\xd8\xff garbage" if ext == "tgt.jpg" else data[: len(data) // 3]
                broken.append(f"{key}.{ext}")
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return keys, [b.split(".")[0] for b in broken]


def test_a_corrupt_sample_is_skipped_and_counted(shards, tmp_path):
    keys, broken = _corrupted_copy(shards["edits"], tmp_path / "broken-000000.tar")
    assert len(broken) == 2
    loader, position = build_loader(config(str(tmp_path / "broken-000000.tar"), batch_size=1, shuffle_buffer=1))
    seen: set[str] = set()
    for batch in islice(iter(loader), 10):
        position.consumed(batch)
        seen.update(k.split("#")[0] for k in batch["keys"])
    assert seen == set(keys) - set(broken)
    # both were met (each group's every epoch meets its bad sample again, and counts it again)
    assert position.skipped()["decode_error"] >= 2


@pytest.mark.parametrize("weights", [{"video": 0.6, "image": 0.4}, {"image": 2.0, "video": 1.0, "reference": 1.0}])
def test_kind_mixing_ratio_over_2000_draws_is_within_3_percent(weights):
    """InstructX's 0.6 video / 0.4 image and Kiwi-Edit stage 3's image : video : reference = 2 : 1 : 1."""
    mixer = MixDraws(weights, seed=7)
    counts = Counter(mixer.draw() for _ in range(2000))
    total = sum(weights.values())
    for group, weight in weights.items():
        assert abs(counts[group] / 2000 - weight / total) <= 0.03, (group, counts)


def test_the_stream_follows_the_mix_draws(shards):
    """Batches come from the groups the seeded mixer picks, in its order."""
    spec = ",".join(str(shards[k]) for k in ("edits", "quads"))
    cfg = config(spec, batch_size=1, resolution=32, mix={"image": 0.4, "video": 0.3, "reference": 0.3})
    groups = [b["group"] for b in take(build_loader(cfg)[0], 30)]
    mixer = MixDraws(dict(cfg.mix), seed_of(cfg.seed, "mix", 0))
    assert groups == [mixer.draw() for _ in range(30)] and set(groups) == {"image", "video", "reference"}


def test_shard_groups_come_from_the_stats_beside_each_tar(shards):
    assert shard_groups(str(next(shards["edits"].glob("*.tar")))) == {"image", "video"}
    assert {g for url in list_shards(str(shards["sessions"])) for g in shard_groups(url)} == {"image"}
    with pytest.raises(FileNotFoundError, match="no shards"):
        list_shards(str(shards["edits"] / "nope-{000..002}.tar"))


def _epoch_keys(cfg: DataConfig, rank: int, world: int, batches: int) -> list[str]:
    stream = ShardStream(cfg, rank=rank, world_size=world)
    return [k for batch in islice(iter(stream), batches) for k in batch["keys"]]


def test_ranks_see_disjoint_samples_split_by_shard_and_by_sample(shards):
    # 3 session shards of 2 sessions (4 turns each) for 2 ranks: split by shard, reshuffled per epoch
    cfg = config(str(shards["sessions"]), batch_size=1, mix={"image": 1, "video": 0, "reference": 0})
    rank0, rank1 = (set(_epoch_keys(cfg, r, 2, 4)) for r in (0, 1))
    assert rank0 and rank1 and not rank0 & rank1
    # one tar for 2 ranks: split sample by sample
    cfg = config(str(shards["edits"]), batch_size=1, mix={"image": 1, "video": 0, "reference": 0})
    rank0, rank1 = (set(_epoch_keys(cfg, r, 2, 2)) for r in (0, 1))
    assert rank0 and rank1 and not rank0 & rank1
    assert len(rank0 | rank1) == 4  # the 5 pairs: 3 + 2 (2 batches each only reach 4)


def test_bucket_choice_and_cover_crop():
    assert media.pick_bucket(1920, 1080, 256, [1.0, 16 / 9, 9 / 16], 16) == media.Bucket(336, 192)
    assert media.pick_bucket(1080, 1920, 256, [1.0, 16 / 9, 9 / 16], 16) == media.Bucket(192, 336)
    assert media.pick_bucket(500, 480, 256, [1.0, 16 / 9], 16) == media.Bucket(256, 256)
    bucket = media.Bucket(336, 192)
    assert media.cover_size(1920, 800, bucket) == (461, 192)  # wider than the bucket: height fits, width is cropped
    frames = np.zeros((2, 192, 461, 3), np.uint8)
    assert media.crop(frames, bucket, (1.0, 0.0)).shape == (2, 192, 336, 3)
    with pytest.raises(ValueError, match="no size"):
        media.pick_bucket(0, 10, 256, [1.0], 16)


def test_resumed_position_continues_the_stream_exactly(shards):
    """Consume 7 batches with 2 workers, rebuild the loader from the saved position: the next batches
    are exactly (keys and pixels) those the uninterrupted loader gives."""
    spec = ",".join(str(shards[k]) for k in ("edits", "sessions", "quads"))
    cfg = config(spec, num_workers=2, resolution=32)
    straight = take(build_loader(cfg)[0], 12)

    loader, position = build_loader(cfg)
    take(loader, 7, position)
    saved = position.state_dict()
    assert saved["batches"] == 7 and set(saved["streams"]) == {0, 1}
    resumed = take(build_loader(cfg, position=LoaderPosition(2, saved))[0], 5)
    for a, b in zip(straight[7:], resumed):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["target"], b["target"]) and torch.equal(a["reference"], b["reference"])
    with pytest.raises(ValueError, match="num_workers=2"):
        LoaderPosition(1, saved)


def test_resume_finds_examples_a_bucket_carried_over_from_an_earlier_epoch(shards):
    """Session turns fill two buckets (first turns without context, second turns with one context
    frame), 6 per epoch each, in batches of 4: buckets carry examples across epochs. Resuming
    after each of the first 7 batches continues exactly, carried examples included."""
    cfg = config(str(shards["sessions"]), batch_size=4, resolution=32, shuffle_buffer=2,
                 mix={"image": 1, "video": 0, "reference": 0})
    straight = take(build_loader(cfg)[0], 10)
    carried = 0  # stops where a bucket held an example from an epoch before the stream's current one
    for stop in range(1, 8):
        loader, position = build_loader(cfg)
        take(loader, stop, position)
        group = position.state_dict()["streams"][0]["groups"]["image"]
        carried += any(e < group["epoch"] for bucket in group["pending"] + group["ready"] for e, _ in bucket)
        resumed = take(build_loader(cfg, position=LoaderPosition(0, position.state_dict()))[0], 10 - stop)
        assert [b["keys"] for b in resumed] == [b["keys"] for b in straight[stop:]], stop
        assert all(torch.equal(a["target"], b["target"]) for a, b in zip(straight[stop:], resumed))
    assert carried >= 1


def test_a_truncated_tar_is_read_up_to_the_damage_and_counted_once_across_a_resume(shards, tmp_path):
    """A shard cut mid-member: the samples before the cut train, the damage is one counted read
    error per pass over the shard, and a resumed stream counts exactly what an uninterrupted one
    does (replaying does not count again)."""
    data = next(shards["sessions"].glob("*.tar")).read_bytes()
    (tmp_path / "cut-000000.tar").write_bytes(data[: len(data) * 2 // 3])
    cfg = config(str(tmp_path / "cut-000000.tar"), batch_size=1, resolution=32, shuffle_buffer=1,
                 mix={"image": 1, "video": 0, "reference": 0})
    straight_loader, straight = build_loader(cfg)
    keys = [k for b in take(straight_loader, 5, straight) for k in b["keys"]]
    assert len(set(keys)) == 2  # the two turns of the session before the cut
    epochs = straight.state_dict()["streams"][0]["groups"]["image"]["epoch"]
    assert 1 <= straight.skipped()["read_error"] <= epochs + 1
    loader, position = build_loader(cfg)
    take(loader, 3, position)
    resumed = LoaderPosition(0, position.state_dict())
    take(build_loader(cfg, position=resumed)[0], 2, resumed)
    assert resumed.skipped() == straight.skipped()


def test_uri_shards_open_through_pyarrow_fs_and_stream_the_same_batches(shards):
    """A `file://` URI takes the pyarrow.fs path that s3:// and gs:// shards take: the directory is
    listed, stats.json read, the tars streamed; the batches equal those of the plain path."""
    uri = f"file://{shards['edits']}"
    assert list_shards(uri) == [f"file://{p}" for p in sorted(shards["edits"].glob("*.tar"))]
    assert shard_groups(list_shards(uri)[0]) == {"image", "video"}
    plain, via_uri = (take(build_loader(config(spec, resolution=32))[0], 4) for spec in (str(shards["edits"]), uri))
    assert [b["keys"] for b in plain] == [b["keys"] for b in via_uri]
    assert all(torch.equal(a["target"], b["target"]) for a, b in zip(plain, via_uri))
