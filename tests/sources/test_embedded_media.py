"""Edit datasets whose media are embedded bytes (NHR-Edit's parquet form, Kiwi-Edit RefVIE-477K):
the listing writes each medium once to a media store and lists the stored file; bad values are
skipped with a reason. Media are the repo's bundled photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import pyarrow as pa
import pyarrow.parquet as pq

from curation.core.media_store import MediaStore, resolve
from curation.sources.edit_datasets import list_edit_sources, load_adapter, sniff_ext

from tests.fixtures.media import EXAMPLES

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _store(run_dir: Path):
    media = MediaStore(run_dir=str(run_dir), stage_dir=str(run_dir / "01-ingest"))
    return lambda data, ext: resolve(media.put(data, ext), media.run_dir)


def _jpeg(name: str, scale: float = 1.0) -> bytes:
    image = cv2.imread(str(EXAMPLES / "skimage" / name), cv2.IMREAD_COLOR)
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", image)[1].tobytes()


def _png(name: str) -> bytes:
    return (EXAMPLES / "skimage" / name).read_bytes()


def test_sniff_ext_reads_leading_bytes_then_the_stored_name():
    assert sniff_ext(_jpeg("rocket.jpg")) == "jpg" and sniff_ext(_png("chelsea.png")) == "png"
    mp4 = (EXAMPLES / "intel-sample-videos" / "car-detection.mp4").read_bytes()
    assert sniff_ext(mp4) == "mp4"
    assert sniff_ext(b"\x00\x01junk", "frame.webp") == "webp"
    assert sniff_ext(b"\x00\x01junk", "notes.txt") is None and sniff_ext(b"\x00\x01junk") is None


def test_nhr_edit_parquet_form_lists_embedded_images_stored_once(tmp_path):
    cat, rocket, small = _png("chelsea.png"), _jpeg("rocket.jpg"), _jpeg("rocket.jpg", 0.5)
    shard = pa.table({
        "source_image": pa.array([{"bytes": cat, "path": "image_1_original.png"}, {"bytes": rocket, "path": None},
                                  {"bytes": None, "path": None}, {"bytes": b"\x00junk", "path": None}], IMAGE),
        "edited_image": pa.array([{"bytes": small, "path": None}, {"bytes": small, "path": None},
                                  {"bytes": small, "path": None}, {"bytes": small, "path": None}], IMAGE),
        "edit_instruction": ["Add a hat.", "Shrink the rocket.", "No source.", "Junk source."],
        "category": ["Add object", "Change style", "Add object", "Add object"],
    })
    data = tmp_path / "nhr" / "data"
    data.mkdir(parents=True)
    pq.write_table(shard, data / "train-00000-of-00037.parquet", row_group_size=2)
    table, listing = list_edit_sources(str(tmp_path / "nhr"), load_adapter("nhr-edit"), _store(tmp_path / "run"))

    assert listing.rows_read == 4 and listing.rows_listed == 2
    assert listing.skipped == {"source_not_media: NoneType": 1, "source_unknown_embedded_format": 1}
    rows = {r["instruction"]: r for r in table.to_pylist()}
    hat, shrink = rows["Add a hat."], rows["Shrink the rocket."]
    assert Path(hat["source_uri"]).read_bytes() == cat and hat["source_uri"].endswith(".png")
    assert Path(shrink["source_uri"]).read_bytes() == rocket and shrink["source_uri"].endswith(".jpg")
    assert hat["target_uri"] == shrink["target_uri"] and Path(hat["target_uri"]).read_bytes() == small  # one file
    assert all(r["source_uri"].startswith(str(tmp_path / "run" / "01-ingest" / "media")) for r in rows.values())
    assert {r["edit_kind"] for r in rows.values()} == {"pair"} and hat["category"] == "local_add"
    assert hat["reference_uri"] is None

    # Listing again (a resumed run) finds the same rows with the same ids; the store wrote nothing new.
    again, _ = list_edit_sources(str(tmp_path / "nhr"), load_adapter("nhr-edit"), _store(tmp_path / "run"))
    assert again.column("sample_id").to_pylist() == table.column("sample_id").to_pylist()
    # Ids do not depend on where the run keeps its media: a run dir elsewhere lists the same ids.
    elsewhere, _ = list_edit_sources(str(tmp_path / "nhr"), load_adapter("nhr-edit"), _store(tmp_path / "other"))
    assert sorted(elsewhere.column("sample_id").to_pylist()) == sorted(table.column("sample_id").to_pylist())


def test_the_same_edit_in_two_datasets_gets_two_ids(tmp_path):
    """Sample ids hash the dataset in: identical bytes listed by two adapters never collide."""
    shard = pa.table({"source_image": pa.array([{"bytes": _png("coffee.png"), "path": None}], IMAGE),
                      "edited_image": pa.array([{"bytes": _jpeg("rocket.jpg"), "path": None}], IMAGE),
                      "edit_instruction": ["Swap the cup for a rocket."]})
    pq.write_table(shard, tmp_path / "edits.parquet")
    store = _store(tmp_path / "run")
    nhr, _ = list_edit_sources(str(tmp_path / "edits.parquet"), load_adapter("nhr-edit"), store)
    generic_spec = load_adapter("generic")
    generic_spec = generic_spec.model_copy(update={"columns": generic_spec.columns.model_copy(
        update={"source": ["source_image"], "target": ["edited_image"]})})
    generic, _ = list_edit_sources(str(tmp_path / "edits.parquet"), generic_spec, store)
    assert nhr.column("source_uri").to_pylist() == generic.column("source_uri").to_pylist()  # one stored file
    assert nhr.column("sample_id").to_pylist() != generic.column("sample_id").to_pylist()


def _add_member(tar, name: str, data: bytes) -> None:
    import io
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_x2edit_webdataset_shards_list_their_embedded_pairs(tmp_path):
    """X2Edit's shards as its training loader reads them: `json` + `1.0.jpg` (or `.1.jpg`) + `2.jpg`."""
    import json
    import tarfile

    cat, cup, rocket = _png("chelsea.png"), _jpeg("coffee.png"), _jpeg("rocket.jpg")
    shard_dir = tmp_path / "x2" / "X2Edit_data" / "step1x"
    shard_dir.mkdir(parents=True)
    with tarfile.open(shard_dir / "000000.tar", "w") as tar:
        _add_member(tar, "a001.json", json.dumps({"instruction": "Remove the cat.", "task": "删除主体", "label": "step1x"}).encode())
        _add_member(tar, "a001.1.0.jpg", cat)
        _add_member(tar, "a001.2.jpg", cup)
        _add_member(tar, "a002.json", json.dumps({"caption_en": "Make it a rocket.", "label_fine": "replace",
                                                   "label": "AnyEdit"}).encode())
        _add_member(tar, "a002.1.jpg", cup)
        _add_member(tar, "a002.2.jpg", rocket)
        _add_member(tar, "a003.json", json.dumps({"style_zh": "油画", "label": "Style Transfer"}).encode())  # no source member
        _add_member(tar, "a003.jpg", rocket)
        _add_member(tar, "a003.png", cat)
    table, listing = list_edit_sources(str(tmp_path / "x2"), load_adapter("x2edit"), _store(tmp_path / "run"))

    assert (listing.rows_read, listing.rows_listed) == (3, 2)
    assert listing.skipped == {"missing_source": 1}
    rows = {r["source_key"]: r for r in table.to_pylist()}
    assert set(rows) == {"a001", "a002"}
    removal, replace = rows["a001"], rows["a002"]
    assert (removal["instruction"], removal["category"], removal["category_native"]) == ("Remove the cat.", "local_remove", "删除主体")
    assert (replace["instruction"], replace["category"]) == ("Make it a rocket.", "local_change")
    assert Path(removal["source_uri"]).read_bytes() == cat and Path(removal["target_uri"]).read_bytes() == cup
    assert replace["source_uri"] == removal["target_uri"]  # the same image in two samples: stored once
    assert {r["dataset"] for r in rows.values()} == {"x2edit"} and {r["edit_kind"] for r in rows.values()} == {"pair"}


