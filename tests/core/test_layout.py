"""The run directory's names, owned by one module."""

from __future__ import annotations

from curation.core import layout


def test_stage_dirs_are_numbered_reused_and_found_in_order(tmp_path):
    run = str(tmp_path)
    assert layout.stage_dir_for(run, "ingest", 1) == f"{run}/01-ingest"
    for d in ("01-ingest", "02-scene_split", "_tmp", "notes"):
        (tmp_path / d).mkdir()
    assert layout.stage_dirs(run) == ["01-ingest", "02-scene_split"]
    assert layout.stage_dir_for(run, "scene_split", 5) == f"{run}/02-scene_split"  # resume reuses it
    assert layout.stage_dir_for(run, "dedup", None) == f"{run}/03-dedup"  # a lone stage takes the next number
    assert layout.default_input(run, "dedup") == f"{run}/02-scene_split"
    assert layout.default_input(run, "scene_split") == f"{run}/01-ingest"  # never its own output
    assert layout.stage_name("03-filter_quality") == "filter_quality"


def test_a_list_starting_mid_pipeline_never_takes_a_number_already_held(tmp_path):
    run = str(tmp_path)
    assert layout.stage_dirs_for(run, ["ingest", "scene_split", "sample_frames"]) == [
        f"{run}/01-ingest", f"{run}/02-scene_split", f"{run}/03-sample_frames"]
    for d in ("01-ingest", "02-scene_split"):
        (tmp_path / d).mkdir()
    assert layout.stage_dirs_for(run, ["sample_frames", "annotate"]) == [f"{run}/03-sample_frames", f"{run}/04-annotate"]
    # a rerun of the longer list reuses what exists and numbers the rest after it
    assert layout.stage_dirs_for(run, ["ingest", "scene_split", "sample_frames"])[1:] == [
        f"{run}/02-scene_split", f"{run}/03-sample_frames"]
    (tmp_path / "03-sample_frames").mkdir()
    assert layout.stage_dirs_for(run, ["ingest", "dedup", "shard"]) == [f"{run}/01-ingest", f"{run}/04-dedup", f"{run}/05-shard"]


def test_paths_beside_a_stage(tmp_path):
    stage_dir = f"{tmp_path}/04-shard"
    assert layout.run_dir_of(stage_dir) == str(tmp_path) == layout.run_dir_of(stage_dir + "/")
    assert layout.run_json(stage_dir) == f"{stage_dir}/_run.json" and layout.input_dir(stage_dir) == f"{stage_dir}/_input"
    assert layout.run_dir_of("s3://bucket/run/02-embed") == "s3://bucket/run"
    (tmp_path / "04-shard").mkdir()
    for name in ("part-00001.parquet", "part-00000.parquet", "_plan.parquet", "part-x.json"):
        (tmp_path / "04-shard" / name).write_bytes(b"")
    assert [p.rsplit("/", 1)[1] for p in layout.manifest_parts(stage_dir)] == ["part-00000.parquet", "part-00001.parquet"]
