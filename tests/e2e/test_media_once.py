"""Media stored once, end to end on the example pipeline's run (`audit_run`: frames sampled, turns
annotated, region-of-edit masks found, shards written): no manifest holds media bytes, each file
lives with the stage that made it, and every reader (shard, browse, show, a later run) still gets
the bytes."""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from curation.cli import app
from curation.core import layout, media_store, storage
from curation.core.config import compose
from curation.core.runner import run
from curation.core.schema import media_ext, rows_to_table
from curation.shards.writer import zero_mask_png

from tests.fixtures.audit_run import browse_images
from tests.fixtures.sinks import sink_context
from tests.stages.test_shard import _shard_stage

pytestmark = pytest.mark.slow
MAKERS = {"frames": "04-sample_frames", "roe": "06-ground"}  # media column -> the stage that makes its files
STORED = re.compile(r"[0-9a-f]{64}\.(jpg|png)")  # a media store file name


def _binary_leaves(field: pa.Field, path: str = "") -> list[str]:
    """Names of the binary values anywhere inside a field (nested structs and lists included)."""
    name, t = f"{path}{field.name}", field.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return [name]
    if pa.types.is_struct(t):
        return [leaf for i in range(t.num_fields) for leaf in _binary_leaves(t.field(i), f"{name}.")]
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _binary_leaves(t.value_field, f"{name}.")
    return []


def _manifest_dirs(run_dir: Path) -> list[Path]:
    return [run_dir / d for d in layout.stage_dirs(str(run_dir))]


def _media_files(stage_dir: Path) -> set[str]:
    return {str(p.relative_to(stage_dir.parent)) for p in (stage_dir / layout.MEDIA_DIR).rglob("*") if p.is_file()}


def _refs(table: pa.Table, column: str) -> list[str]:
    return media_store.references(table.select([column]).to_pylist(), table.select([column]).schema)


def test_no_manifest_holds_media_bytes_and_each_file_lives_with_its_maker(audit_run):
    referenced: dict[str, set[str]] = defaultdict(set)
    for stage_dir in _manifest_dirs(audit_run):
        for part in layout.manifest_parts(str(stage_dir)) + layout.manifest_parts(layout.input_dir(str(stage_dir))):
            schema = pq.read_schema(part)
            assert [leaf for f in schema for leaf in _binary_leaves(f)] == [], part
            table = storage.read_table(part)
            for column, maker in MAKERS.items():
                if column in table.column_names:
                    refs = _refs(table, column)
                    assert all(r.startswith(f"{maker}/{layout.MEDIA_DIR}/") for r in refs), (part, refs[:2])
                    referenced[maker].update(refs)
    assert referenced["04-sample_frames"] and referenced["06-ground"]  # frames, and masks the detector found
    # Files only where media were made, each one referenced: nothing copied, nothing stray.
    with_media = [d.name for d in _manifest_dirs(audit_run) if (d / layout.MEDIA_DIR).exists()]
    assert sorted(with_media) == sorted(MAKERS.values())
    for maker in MAKERS.values():
        assert _media_files(audit_run / maker) == referenced[maker]


def test_shard_members_are_the_stored_media_and_no_reference_reaches_the_json(audit_run):
    sessions = storage.read_table(str(audit_run / "08-dedup"), filter=pc.field("status") == "ok")
    by_id = {r["sample_id"]: r for r in sessions.to_pylist()}
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    for tar_path in (audit_run / "shards").rglob("*.tar"):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                samples[key][ext] = tar.extractfile(member).read()
    assert set(samples) == set(by_id)
    masks = 0
    for key, members in samples.items():
        row = by_id[key]
        for i, ref in enumerate(row["frames"]):
            assert members[f"frame_{i}.jpg"] == media_store.load(ref, str(audit_run))
        for roe in row["roe"]:
            for side in ("src", "tgt"):
                ref = roe[f"{side}_mask"]
                stored = media_store.load(ref, str(audit_run)) if ref else zero_mask_png(row["frame_width"], row["frame_height"])
                assert members[f"mask_{roe['turn']}_{side}.png"] == stored
                masks += ref is not None
        meta = members["json"].decode()
        assert not STORED.search(meta) and "frames" not in json.loads(meta)
    assert masks >= 1


