"""Bad training input never ends `curate train` in a traceback: fewer shards than loader slots, an
empty bucket, samples short of the members their kind needs and sessions with no annotated turn are
trained around (a one-line warning, a counted skip); only when nothing trainable remains does the run
stop, with one line. The shards are hand-written tars of real video frames (tests/fixtures/training.py)."""

from __future__ import annotations

import json
from itertools import islice

import pytest

from curation.train.cli import main
from curation.train.data import DataConfig, LoaderPosition, NoTrainingData, ShardStream, build_loader, list_shards

from tests.fixtures.training import session_frames, write_tar


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    return session_frames(3)


def session(key: str, frames: list[bytes], annotated: bool = True) -> dict:
    turns = [{"index": k, "instruction": f"advance the scene {k}" if annotated else None} for k in range(len(frames) - 1)]
    return {"__key__": key, "json": json.dumps({"kind": "session"}), "turns.json": json.dumps(turns),
            **{f"frame_{i}.jpg": f for i, f in enumerate(frames)}}


def edit(key: str, kind: str, frames: list[bytes], drop: str = "") -> dict:
    members = {"__key__": key, "json": json.dumps({"kind": kind}), "txt": "make it brighter",
               "src.jpg": frames[0], "tgt.jpg": frames[1], "ref.png": frames[2]}
    if kind != "quad":
        members.pop("ref.png")
    members.pop(drop, None)
    return members


def config(spec: str, **overrides) -> DataConfig:
    options = dict(shards=spec, resolution=32, batch_size=1, num_workers=0, shuffle_buffer=2)
    options.update(overrides)
    return DataConfig(**options)


def keys(batches: list[dict]) -> list[str]:
    return [k for batch in batches for k in batch["keys"]]


def test_one_bucket_holding_one_shard_trains_with_the_default_loader_workers(frames, tmp_path, capsys):
    """The issue's report: `curate train shards=<one bucket, one shard> model=tiny` with 2 workers."""
    bucket = tmp_path / "shards" / "r256_a16x9_f3"
    write_tar(bucket / "train-000000.tar", [session("sess0", frames)])
    out = tmp_path / "run"
    rc = main([f"shards={tmp_path / 'shards'}", "model=tiny", "steps=2", f"output={out}", "device=cpu",
               "data.resolution=32", "data.batch_size=1", "progress=false", "preview_every=0", "log_every=1"])
    assert rc == 0, capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_slot_left_without_samples_reads_all_of_them_and_resumes_exactly(frames, tmp_path, caplog):
    """Rank 1 of 2 gets nothing from a one-sample shard split sample by sample; it reads every slot's
    samples instead (a one-line warning), and its position records that, so a resume continues it."""
    write_tar(tmp_path / "one-000000.tar", [session("sess0", frames)])
    cfg = config(str(tmp_path / "one-000000.tar"))
    with caplog.at_level("WARNING", logger="curation.train.data"):
        stream = ShardStream(cfg, rank=1, world_size=2)
    assert "1 shard(s) for 2 loader slots" in caplog.text
    batches = list(islice(iter(stream), 6))
    assert set(keys(batches)) == {"sess0#s0"}  # the whole session is one sequence
    state = batches[1]["position"]["state"]
    # image reads every slot's samples; the groups no shard holds were tried the same way, then left out
    assert "image" in state["shared"] and "image" not in state["empty"]
    resumed = ShardStream(cfg, rank=1, world_size=2, streams={0: state})
    assert keys(islice(iter(resumed), 4)) == keys(batches[2:])


def test_an_empty_bucket_is_skipped_with_a_count(frames, tmp_path, caplog):
    write_tar(tmp_path / "full" / "train-000000.tar", [session("sess0", frames)])
    for name in ("empty_a", "empty_b"):
        (tmp_path / name).mkdir()
    spec = ",".join(str(tmp_path / n) for n in ("full", "empty_a", "empty_b"))
    with caplog.at_level("WARNING", logger="curation.train.data"):
        assert list_shards(spec) == [str(tmp_path / "full" / "train-000000.tar")]
    assert "skipping 2 empty bucket(s)" in caplog.text
    loader, _ = build_loader(config(spec))
    assert keys(islice(iter(loader), 2))[0].startswith("sess0#")
    with pytest.raises(FileNotFoundError, match="no shards"):
        list_shards(str(tmp_path / "empty_a"))