def test_vincie_sessions_list_one_pair_per_transition(tmp_path):
    """VINCIE-10M rows as a third-party reader sees them: `image` (the frames) and `ann_v0` (a JSON
    list, entry k holding text.summary_change for frame k -> k+1)."""
    import json

    frames = [_png("chelsea.png"), _jpeg("coffee.png"), _jpeg("rocket.jpg")]
    ann = json.dumps([{"text": {"summary_change": "Replace the cat with a cup of coffee."}},
                      {"text": {"summary_change": "Turn the cup into a rocket."}}])
    sessions = pa.table({
        "image": pa.array([frames, frames[:2]], pa.list_(pa.binary())),
        "ann_v0": [ann, ann],  # the second session has 2 frames but 2 transitions
    })
    (tmp_path / "vincie" / "data").mkdir(parents=True)
    pq.write_table(sessions, tmp_path / "vincie" / "data" / "train-00000.parquet")
    table, listing = list_edit_sources(str(tmp_path / "vincie"), load_adapter("vincie-10m"), _store(tmp_path / "run"))

    assert listing.rows_read == 2 and listing.rows_listed == 2
    assert listing.skipped == {"session_transitions_mismatch: 2 frames, 2 transitions": 1}
    rows = sorted(table.to_pylist(), key=lambda r: r["source_key"])
    assert [(r["source_key"], r["instruction"]) for r in rows] == [
        ("#0", "Replace the cat with a cup of coffee."), ("#1", "Turn the cup into a rocket.")]
    first, second = rows
    assert Path(first["source_uri"]).read_bytes() == frames[0] and Path(second["target_uri"]).read_bytes() == frames[2]
    assert first["target_uri"] == second["source_uri"]  # the middle frame: one stored file for both pairs
    assert {r["category"] for r in rows} == {"other"} and {r["licence"] for r in rows} == {"apache-2.0"}
