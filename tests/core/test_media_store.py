"""Media stored once: media columns declared in a stage's Columns become references in manifests,
the bytes land once in the stage that made them, and stages and readers see bytes again."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pytest
from pydantic import BaseModel, Field

from curation.core import layout, media_store, storage
from curation.core.config import build_stage, compose
from curation.core.media_store import MediaStore
from curation.core.schema import Jpeg, Png, SampleRow, arrow_schema, media_ext, rows_to_table
from curation.core.stage import Row, Stage, stage_names
from curation.shards.writer import estimated_tar_bytes


class Region(BaseModel):
    turn: int
    mask: Png | None = None


class MadeColumns(BaseModel):
    frames: list[Jpeg] | None = Field(None, description="two frames")
    regions: list[Region] | None = Field(None, description="a mask per turn, nested as ground's are")


class MakeMedia(Stage):
    """Makes media from each row's source_uri: two frames and one nested mask."""

    name: ClassVar[str] = "make_media"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = MadeColumns

    def process(self, row: Row) -> list[Row]:
        seed = row["source_uri"].encode()
        return [self.enrich(row, frames=[b"jpg-a-" + seed, b"jpg-b-" + seed], regions=[{"turn": 0, "mask": b"png-" + seed}])]


class LookColumns(BaseModel):
    seen: list[str] | None = Field(None, description="what each media value looked like to the stage")


class LookAtFrames(Stage):
    """Reads the frames; leaves the masks alone: records the Python type of each value it is handed."""

    name: ClassVar[str] = "look_at_frames"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = LookColumns
    reads_media: ClassVar[tuple[str, ...]] = ("frames",)

    def process(self, row: Row) -> list[Row]:
        seen = [type(f).__name__ for f in row["frames"]] + [type(r["mask"]).__name__ for r in row["regions"]]
        return [self.enrich(row, seen=seen)]


def _sources(*uris: str) -> pa.Table:
    rows = [dict(sample_id=f"s{i}", kind="clip", source_uri=u, stage="ingest", stage_version="1") for i, u in enumerate(uris)]
    return rows_to_table(rows, arrow_schema(SampleRow))


def _files(stage_dir: Path) -> list[Path]:
    return sorted(p for p in (stage_dir / layout.MEDIA_DIR).rglob("*") if p.is_file())


# ---- schema ---------------------------------------------------------------------------------


def test_media_columns_are_references_marked_in_the_arrow_schema():
    schema = arrow_schema(MadeColumns)
    assert schema.field("frames").type == pa.list_(pa.string()) and media_ext(schema.field("frames")) == "jpg"
    mask = schema.field("regions").type.value_type.field("mask")
    assert mask.type == pa.string() and media_ext(mask) == "png"
    assert media_store.media_columns(schema) == ["frames", "regions"]
    inlined = media_store.inlined_schema(schema)
    assert inlined.field("frames").type == pa.list_(pa.binary())
    assert inlined.field("regions").type.value_type.field("mask").type == pa.binary()


def test_the_media_marker_survives_a_parquet_round_trip(tmp_path):
    uri = str(tmp_path / "part-00000.parquet")
    storage.write_table_atomic(rows_to_table([{"frames": ["a/b.jpg"], "regions": [{"turn": 0, "mask": "c.png"}]}],
                                             arrow_schema(MadeColumns)), uri)
    schema = storage.read_schema(uri)
    assert media_ext(schema.field("frames")) == "jpg"
    assert media_ext(schema.field("regions").type.value_type.field("mask")) == "png"


# ---- the store ------------------------------------------------------------------------------


def test_put_writes_each_content_once_under_a_run_relative_reference(tmp_path):
    run_dir, stage_dir = tmp_path / "run", tmp_path / "run" / "04-sample_frames"
    store = MediaStore(run_dir=str(run_dir), stage_dir=str(stage_dir))
    ref = store.put(b"frame", "jpg")
    assert ref.startswith("04-sample_frames/media/") and ref.endswith(".jpg") and not media_store.is_absolute(ref)
    assert media_store.load(ref, str(run_dir)) == b"frame"
    first = _files(stage_dir)
    mtime = first[0].stat().st_mtime_ns
    assert store.put(b"frame", "jpg") == ref  # a rerun: same name, nothing rewritten
    assert _files(stage_dir) == first and first[0].stat().st_mtime_ns == mtime
    assert not list((stage_dir / "media").rglob(".tmp-*"))
    # A stage dir outside the run dir gets absolute references.
    elsewhere = MediaStore(run_dir=str(run_dir), stage_dir=str(tmp_path / "other" / "01-x")).put(b"frame", "jpg")
    assert media_store.is_absolute(elsewhere) and media_store.load(elsewhere, None) == b"frame"


def test_media_passed_through_keep_their_reference_without_hashing_and_new_media_are_stored(tmp_path):
    """A stage that hands its input frames on untouched costs no hashing (found by identity); bytes
    it makes that equal an input get the input's reference; other new bytes are stored once."""
    run_dir = tmp_path / "run"
    upstream = MediaStore(run_dir=str(run_dir), stage_dir=str(run_dir / "01-a"))
    refs = [upstream.put(b"frame-%d" % i, "jpg") for i in range(3)]
    schema = pa.schema([pa.field("frames", pa.list_(pa.string()), metadata={b"curate.media": b"jpg"})])
    rows = [{"frames": refs[:2]}, {"frames": refs[2:]}]
    known = media_store.inline(rows, schema, str(run_dir))
    assert rows[0]["frames"] == [b"frame-0", b"frame-1"]
    media = MediaStore(run_dir=str(run_dir), stage_dir=str(run_dir / "02-b"))
    passed = [dict(row) for row in rows]
    media_store.store(passed, schema, media, known)
    assert [r["frames"] for r in passed] == [refs[:2], refs[2:]] and known._by_digest is None  # nothing hashed
    made = [{"frames": [b"frame-0", b"new frame"]}]  # equal to an input (another object), and new
    media_store.store(made, schema, media, known)
    assert made[0]["frames"][0] == refs[0] and made[0]["frames"][1].startswith("02-b/media/")
    assert media_store.load(made[0]["frames"][1], str(run_dir)) == b"new frame"