def test_shards_of_references_are_byte_identical_to_shards_of_inlined_bytes(audit_run, tmp_path, ray_local):
    """The same manifest with its media inlined as bytes (the layout before references) shards
    into the very same tars: members, json and rotation by size unchanged."""
    before = tmp_path / "before" / "08-dedup"
    for part in layout.manifest_parts(str(audit_run / "08-dedup")):
        table = storage.read_table(part)
        inlined = rows_to_table(media_store.inlined_rows(table, str(audit_run)), media_store.inlined_schema(table.schema))
        storage.write_table_atomic(inlined, str(before / Path(part).name))
    assert any(f.type == pa.list_(pa.binary()) for f in storage.read_schema(layout.manifest_parts(str(before))[0]))
    tars = {}
    for name, input_dir in (("before", before), ("after", audit_run / "08-dedup")):
        shards = tmp_path / name / "shards"
        # A small max_bytes: rotation by estimated size is exercised too.
        _shard_stage(output_dir=str(shards), max_bytes=200_000).run_sink(sink_context(input_dir, tmp_path / name / "09-shard"))
        tars[name] = {str(p.relative_to(shards)): p.read_bytes() for p in sorted(shards.rglob("*.tar"))}
    assert len(tars["after"]) >= 2 and tars["after"] == tars["before"]
    light = storage.read_schema(layout.manifest_parts(str(tmp_path / "after" / "09-shard"))[0])
    assert "frames" not in light.names and not [leaf for f in light for leaf in _binary_leaves(f)]


def test_browse_renders_frames_and_masks_and_show_prints_references_with_sizes(audit_run):
    ground = storage.read_table(str(audit_run / "06-ground"), filter=pc.field("status") == "ok").to_pylist()
    row = next(r for r in ground if any(t["src_mask"] or t["tgt_mask"] for t in r["roe"]))
    images = browse_images(audit_run, row["sample_id"])
    assert {f"frame-{i}" for i in range(len(row["frames"]))} <= set(images)
    assert any(name.startswith("roe-") for name in images)
    for data in images.values():
        Image.open(io.BytesIO(data)).verify()

    # Its newest row is the shard stage's (frames left out, masks kept as references).
    shown = CliRunner().invoke(app, ["show", str(audit_run), row["sample_id"]])
    assert shown.exit_code == 0, shown.output
    mask = next(t["src_mask"] or t["tgt_mask"] for t in row["roe"] if t["src_mask"] or t["tgt_mask"])
    assert f"<{len(media_store.load(mask, str(audit_run)))} bytes> {mask}" in shown.output


def test_a_run_reading_another_runs_manifest_resolves_its_media(audit_run, tmp_path, ray_local):
    other = tmp_path / "other"
    run(compose(["stage=embed", "models=tiny", f"input={audit_run / '05-annotate'}", f"output={other}", "progress=false"]))
    mine = {r["sample_id"]: r for r in storage.read_table(str(other / "01-embed")).to_pylist()}
    theirs = {r["sample_id"]: r for r in storage.read_table(str(audit_run / "07-embed")).to_pylist()}
    assert mine.keys() == theirs.keys()
    for sample_id, row in mine.items():
        # The other run's references became absolute: they resolve from this run, and the copy still does.
        assert all(ref == str(audit_run / theirs[sample_id]["frames"][i]) for i, ref in enumerate(row["frames"]))
        assert row["content_hash"] == theirs[sample_id]["content_hash"]  # the same middle frame was embedded
    assert not (other / "01-embed" / layout.MEDIA_DIR).exists()
    assert media_ext(storage.read_schema(layout.manifest_parts(str(other / "01-embed"))[0]).field("frames")) == "jpg"


def test_a_rerun_after_a_kill_rewrites_and_duplicates_no_media(audit_run, tmp_path, ray_local):
    out = tmp_path / "resumed"
    args = ["stage=sample_frames", f"input={audit_run / '03-filter_quality'}", f"output={out}", "progress=false"]
    run(compose(args))
    stage_dir = out / "01-sample_frames"
    files = {p: p.stat().st_mtime_ns for p in (stage_dir / layout.MEDIA_DIR).rglob("*") if p.is_file()}
    parts = sorted(stage_dir.glob("part-*.parquet"))
    written = storage.read_table(str(parts[0])).to_pylist()
    # Killed after a fragment's media were stored but before its part was written: the rerun redoes it.
    parts[0].unlink()
    (stage_dir / layout.RUN_JSON).unlink()
    run(compose(args))
    assert storage.read_table(str(parts[0])).to_pylist() == written
    after = {p: p.stat().st_mtime_ns for p in (stage_dir / layout.MEDIA_DIR).rglob("*") if p.is_file()}
    assert after == files and len(files) >= 2  # the same files, none written again, no temporary left
