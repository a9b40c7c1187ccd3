"""A rerun notices a changed stage config: every part records the config it was made with; a rerun
whose config differs stops before Ray starts and names the keys, unless `on_change=recompute`
(the stage and every later one redone, the old directories moved aside) or `on_change=keep`.

Runs use the test plugin's stages (`count_source` lists numbers, `pair_up` splits each in two,
`keep_even` drops odd ones): a run of them takes a second, with no media to decode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from curation.core import config_change, layout, storage
from curation.core.config import build_stage, compose
from curation.core.runner import run

STAGES = ["count_source", "pair_up", "keep_even"]


def _args(run_dir: Path, *extra: str) -> list[str]:
    return [f"stages=[{','.join(STAGES)}]", "input=count://6", f"output={run_dir}", "progress=false",
            "count_source.fragment_size=3", *extra]


def _recorded(stage_dir: Path) -> list[dict]:
    return [config_change.recorded(part) for part in layout.manifest_parts(str(stage_dir))]


# ---- what is compared ----------------------------------------------------------------------


def test_how_to_run_keys_are_left_out_of_what_a_part_records():
    base = build_stage("annotate")
    retuned = build_stage("annotate", overrides=["annotate.resources.batch_size=3", "vlm.max_in_flight=99",
                                                  "budget.max_usd=5", "vlm.timeout_s=1", "annotate.resources.num_cpus=1"])
    assert config_change.fingerprint(retuned) == config_change.fingerprint(base)
    changed = build_stage("annotate", overrides=["vlm.temperature=0.7", "vlm.model=other-model"])
    lines = config_change.changed_keys(config_change.fingerprint(base), config_change.fingerprint(changed))
    assert "annotate.vlm.temperature: 0.0 -> 0.7" in lines
    assert any(line.startswith("annotate.vlm.model: ") and line.endswith("-> 'other-model'") for line in lines), lines
    assert len(lines) == 2, lines


def test_every_part_records_its_stage_config_and_the_run_json_its_hash(tmp_path, plugin, ray_local):
    run(compose(_args(tmp_path / "run", "keep_even.min_number=2")))
    records = _recorded(tmp_path / "run" / "03-keep_even")
    assert len(records) == 2 and all(r == records[0] for r in records)
    assert records[0]["stage"] == "keep_even" and records[0]["version"] == "1"
    assert records[0]["config"] == {"min_number": 2.0}  # `resources` says how to run, not what comes out
    info = json.loads((tmp_path / "run" / "03-keep_even" / "_run.json").read_text())
    assert info["stage_config_hash"] == info["attempts"][-1]["stage_config_hash"]


# ---- what a rerun does ---------------------------------------------------------------------


def test_a_changed_config_stops_the_rerun_naming_the_key(tmp_path, plugin, ray_local):
    run_dir = tmp_path / "run"
    run(compose(_args(run_dir, "keep_even.min_number=2")))
    before = {p: os.path.getmtime(p) for p in map(str, run_dir.rglob("part-*.parquet"))}
    with pytest.raises(ValueError) as refused:
        run(compose(_args(run_dir, "keep_even.min_number=4")))
    message = str(refused.value)
    assert "stage keep_even has 2 finished part(s) made with another config" in message
    assert "keep_even.min_number: 2.0 -> 4.0" in message and "on_change=recompute" in message and "on_change=keep" in message
    assert {p: os.path.getmtime(p) for p in map(str, run_dir.rglob("part-*.parquet"))} == before  # nothing touched
    # Retuning how it runs is no change: the rerun resumes (every part complete).
    results = run(compose(_args(run_dir, "keep_even.min_number=2", "keep_even.resources.batch_size=1")))
    assert [r.done_fragments for r in results] == [0, 0, 0]


def test_recompute_moves_the_stage_and_every_later_one_aside_and_redoes_them(tmp_path, plugin, ray_local):
    run_dir = tmp_path / "run"
    run(compose(_args(run_dir, "keep_even.min_number=2")))
    old_pair_parts = sorted(p.name for p in (run_dir / "02-pair_up").glob("part-*.parquet"))
    results = run(compose(_args(run_dir, "pair_up.pieces=3", "keep_even.min_number=2", "on_change=recompute")))
    assert [r.done_fragments for r in results] == [0, 2, 2]  # count_source kept, the rest redone
    (replaced,) = (run_dir / layout.REPLACED_DIR).iterdir()
    assert sorted(p.name for p in replaced.iterdir()) == ["02-pair_up", "03-keep_even"]
    assert sorted(p.name for p in (replaced / "02-pair_up").glob("part-*.parquet")) == old_pair_parts
    assert all(r["config"] == {"pieces": 3} for r in _recorded(run_dir / "02-pair_up"))  # log, delay_s: how to run
    assert all(r["config"] == {"pieces": 2} for r in _recorded(replaced / "02-pair_up"))
    assert layout.stage_dirs(str(run_dir)) == ["01-count_source", "02-pair_up", "03-keep_even"]


def test_keep_adds_only_missing_parts_which_record_the_new_config(tmp_path, plugin, ray_local):
    run_dir = tmp_path / "run"
    run(compose(["stage=count_source", "input=count://6", f"output={run_dir}", "progress=false",
                 "count_source.fragment_size=3"]))
    run(compose(["stage=keep_even", f"output={run_dir}", "progress=false", "keep_even.min_number=2"]))
    first = layout.manifest_parts(str(run_dir / "02-keep_even"))
    os.remove(first[1])  # as if the run had been killed before its second part
    run(compose(["stage=keep_even", f"output={run_dir}", "progress=false", "keep_even.min_number=4", "on_change=keep"]))
    kept, added = _recorded(run_dir / "02-keep_even")
    assert kept["config"]["min_number"] == 2.0 and added["config"]["min_number"] == 4.0
    assert not (run_dir / layout.REPLACED_DIR).exists()


def test_the_cli_refuses_a_changed_config_in_one_line_before_ray_starts(tmp_path, plugin, ray_local):
    run_dir = tmp_path / "run"
    run(compose(_args(run_dir, "keep_even.min_number=2")))
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray"), "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "curation.cli", "run", *_args(run_dir, "keep_even.min_number=3")],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: stage keep_even has 2 finished part(s)") and "min_number: 2.0 -> 3.0" in lines[0]
    assert not (tmp_path / "ray").exists() or not any((tmp_path / "ray").iterdir())  # Ray never started


# ---- moving aside ----------------------------------------------------------------------------


def test_move_aside_takes_what_a_stage_wrote_outside_its_directory(tmp_path):
    run_dir = tmp_path / "run"
    for name in ("01-ingest", "02-sample_frames", "03-shard"):
        storage.write_json_atomic(str(run_dir / name / "_run.json"), {})
    storage.write_bytes_atomic(str(run_dir / "shards" / "train-000000.tar"), b"tar")
    moved = config_change.move_aside(str(run_dir), str(run_dir / "02-sample_frames"),
                                     lambda name: [str(run_dir / "shards")] if name == "shard" else [])
    assert [Path(m).name for m in moved] == ["02-sample_frames", "03-shard", "shards"]
    assert layout.stage_dirs(str(run_dir)) == ["01-ingest"] and not (run_dir / "shards").exists()
    assert (Path(moved[2]) / "train-000000.tar").read_bytes() == b"tar"