def test_a_relative_reference_needs_its_run_dir():
    with pytest.raises(ValueError, match="relative to a run dir"):
        media_store.resolve("04-x/media/ab/ab.jpg", None)


def test_sizes_come_from_a_listing_and_leave_missing_files_out(tmp_path):
    store = MediaStore(run_dir=str(tmp_path), stage_dir=str(tmp_path / "01-a"))
    refs = [store.put(b"x" * n, "jpg") for n in (1, 700)]
    loose = tmp_path / "loose.png"
    loose.write_bytes(b"y" * 5)
    found = media_store.sizes([*refs, str(loose), "01-a/media/00/" + "0" * 64 + ".jpg"], str(tmp_path))
    assert found == {refs[0]: 1, refs[1]: 700, str(loose): 5}


def test_shard_size_estimates_count_referenced_files_as_they_counted_bytes(tmp_path):
    """The shard plan rolls tars by these estimates: references must weigh what the bytes did."""
    frames = [[b"a" * 100, b"b" * 1000], None, [b"c" * 513]]
    schema = pa.schema([pa.field("frames", pa.list_(pa.binary())), pa.field("mask", pa.binary())])
    inline = pa.table({"frames": frames, "mask": [b"m" * 10, None, b"n" * 600]}, schema=schema)
    store = MediaStore(run_dir=str(tmp_path), stage_dir=str(tmp_path / "01-a"))
    ref_schema = pa.schema([pa.field("frames", pa.list_(pa.string()), metadata={b"curate.media": b"jpg"}),
                            pa.field("mask", pa.string(), metadata={b"curate.media": b"png"})])
    rows = inline.to_pylist()
    media_store.store(rows, ref_schema, store)
    referenced = pa.Table.from_pylist(rows, schema=ref_schema)
    assert isinstance(referenced.column("mask")[0].as_py(), str)
    assert estimated_tar_bytes(referenced, str(tmp_path)).tolist() == estimated_tar_bytes(inline).tolist()


# ---- stages ---------------------------------------------------------------------------------


def _bound(stage: Stage, run_dir: Path, stage_dir: str) -> Stage:
    stage.bind_run(str(run_dir), str(run_dir / stage_dir))
    return stage


def test_a_bound_stage_stores_what_it_makes_and_the_next_reads_only_what_it_declares(tmp_path):
    run_dir = tmp_path / "run"
    made = _bound(MakeMedia(), run_dir, "01-make_media")(_sources("/v1.mp4", "/v2.mp4"))
    (row, _) = made.to_pylist()
    assert all(isinstance(f, str) and f.startswith("01-make_media/media/") for f in row["frames"])
    assert row["regions"][0]["mask"].endswith(".png")
    assert media_store.load(row["frames"][0], str(run_dir)) == b"jpg-a-/v1.mp4"
    assert len(_files(run_dir / "01-make_media")) == 6

    looked = _bound(LookAtFrames(), run_dir, "02-look_at_frames")(made).to_pylist()
    # Frames arrive as bytes (declared), masks as references (not declared) ...
    assert looked[0]["seen"] == ["bytes", "bytes", "str"]
    # ... and both leave as the references they came with: nothing is stored again.
    assert [r["frames"] for r in looked] == [r["frames"] for r in made.to_pylist()]
    assert [r["regions"] for r in looked] == [r["regions"] for r in made.to_pylist()]
    assert not (run_dir / "02-look_at_frames" / layout.MEDIA_DIR).exists()


def test_a_stage_outside_a_run_keeps_its_media_as_bytes():
    out = MakeMedia()(_sources("/v1.mp4"))
    assert out.schema.field("frames").type == pa.list_(pa.binary())
    assert out.to_pylist()[0]["regions"][0]["mask"] == b"png-/v1.mp4"


def test_absolutize_makes_another_runs_references_resolve_from_anywhere(tmp_path):
    run_dir = tmp_path / "run"
    made = _bound(MakeMedia(), run_dir, "01-make_media")(_sources("/v1.mp4"))
    moved = media_store.absolutize(made, str(run_dir))
    row: dict[str, Any] = moved.to_pylist()[0]
    assert all(f.startswith(str(run_dir) + "/01-make_media/media/") for f in row["frames"])
    assert media_store.load(row["regions"][0]["mask"], None) == b"png-/v1.mp4"
    assert media_store.absolutize(moved, "/elsewhere").to_pylist() == moved.to_pylist()  # absolute ones stay
    assert media_ext(moved.schema.field("frames")) == "jpg"


@pytest.mark.parametrize("name", stage_names())
def test_every_stage_takes_its_media_store_to_its_workers(name, tmp_path):
    """Ray pickles the stage to its workers; stages that drop private state there (loaded models,
    clients) must keep the store, or their workers could neither read nor store media."""
    stage = build_stage(name, compose([f"stage={name}", "models=tiny"]))
    stage.bind_run(str(tmp_path), str(tmp_path / f"01-{name}"))
    assert pickle.loads(pickle.dumps(stage))._media == MediaStore(run_dir=str(tmp_path), stage_dir=str(tmp_path / f"01-{name}"))