def test_a_shard_whose_stats_count_no_sample_is_skipped_with_a_count(frames, tmp_path, caplog):
    write_tar(tmp_path / "b" / "train-000000.tar", [session("sess0", frames)])
    write_tar(tmp_path / "b" / "train-000001.tar", [])
    (tmp_path / "b" / "train-000001.stats.json").write_text(json.dumps({"by_kind": {}}))
    with caplog.at_level("WARNING", logger="curation.train.data"):
        stream = ShardStream(config(str(tmp_path / "b")))
    assert "skipping 1 shard(s) whose stats count no trainable sample" in caplog.text
    assert keys(islice(iter(stream), 2))[0].startswith("sess0#")
    (tmp_path / "b" / "train-000000.stats.json").write_text(json.dumps({"by_kind": {}}))
    with pytest.raises(NoTrainingData, match="hold the groups the mix asks for"):
        ShardStream(config(str(tmp_path / "b")))


def test_samples_short_of_members_and_unannotated_sessions_are_counted_skips(frames, tmp_path):
    """A pair without its target, quads without their reference (the whole reference group) and a
    session with no annotated turn are skipped and counted by reason; the good pair and session train."""
    tar = write_tar(tmp_path / "mixed-000000.tar", [
        edit("pairok", "pair", frames), edit("pairnotgt", "pair", frames, drop="tgt.jpg"),
        edit("quadnoref0", "quad", frames, drop="ref.png"), edit("quadnoref1", "quad", frames, drop="ref.png"),
        session("sessmute", frames, annotated=False), session("sessok", frames)])
    loader, position = build_loader(config(str(tar)))  # the default mix: image 2 : video 1 : reference 1
    batches = []
    for batch in islice(iter(loader), 12):
        position.consumed(batch)
        batches.append(batch)
    assert {k.split("#")[0] for k in keys(batches)} == {"pairok", "sessok"}
    assert {b["group"] for b in batches} == {"image"}  # video: none in the shard; reference: none usable
    skipped = position.skipped()
    assert skipped["missing_member"] >= 3 and skipped["no_annotated_turn"] >= 1, skipped
    assert "decode_error" not in skipped


def test_nothing_trainable_stops_in_one_line(frames, tmp_path, capsys):
    """With 2 workers the error is raised in a worker; the CLI still prints only its reason."""
    tar = write_tar(tmp_path / "bad-000000.tar", [session("sessmute", frames, annotated=False),
                                                  edit("pairnotgt", "pair", frames, drop="tgt.jpg")])
    rc = main([f"shards={tar}", "model=tiny", "steps=1", f"output={tmp_path / 'run'}", "device=cpu",
               "data.resolution=32", "data.batch_size=1", "progress=false", "preview_every=0"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: no usable samples of any group") and "missing_member" in last, err
    with pytest.raises(NoTrainingData, match="no usable samples"):
        next(iter(ShardStream(config(str(tar)))))


def test_a_position_from_before_this_change_still_resumes(frames, tmp_path):
    """Checkpoints written before slots could read shared samples carry no `shared` key."""
    write_tar(tmp_path / "one-000000.tar", [session("sess0", frames)])
    cfg = config(str(tmp_path / "one-000000.tar"))
    first = list(islice(iter(ShardStream(cfg)), 3))
    old = {k: v for k, v in first[0]["position"]["state"].items() if k != "shared"}
    position = LoaderPosition(0, {"num_streams": 1, "batches": 1, "streams": {0: old}})
    assert keys(islice(iter(ShardStream(cfg, streams=position.streams)), 2)) == keys(first[1:])
