"""Ingest through its batch call: real videos become `video` rows, every bad input an error row
with a clear reason, and one bad file never costs the batch."""

from __future__ import annotations

import pyarrow as pa
import pytest

from curation.core.config import build_stage
from curation.core.schema import SampleRow, arrow_schema, rows_to_table

from tests.fixtures.badmedia import BAD_MEDIA
from tests.fixtures.media import video_path

GOOD = {  # display width, height, frames
    "built/rotate-90.mp4": (288, 512, 240),
    "pyscenedetect/issue-195-aspect-ratio.mp4": (1024, 576, 628),
    "built/vfr-drop3.mp4": (512, 288, 160),
    "pyscenedetect/issue-236-split-copy.mkv": (1920, 1080, 48),
}


def source_table(uris: list[str]) -> pa.Table:
    rows = [
        dict(
            sample_id=f"src-{i:03d}", parent_ids=[], kind="source", source_uri=uri, status="ok",
            reason=None, stage="sources", stage_version="1", license=f"licence-{i}",
        )
        for i, uri in enumerate(uris)
    ]
    schema = arrow_schema(SampleRow).append(pa.field("license", pa.string()))
    return rows_to_table(rows, schema)


@pytest.fixture
def ingest():
    stage = build_stage("ingest")
    stage.ensure_setup()
    return stage


def test_good_and_bad_sources_in_one_batch(ingest, tmp_path):
    bad = {case: str(build(tmp_path)) for case, (build, _) in BAD_MEDIA.items()}
    uris = [str(video_path(name)) for name in GOOD] + list(bad.values())
    batch = source_table(uris)
    out = ingest(batch)

    assert out.num_rows == batch.num_rows
    rows = {r["source_uri"]: r for r in out.to_pylist()}
    for i, name in enumerate(GOOD):
        row = rows[str(video_path(name))]
        assert row["status"] == "ok" and row["reason"] is None and row["kind"] == "video"
        assert row["stage"] == "ingest" and row["stage_version"] == ingest.version
        assert row["parent_ids"] == [f"src-{i:03d}"] and row["sample_id"] != f"src-{i:03d}"
        assert (row["width"], row["height"], row["num_frames"]) == GOOD[name]
        assert row["license"] == f"licence-{i}"  # source columns ride along
    assert rows[str(video_path("built/vfr-drop3.mp4"))]["vfr"] is True
    assert rows[str(video_path("built/rotate-90.mp4"))]["rotation"] == -90
    assert rows[str(video_path("pyscenedetect/issue-195-aspect-ratio.mp4"))]["sar"] == "16:11"

    for case, uri in bad.items():
        row = rows[uri]
        prefix = BAD_MEDIA[case][1]
        assert row["status"] == "error" and row["reason"].startswith(prefix), (case, row["reason"])
        assert row["kind"] == "source" and row["sample_id"].startswith("src-")  # the input row, marked
        assert row["stage"] == "ingest" and row["fps"] is None


def test_output_schema_and_deterministic_ids(ingest):
    uri = str(video_path("pyscenedetect/issue-236-split-copy.mkv"))
    first, second = ingest(source_table([uri])), ingest(source_table([uri]))
    assert first.column("sample_id").to_pylist() == second.column("sample_id").to_pylist()
    schema = first.schema
    for name, arrow_type in {
        "fps": pa.float64(), "vfr": pa.bool_(), "num_frames": pa.int64(), "width": pa.int64(),
        "rotation": pa.int64(), "sar": pa.string(), "duration_s": pa.float64(), "time_base": pa.string(),
        "codec": pa.string(), "has_audio": pa.bool_(), "pix_fmt": pa.string(),
    }.items():
        assert schema.field(name).type == arrow_type, name
    assert set(ingest.Columns.model_fields) <= set(schema.names)


def test_max_pixels_override_turns_a_video_into_an_error():
    stage = build_stage("ingest", overrides=["ingest.max_pixels=100000"])
    stage.ensure_setup()
    uri = str(video_path("pyscenedetect/issue-236-split-copy.mkv"))
    (row,) = stage(source_table([uri])).to_pylist()
    assert row["status"] == "error" and row["reason"] == "too_large: 1920x1080 exceeds max_pixels=100000"


def test_licence_filter_keeps_listed_licences_and_drops_the_rest_with_a_reason(tmp_path):
    """The sources' licences as listing records them (curation/sources/files.py); `unknown` is a licence like
    any other for the filter, so it is dropped unless listed."""
    stage = build_stage("ingest", overrides=["ingest.licences=[CC-BY-4.0, apache-2.0]"])
    stage.ensure_setup()
    assert stage.licences == ["cc-by-4.0", "apache-2.0"]  # normalised to ids
    uris = [str(video_path(name)) for name in GOOD][:3]
    batch = source_table(uris)
    batch = batch.append_column("licence", pa.array(["cc-by-4.0", "cc-by-nc-4.0", "unknown"], pa.string()))
    rows = {r["source_uri"]: r for r in stage(batch).to_pylist()}
    kept, nc, unknown = (rows[u] for u in uris)
    assert kept["status"] == "ok" and kept["kind"] == "video" and kept["licence"] == "cc-by-4.0"
    assert (nc["status"], nc["reason"]) == ("dropped", "licence_excluded: cc-by-nc-4.0 (ingest.licences keeps cc-by-4.0, apache-2.0)")
    assert (unknown["status"], unknown["reason"]) == ("dropped", "licence_excluded: unknown (ingest.licences keeps cc-by-4.0, apache-2.0)")
    assert nc["num_frames"] is None and nc["kind"] == "source"  # dropped before it was probed


def test_a_licence_that_is_not_an_id_is_a_config_error():
    with pytest.raises(ValueError, match="SPDX-style id"):
        build_stage("ingest", overrides=["ingest.licence='CC BY 4.0'"])
