from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.core import storage
from curation.core.stage import persist_fragments
from curation.sources.files import SourceError, list_sources


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.mp4").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("not media")
    (tmp_path / "b.MOV").write_bytes(b"x")
    (tmp_path / "x.mp4").mkdir()  # a directory named like a video: listed so ingest can report it
    (tmp_path / "x.mp4" / "inner.mp4").write_bytes(b"x")
    return tmp_path


def test_directory_listing_is_sorted_recursive_and_media_only(tmp_path):
    root = _tree(tmp_path)
    table = list_sources(str(root))
    uris = table.column("source_uri").to_pylist()
    assert uris == sorted([str(root / "a" / "one.mp4"), str(root / "b.MOV"), str(root / "x.mp4")])
    assert set(table.column("kind").to_pylist()) == {"source"}
    assert len(set(table.column("sample_id").to_pylist())) == 3


def test_glob(tmp_path):
    root = _tree(tmp_path)
    uris = list_sources(str(root / "**" / "*.mp4")).column("source_uri").to_pylist()
    assert str(root / "a" / "one.mp4") in uris and str(root / "x.mp4") in uris


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_source_manifest_resolves_relative_paths_and_keeps_extra_columns(tmp_path, fmt):
    root = _tree(tmp_path)
    records = [{"path": "a/one.mp4", "license": "cc-by"}, {"path": str(root / "b.MOV"), "license": "cc0"},
               {"path": "a/one.mp4", "license": "cc-by"}]
    target = root / f"sources.{fmt}"
    if fmt == "jsonl":
        target.write_text("\n".join(json.dumps(r) for r in records))
    elif fmt == "csv":
        target.write_text("path,license\n" + "\n".join(f"{r['path']},{r['license']}" for r in records))
    else:
        pq.write_table(pa.Table.from_pylist(records), target)
    table = list_sources(str(target))
    assert table.column("source_uri").to_pylist() == [str(root / "a" / "one.mp4"), str(root / "b.MOV")]
    assert table.column("license").to_pylist() == ["cc-by", "cc0"]


def test_missing_input_and_manifest_without_path_column_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        list_sources(str(tmp_path / "nope"))
    (tmp_path / "s.jsonl").write_text('{"caption": "x"}\n')
    with pytest.raises(SourceError, match="path columns"):
        list_sources(str(tmp_path / "s.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no media"):
        list_sources(str(tmp_path / "empty"))


def test_persisted_fragments_are_stable_and_new_files_append(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    for i in range(5):
        (media / f"v{i}.mp4").write_bytes(b"x")
    frag_dir = str(tmp_path / "_input")
    first = persist_fragments(list_sources(str(media)), frag_dir, fragment_size=2)
    assert [u.rsplit("/", 1)[1] for u in first] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    before = [storage.read_table(u).column("source_uri").to_pylist() for u in first]
    # Same listing again: nothing changes. A new file: one more fragment, old ones untouched.
    assert persist_fragments(list_sources(str(media)), frag_dir, 2) == first
    (media / "a-new.mp4").write_bytes(b"x")
    again = persist_fragments(list_sources(str(media)), frag_dir, 2)
    assert len(again) == 4
    assert [storage.read_table(u).column("source_uri").to_pylist() for u in again[:3]] == before
    assert storage.read_table(again[3]).column("source_uri").to_pylist() == [str(media / "a-new.mp4")]


def test_licence_is_unknown_unless_stated_by_the_user_or_the_manifest(tmp_path):
    root = _tree(tmp_path)
    assert set(list_sources(str(root)).column("licence").to_pylist()) == {"unknown"}
    assert set(list_sources(str(root), "cc-by-4.0").column("licence").to_pylist()) == {"cc-by-4.0"}
    # A manifest's own licence column wins where it has a value (normalised to an id); blanks take the default.
    manifest = tmp_path / "sources.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [
        {"path": "a/one.mp4", "licence": "CC-BY-NC-4.0"}, {"path": "b.MOV", "licence": None}]))
    table = list_sources(str(manifest), "apache-2.0")
    assert dict(zip(table.column("source_uri").to_pylist(), table.column("licence").to_pylist())) == {
        str(root / "a" / "one.mp4"): "cc-by-nc-4.0", str(root / "b.MOV"): "apache-2.0"}
