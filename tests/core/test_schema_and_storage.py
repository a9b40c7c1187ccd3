from __future__ import annotations

from typing import Annotated

import pyarrow as pa
import pytest
from pydantic import BaseModel

from curation.core import storage
from curation.core.schema import ArrowType, SampleRow, arrow_schema, make_sample_id, merge_schemas, rows_to_table


class Columns(BaseModel):
    fps: float | None = None
    frame_indices: list[int] | None = None
    frames: list[bytes] | None = None
    scores: dict[str, float] | None = None
    vfr: bool | None = None
    embedding: Annotated[list[float] | None, ArrowType(pa.list_(pa.float16(), 4))] = None


def test_arrow_schema_maps_pydantic_types_in_one_place():
    schema = arrow_schema(SampleRow, Columns)
    assert schema.field("sample_id").type == pa.string() and not schema.field("sample_id").nullable
    assert schema.field("parent_ids").type == pa.list_(pa.string())
    assert schema.field("reason").nullable
    assert schema.field("fps").type == pa.float64()
    assert schema.field("frame_indices").type == pa.list_(pa.int64())
    assert schema.field("frames").type == pa.list_(pa.binary())
    assert schema.field("scores").type == pa.map_(pa.string(), pa.float64())
    assert schema.field("vfr").type == pa.bool_()
    assert schema.field("embedding").type == pa.list_(pa.float16(), 4)


def test_unmappable_type_names_the_problem():
    class Bad(BaseModel):
        x: set[int]

    with pytest.raises(TypeError, match="no Arrow type"):
        arrow_schema(Bad)


def test_sample_ids_are_deterministic_and_distinguish_spans():
    a = make_sample_id("clip", "/v.mp4", (0, 10), "p")
    assert a == make_sample_id("clip", "/v.mp4", (0, 10), "p")
    assert a != make_sample_id("clip", "/v.mp4", (0, 11), "p")
    assert a != make_sample_id("clip", "/w.mp4", (0, 10), "p")


def test_merge_schemas_keeps_first_type_and_adds_columns():
    a = pa.schema([("sample_id", pa.string()), ("fps", pa.float64())])
    b = pa.schema([("fps", pa.int64()), ("extra", pa.string())])
    merged = merge_schemas(a, b)
    assert merged.names == ["sample_id", "fps", "extra"]
    assert merged.field("fps").type == pa.float64()


@pytest.mark.parametrize("root", ["local", "memory"])
def test_atomic_write_read_roundtrip_on_local_and_fsspec(tmp_path, root):
    base = str(tmp_path / "m") if root == "local" else f"memory://curate-test-{tmp_path.name}"
    schema = arrow_schema(SampleRow, Columns)
    rows = [dict(sample_id=f"s{i}", kind="clip", source_uri="/v.mp4", stage="t", stage_version="1",
                 fps=25.0, frames=[b"\xff\xd8x"], scores={"a": 1.0}) for i in range(3)]
    storage.write_table_atomic(rows_to_table(rows, schema), storage.join(base, "01-t", "part-00000.parquet"))
    storage.write_json_atomic(storage.join(base, "01-t", "_run.json"), {"ok": 1})
    table = storage.read_table(storage.join(base, "01-t"))
    assert table.num_rows == 3
    assert table.column("frames").to_pylist()[0] == [b"\xff\xd8x"]
    assert storage.read_json(storage.join(base, "01-t", "_run.json")) == {"ok": 1}
    assert storage.list_dirs(base) == ["01-t"]
    # Nothing but the final files: the temp file was renamed, not left behind.
    names = [u.rsplit("/", 1)[1] for u in storage.list_files(storage.join(base, "01-t"))]
    assert names == ["_run.json", "part-00000.parquet"]


def test_read_table_filters_and_projects(tmp_path):
    schema = arrow_schema(SampleRow)
    rows = [dict(sample_id=f"s{i}", kind="video", source_uri="/v", stage="t", stage_version="1",
                 status="ok" if i % 2 else "error") for i in range(6)]
    storage.write_table_atomic(rows_to_table(rows, schema), str(tmp_path / "part-00000.parquet"))
    import pyarrow.compute as pc

    t = storage.read_table(str(tmp_path), columns=["sample_id", "nope"], filter=pc.field("status") == "ok")
    assert t.column_names == ["sample_id"] and t.num_rows == 3
