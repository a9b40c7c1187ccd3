"""Edit-dataset adapters: each fixture is built in the dataset's own published layout.

Media files are zero-cost placeholders: the listing never opens them (ingest's probe does).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.core.schema import make_sample_id
from curation.labels.categories import TAXONOMY, lookup_category, normalize_category
from curation.sources.edit_datasets import (
    EDIT_SOURCE_SCHEMA,
    AdapterSpec,
    EditSourceError,
    adapter_names,
    list_edit_sources,
    load_adapter,
)

ALL_ADAPTERS = ["ditto-1m", "generic", "gpt-image-edit-1.5m", "kiwi-refvie-477k", "nhr-edit", "openve-3m", "reco", "senorita-2m",
                "vincie-10m", "x2edit"]


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def _write_jsonl(path: Path, records: list, blank_lines: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records]
    path.write_text(("\n\n" if blank_lines else "\n").join(lines) + "\n")


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _touch(root: Path, *relpaths: str) -> None:
    for rel in relpaths:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\x00")


def _edits(table: pa.Table) -> list[tuple]:
    return list(zip(*(table.column(c).to_pylist() for c in ("source_uri", "target_uri", "instruction", "category", "category_native"))))


def _assert_contract(table: pa.Table, dataset: str) -> None:
    """Columns, constants, sort order and ids every adapter's output shares."""
    assert table.schema == EDIT_SOURCE_SCHEMA
    rows = table.to_pylist()
    for r in rows:
        assert (r["kind"], r["status"], r["reason"], r["stage"], r["stage_version"]) == ("source", "ok", None, "sources", "1")
        assert r["parent_ids"] == [] and r["dataset"] == dataset
        assert r["category"] in TAXONOMY
        # The dataset is hashed in, so two datasets listing the same files never share an id.
        assert r["sample_id"] == make_sample_id("source", r["source_uri"], r["target_uri"], r["instruction"], dataset,
                                                r["reference_uri"])
    keys = [(r["source_uri"], r["target_uri"], r["instruction"]) for r in rows]
    assert keys == sorted(keys)
    assert len({r["sample_id"] for r in rows}) == len(rows)


# --------------------------------------------------------------------------------------------
# taxonomy
# --------------------------------------------------------------------------------------------


def test_taxonomy_and_builtin_synonyms_are_case_space_underscore_hyphen_insensitive():
    assert TAXONOMY == ("local_change", "local_add", "local_remove", "background_change", "global_style",
                        "color_texture", "camera", "relight", "other")
    cases = {
        "add": "local_add", "Object Addition": "local_add", "remove": "local_remove", "Removal": "local_remove",
        "object_removal": "local_remove", "REPLACE": "local_change", "swap": "local_change", "Object-Swap": "local_change",
        "Local Change": "local_change", "style": "global_style", "Style Transfer": "global_style",
        "global-style": "global_style", "Background Change": "background_change", "color": "color_texture",
        "texture": "color_texture", "camera": "camera", "Camera Multi-Shot": "camera", "relight": "relight",
        "Lighting": "relight", "  local_add ": "local_add",
    }
    for raw, name in cases.items():
        assert normalize_category(raw, {}) == name, raw
    assert normalize_category("teleport the cat", {}) == "other"
    assert normalize_category(None, {}) == "other"
    assert lookup_category("teleport the cat", {}) is None


def test_adapter_mapping_wins_over_builtins():
    assert normalize_category("style", {"Style": "color_texture"}) == "color_texture"
    assert normalize_category("obj-swap", {"obj_swap": "background_change"}) == "background_change"
    assert normalize_category("remove", {"style": "color_texture"}) == "local_remove"


def test_every_bundled_adapter_loads_and_maps_only_to_the_taxonomy():
    assert adapter_names() == ALL_ADAPTERS
    for name in ALL_ADAPTERS:
        spec = load_adapter(name)
        assert set(spec.categories.values()) <= set(TAXONOMY)
    assert load_adapter("reco").edit_kind == "triplet" and load_adapter("nhr-edit").edit_kind == "pair"
    assert load_adapter("generic").edit_kind == "auto"


def test_every_bundled_adapter_declares_its_cards_licence():
    """The licences their dataset cards state; Señorita-2M's gated card states none, and a generic
    manifest's is not known: `unknown`, never guessed."""
    assert {name: load_adapter(name).licence for name in ALL_ADAPTERS} == {
        "ditto-1m": "cc-by-nc-sa-4.0", "generic": "unknown", "gpt-image-edit-1.5m": "cc-by-4.0", "kiwi-refvie-477k": "unknown",
        "nhr-edit": "apache-2.0",
        "openve-3m": "cc-by-nc-4.0", "reco": "cc-by-nc-sa-4.0", "senorita-2m": "unknown",
        "vincie-10m": "apache-2.0", "x2edit": "unknown"}


# --------------------------------------------------------------------------------------------
# Ditto-1M: training_metadata/<task>.json, paths relative to videos/
# --------------------------------------------------------------------------------------------


def _ditto(root: Path) -> Path:
    _touch(root, "videos/source/a.mp4", "videos/source/c.mp4", "videos/global_style1/a_1.mp4",
           "videos/local/a_2.mp4", "videos/sim2real/c.mp4", "source_video_captions/a.txt")
    _write_json(root / "training_metadata/global_style.json", [
        {"source_path": "source/a.mp4", "instruction": "Make it a Van Gogh painting", "edited_path": "global_style1/a_1.mp4"},
        {"source_path": "source/b.mp4", "instruction": "   ", "edited_path": "global_style1/b_1.mp4"},
    ])
    local = {"source_path": "source/a.mp4", "instruction": "Replace the dog with a cat", "edited_path": "local/a_2.mp4"}
    _write_json(root / "training_metadata/local.json", [local, dict(local)])
    _write_json(root / "training_metadata/sim2real.json", [
        {"source_path": "source/c.mp4", "instruction": "Make it photorealistic", "edited_path": "sim2real/c.mp4"},
    ])
    return root


def test_ditto_1m(tmp_path):
    root = _ditto(tmp_path / "Ditto-1M")
    table, listing = list_edit_sources(str(root), load_adapter("ditto-1m"))
    v = root / "videos"
    assert _edits(table) == [
        (str(v / "source/a.mp4"), str(v / "global_style1/a_1.mp4"), "Make it a Van Gogh painting", "global_style", "global_style"),
        (str(v / "source/a.mp4"), str(v / "local/a_2.mp4"), "Replace the dog with a cat", "local_change", "local"),
        (str(v / "source/c.mp4"), str(v / "sim2real/c.mp4"), "Make it photorealistic", "other", "sim2real"),
    ]
    assert set(table.column("edit_kind").to_pylist()) == {"triplet"}
    assert table.column("source_key").to_pylist() == [None, None, None]
    _assert_contract(table, "ditto-1m")
    assert listing.metadata_files == 3 and listing.rows_read == 5 and listing.rows_listed == 3
    assert listing.skipped == {"missing_instruction": 1}
    assert listing.duplicates == 1
    assert listing.unknown_categories == {"sim2real": 1}
    assert listing.by_category == {"global_style": 1, "local_change": 1, "other": 1}
    # one source with two edits: both listed, with different ids; a rerun gives the same ids
    ids = table.column("sample_id").to_pylist()
    assert ids[0] != ids[1]
    assert list_edit_sources(str(root), load_adapter("ditto-1m"))[0].column("sample_id").to_pylist() == ids


# --------------------------------------------------------------------------------------------
# ReCo-Data: <task>/<task>_data_configs.json, paths relative to the root
# --------------------------------------------------------------------------------------------


def test_reco(tmp_path):
    root = tmp_path / "ReCo-Data"
    _touch(root, "add/src_videos/0001.mp4", "add/tar_videos/0001.mp4", "remove/src_videos/0002.mp4",
           "remove/tar_videos/0002.mp4", "style/src_videos/0004.mp4", "style/tar_videos/0004.mp4",
           "video_masks/add/0001.mp4")
    _write_json(root / "add/add_data_configs.json", [
        {"src_video": "add/src_videos/0001.mp4", "tar_video": "add/tar_videos/0001.mp4",
         "instruction_final_refine": " Add a red kite flying in the sky. ", "instruction": "add a kite"},
    ])
    _write_json(root / "remove/remove_data_configs.json", [
        {"src_video": "remove/src_videos/0002.mp4", "tar_video": "remove/tar_videos/0002.mp4",
         "instruction_final_refine": "Remove the man on the left."},
        {"src_video": "remove/src_videos/0003.mp4", "tar_video": "remove/tar_videos/0003.mp4",
         "instruction_final_refine": ""},
    ])
    _write_json(root / "style/style_data_configs.json", [
        {"src_video": "style/src_videos/0004.mp4", "tar_video": "style/tar_videos/0004.mp4",
         "instruction_final_refine": "Turn the video into a watercolor painting."},
    ])
    _write_json(root / "motion/motion_data_configs.json", [
        {"src_video": "motion/src_videos/0005.mp4", "tar_video": "motion/tar_videos/0005.mp4",
         "instruction_final_refine": "Make the dog jump."},
    ])
    table, listing = list_edit_sources(str(root), load_adapter("reco"))
    assert _edits(table) == [
        (str(root / "add/src_videos/0001.mp4"), str(root / "add/tar_videos/0001.mp4"),
         "Add a red kite flying in the sky.", "local_add", "add"),
        (str(root / "motion/src_videos/0005.mp4"), str(root / "motion/tar_videos/0005.mp4"),
         "Make the dog jump.", "other", "motion"),
        (str(root / "remove/src_videos/0002.mp4"), str(root / "remove/tar_videos/0002.mp4"),
         "Remove the man on the left.", "local_remove", "remove"),
        (str(root / "style/src_videos/0004.mp4"), str(root / "style/tar_videos/0004.mp4"),
         "Turn the video into a watercolor painting.", "global_style", "style"),
    ]
    _assert_contract(table, "reco")
    assert set(table.column("licence").to_pylist()) == {"cc-by-nc-sa-4.0"}
    # Both phrasings ReCo ships are kept under their own names; the refined one is the instruction.
    assert table.column("dataset_captions").to_pylist()[0] == [
        {"field": "instruction_final_refine", "text": "Add a red kite flying in the sky."},
        {"field": "instruction", "text": "add a kite"}]
    assert table.column("dataset_captions").to_pylist()[1] == [{"field": "instruction_final_refine", "text": "Make the dog jump."}]
    assert (listing.metadata_files, listing.rows_read, listing.rows_listed) == (4, 5, 4)
    assert listing.skipped == {"missing_instruction": 1}
    assert listing.unknown_categories == {"motion": 1}


# --------------------------------------------------------------------------------------------
# OpenVE-3M: csv_files/<category>.csv with original_video, video, prompt; paths under videos/
# --------------------------------------------------------------------------------------------


def test_openve_3m(tmp_path):
    root = tmp_path / "OpenVE-3M"
    _touch(root, "videos/local_add/000001_src.mp4", "videos/local_add/000001_edit.mp4")
    header = ["original_video", "video", "prompt"]
    _write_csv(root / "csv_files/local_add.csv", header, [
        ["local_add/000001_src.mp4", "local_add/000001_edit.mp4", "Add a small wooden boat drifting on the lake."],
        ["local_add/000002_src.mp4", "local_add/000002_edit.mp4", ""],
    ])
    _write_csv(root / "csv_files/global_style.csv", header, [
        ["global_style/000003_src.mp4", "global_style/000003_edit.mp4", "Apply the Ukiyo-e style."],
    ])
    _write_csv(root / "csv_files/subtitles_edit.csv", header, [
        ["subtitles/000004_src.mp4", "subtitles/000004_edit.mp4", "Change the subtitle to 'Hello'."],
    ])
    _write_csv(root / "csv_files/motion_transfer.csv", header, [
        ["motion/000005_src.mp4", "motion/000005_edit.mp4", "Make the car drive backwards."],
    ])
    # a category column, where present, wins over the file name
    _write_csv(root / "csv_files/mixed.csv", ["original_video", "video", "prompt", "edited_type"], [
        ["mixed/000006_src.mp4", "mixed/000006_edit.mp4", "Cut to a close-up shot of the singer.", "Camera Multi-Shot Edit"],
    ])
    table, listing = list_edit_sources(str(root), load_adapter("openve-3m"))
    v = root / "videos"
    assert _edits(table) == [
        (str(v / "global_style/000003_src.mp4"), str(v / "global_style/000003_edit.mp4"),
         "Apply the Ukiyo-e style.", "global_style", "global_style"),
        (str(v / "local_add/000001_src.mp4"), str(v / "local_add/000001_edit.mp4"),
         "Add a small wooden boat drifting on the lake.", "local_add", "local_add"),
        (str(v / "mixed/000006_src.mp4"), str(v / "mixed/000006_edit.mp4"),
         "Cut to a close-up shot of the singer.", "camera", "Camera Multi-Shot Edit"),
        (str(v / "motion/000005_src.mp4"), str(v / "motion/000005_edit.mp4"),
         "Make the car drive backwards.", "other", "motion_transfer"),
        (str(v / "subtitles/000004_src.mp4"), str(v / "subtitles/000004_edit.mp4"),
         "Change the subtitle to 'Hello'.", "other", "subtitles_edit"),
    ]
    _assert_contract(table, "openve-3m")
    assert (listing.metadata_files, listing.rows_read, listing.rows_listed) == (5, 6, 5)
    assert listing.skipped == {"missing_instruction": 1}
    # subtitles_edit is mapped to `other` on purpose; only the unmapped one is "unknown"
    assert listing.unknown_categories == {"motion_transfer": 1}
    assert listing.by_category == {"camera": 1, "global_style": 1, "local_add": 1, "other": 2}


# --------------------------------------------------------------------------------------------
# Señorita-2M (best-guess schema): root JSON lists, ./obj_swap_videos/ renamed obj_swap_upload/
# --------------------------------------------------------------------------------------------


def test_senorita_2m(tmp_path):
    root = tmp_path / "Senorita"
    _touch(root, "obj_swap_upload/0001_src.mp4", "obj_swap_upload/0001_tgt.mp4")
    _write_json(root / "updated_data_obj_swap_videos.json", [
        {"source_video_path": "./obj_swap_videos/0001_src.mp4", "target_video_path": "./obj_swap_videos/0001_tgt.mp4",
         "instruction": "Swap the cat with a corgi.", "enhanced_instruction": "Replace the grey cat with a corgi."},
    ])
    _write_json(root / "updated_data_obj_removal.json", [
        {"source_video_path": "./obj_removal_videos_upload/0002_src.mp4",
         "target_video_path": "./obj_removal_videos_upload/0002_tgt.mp4", "instruction": "Remove the bicycle."},
        {"source_video_path": "./obj_removal_videos_upload/0003_src.mp4", "instruction": "Remove the lamp."},
    ])
    _write_json(root / "inpainting_data.json", [
        {"source_video_path": "inpainting_upload/0004_src.mp4", "target_video_path": "inpainting_upload/0004_tgt.mp4",
         "instruction": "Fill the masked region."},
    ])
    table, listing = list_edit_sources(str(root), load_adapter("senorita-2m"))
    assert _edits(table) == [
        (str(root / "inpainting_upload/0004_src.mp4"), str(root / "inpainting_upload/0004_tgt.mp4"),
         "Fill the masked region.", "other", "inpainting"),
        (str(root / "obj_removal_videos_upload/0002_src.mp4"), str(root / "obj_removal_videos_upload/0002_tgt.mp4"),
         "Remove the bicycle.", "local_remove", "obj_removal"),
        (str(root / "obj_swap_upload/0001_src.mp4"), str(root / "obj_swap_upload/0001_tgt.mp4"),
         "Swap the cat with a corgi.", "local_change", "obj_swap"),
    ]
    _assert_contract(table, "senorita-2m")
    assert listing.skipped == {"missing_target": 1}
    assert listing.unknown_categories == {"inpainting": 1}


# --------------------------------------------------------------------------------------------
# NHR-Edit: train/metadata.jsonl, image paths relative to train/
# --------------------------------------------------------------------------------------------


def test_nhr_edit(tmp_path):
    root = tmp_path / "nhr-edit"
    _touch(root, "train/images/00/image_1_original.jpg", "train/images/00/image_1_edited_0.jpg",
           "train/images/01/image_2_original.jpg", "train/images/01/image_2_edited_0.jpg")
    _write_jsonl(root / "train/metadata.jsonl", [
        {"id": "1_0", "source_image": "images/00/image_1_original.jpg", "edited_image": "images/00/image_1_edited_0.jpg",
         "edit_instruction": "Add a straw hat to the man.", "category": "Add object", "style": "photo"},
        {"id": "2_0", "source_image": "images/01/image_2_original.jpg", "edited_image": "images/01/image_2_edited_0.jpg",
         "edit_instruction": "Remove the car from the street.", "category": "Remove object"},
        {"id": "3_0", "source_image": "images/02/image_3_original.jpg", "edited_image": "images/02/image_3_edited_0.jpg",
         "edit_instruction": "Make it snow.", "category": "Change weather"},
        {"id": "4_0", "source_image": "images/02/image_4_original.jpg", "edited_image": "images/02/image_4_edited_0.jpg",
         "category": "Add object"},
    ], blank_lines=True)
    table, listing = list_edit_sources(str(root), load_adapter("nhr-edit"))
    t = root / "train/images"
    assert _edits(table) == [
        (str(t / "00/image_1_original.jpg"), str(t / "00/image_1_edited_0.jpg"),
         "Add a straw hat to the man.", "local_add", "Add object"),
        (str(t / "01/image_2_original.jpg"), str(t / "01/image_2_edited_0.jpg"),
         "Remove the car from the street.", "local_remove", "Remove object"),
        (str(t / "02/image_3_original.jpg"), str(t / "02/image_3_edited_0.jpg"),
         "Make it snow.", "other", "Change weather"),
    ]
    assert table.column("source_key").to_pylist() == ["1_0", "2_0", "3_0"]
    assert set(table.column("edit_kind").to_pylist()) == {"pair"}
    _assert_contract(table, "nhr-edit")
    assert (listing.rows_read, listing.rows_listed) == (4, 3)
    assert listing.skipped == {"missing_instruction": 1}
    assert listing.unknown_categories == {"Change weather": 1}


def test_nhr_edit_parquet_form_listed_without_a_media_store_is_counted_not_listed(tmp_path):
    """The parquet form holds image bytes, not paths: with nowhere to write them (a listing outside a
    run), rows are skipped with a reason, never faked (tests/sources/test_embedded_media.py lists them)."""
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    shard = pa.table({
        "source_image": pa.array([{"bytes": b"\xff\xd8", "path": None}], image),
        "edited_image": pa.array([{"bytes": b"\xff\xd8", "path": None}], image),
        "edit_instruction": ["Add a hat."],
        "category": ["Add object"],
    })
    (tmp_path / "data").mkdir()
    pq.write_table(shard, tmp_path / "data/data-00000-of-00037.parquet")
    spec = load_adapter("nhr-edit").model_copy(update={"metadata": ["data/*.parquet"], "format": "parquet"})
    table, listing = list_edit_sources(str(tmp_path), spec)
    assert table.num_rows == 0 and table.schema == EDIT_SOURCE_SCHEMA
    assert listing.rows_read == 1 and listing.skipped == {"source_embedded_without_media_store": 1}


# --------------------------------------------------------------------------------------------
# GPT-Image-Edit-1.5M: gpt-edit/<family>/<task>/metadata/*.json, paths relative to the task dir
# --------------------------------------------------------------------------------------------


def _gpt_record(family: str, task: str, n: str, instruction: str | None, **extra) -> dict:
    record = {"id": f"{family}_{task}_{n}", "dataset_source": family, "task": task, "input": f"input/{n}.png",
              "output": f"output/{n}.png", "instruction_type": "original", "input_description": "a photo"}
    if instruction is not None:
        record["instruction"] = instruction
    record.update(extra)
    return record


def test_gpt_image_edit_1_5m(tmp_path):
    root = tmp_path / "gpt-edit"
    _touch(root, "hqedit/edit/input/00060995.png", "hqedit/edit/output/00060995.png")
    _write_json(root / "hqedit/edit/metadata/hqedit_edit.json",
                [_gpt_record("hqedit", "edit", "00060995", "Turn the sky purple.")])
    _write_json(root / "omniedit/removal/metadata/omniedit_removal.json", [
        _gpt_record("omniedit", "removal", "00000001", "Remove the vase."),
        _gpt_record("omniedit", "removal", "00000002", None),
    ])
    _write_json(root / "omniedit/env/metadata/omniedit_env.json",
                [_gpt_record("omniedit", "env", "00000003", "Change the setting to golden hour.")])
    record = _gpt_record("ultraedit", "add", "00000004", "Add a rainbow.")
    del record["task"]  # no task field: the task directory gives the category
    _write_json(root / "ultraedit/add/metadata/ultraedit_add.json", [record])
    _write_json(root / "ultraedit/zoom/metadata/ultraedit_zoom.json",
                [_gpt_record("ultraedit", "zoom", "00000005", "Zoom in on the dog.")])
    table, listing = list_edit_sources(str(root), load_adapter("gpt-image-edit-1.5m"))
    assert _edits(table) == [
        (str(root / "hqedit/edit/input/00060995.png"), str(root / "hqedit/edit/output/00060995.png"),
         "Turn the sky purple.", "other", "edit"),
        (str(root / "omniedit/env/input/00000003.png"), str(root / "omniedit/env/output/00000003.png"),
         "Change the setting to golden hour.", "relight", "env"),
        (str(root / "omniedit/removal/input/00000001.png"), str(root / "omniedit/removal/output/00000001.png"),
         "Remove the vase.", "local_remove", "removal"),
        (str(root / "ultraedit/add/input/00000004.png"), str(root / "ultraedit/add/output/00000004.png"),
         "Add a rainbow.", "local_add", "add"),
        (str(root / "ultraedit/zoom/input/00000005.png"), str(root / "ultraedit/zoom/output/00000005.png"),
         "Zoom in on the dog.", "other", "zoom"),
    ]
    assert table.column("source_key").to_pylist()[0] == "hqedit_edit_00060995"
    assert set(table.column("edit_kind").to_pylist()) == {"pair"}
    _assert_contract(table, "gpt-image-edit-1.5m")
    assert set(table.column("licence").to_pylist()) == {"cc-by-4.0"}
    assert table.column("dataset_captions").to_pylist()[0] == [{"field": "input_description", "text": "a photo"}]
    assert (listing.metadata_files, listing.rows_read, listing.rows_listed) == (5, 6, 5)
    # The record without an instruction has the input's caption, which is never taken for one.
    assert listing.skipped == {"missing_instruction_caption_only": 1}
    assert listing.unknown_categories == {"zoom": 1}


# --------------------------------------------------------------------------------------------
# generic: jsonl / csv / parquet / json with common names, edit_kind from the extension
# --------------------------------------------------------------------------------------------

GENERIC_RECORDS = [
    {"src_video": "video/source/a.mp4", "tgt_video": "video/target/a_1.mp4", "prompt": "Remove the monkey.", "iid": "k1"},
    {"src_video": "image/source/b.jpg", "tgt_video": "image/target/b.jpg", "prompt": "change the setting to golden hour",
     "iid": "k2", "task": "Lighting"},
    {"src_video": "/data/abs/c.png", "tgt_video": "s3://bucket/edits/c_out.png", "prompt": "Make it red.", "iid": "k3",
     "task": "color"},
    {"src_video": "notes/d.txt", "tgt_video": "notes/d2.txt", "prompt": "?", "iid": "k4"},
    {"src_video": "video/source/e.mp4", "tgt_video": "", "prompt": "Add a hat.", "iid": "k5"},
]


def _write_generic(path: Path, fmt: str) -> None:
    columns = ["src_video", "tgt_video", "prompt", "iid", "task"]
    if fmt == "jsonl":
        _write_jsonl(path, GENERIC_RECORDS)
    elif fmt == "json":
        _write_json(path, GENERIC_RECORDS)
    elif fmt == "csv":
        _write_csv(path, columns, [[r.get(c, "") for c in columns] for r in GENERIC_RECORDS])
    else:
        pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in GENERIC_RECORDS]), path)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "json"])
def test_generic_formats_give_the_same_rows(tmp_path, fmt):
    path = tmp_path / f"edits.{fmt}"
    _write_generic(path, fmt)
    for root in (tmp_path, path):  # the directory holding the manifest, or the manifest itself
        table, listing = list_edit_sources(str(root), load_adapter("generic"))
        assert _edits(table) == [
            ("/data/abs/c.png", "s3://bucket/edits/c_out.png", "Make it red.", "color_texture", "color"),
            (str(tmp_path / "image/source/b.jpg"), str(tmp_path / "image/target/b.jpg"),
             "change the setting to golden hour", "relight", "Lighting"),
            (str(tmp_path / "video/source/a.mp4"), str(tmp_path / "video/target/a_1.mp4"),
             "Remove the monkey.", "other", None),
        ]
        assert table.column("edit_kind").to_pylist() == ["pair", "pair", "triplet"]
        assert table.column("source_key").to_pylist() == ["k3", "k2", "k1"]
        _assert_contract(table, "generic")
        assert listing.skipped == {"missing_target": 1, "unknown_media_type": 1}
        assert listing.uncategorized == 1 and listing.unknown_categories == {}


# --------------------------------------------------------------------------------------------
# a new dataset is a YAML file, not code
# --------------------------------------------------------------------------------------------


NEW_ADAPTER = """\
# A made-up layout: one JSON object per split holding {"edits": [...]}, media dirs renamed on upload,
# the category encoded in the edited file's directory.
dataset: toy-edits
licence: CC-BY-4.0
edit_kind: pair
metadata: splits/*.json
json_records_key: edits
path_base: "{metadata_dir}/../media"
path_rewrites:
  - {from: "old_images/", to: "images/"}
columns:
  source: [before, src]
  target: after
  instruction: [text]
  id: uid
category_from_path:
  subject: target
  pattern: '^edited/(?P<category>[a-z_]+)/'
categories:
  Style: color_texture
  recolour: color_texture
"""


def test_new_yaml_adapter_works_without_code(tmp_path):
    root = tmp_path / "toy"
    _write_json(root / "splits/train.json", {"edits": [
        {"uid": 7, "before": "old_images/1.jpg", "after": "edited/style/1.jpg", "text": ["Recolor the car blue", "alt"]},
        {"uid": 8, "src": "images/2.jpg", "after": "edited/recolour/2.jpg", "text": "Make the shirt green"},
        {"uid": 9, "before": "images/3.jpg", "after": "edited/teleport/3.jpg", "text": "Move the cat to Mars"},
    ]})
    adapter_path = tmp_path / "toy-edits.yaml"
    adapter_path.write_text(NEW_ADAPTER)
    table, listing = list_edit_sources(str(root), load_adapter(str(adapter_path)))
    m = root / "media"
    assert _edits(table) == [
        (str(m / "images/1.jpg"), str(m / "edited/style/1.jpg"), "Recolor the car blue", "color_texture", "style"),
        (str(m / "images/2.jpg"), str(m / "edited/recolour/2.jpg"), "Make the shirt green", "color_texture", "recolour"),
        (str(m / "images/3.jpg"), str(m / "edited/teleport/3.jpg"), "Move the cat to Mars", "other", "teleport"),
    ]
    assert table.column("source_key").to_pylist() == ["7", "8", "9"]
    _assert_contract(table, "toy-edits")
    assert set(table.column("licence").to_pylist()) == {"cc-by-4.0"}  # as the card writes it, normalised to an id
    assert listing.unknown_categories == {"teleport": 1}


def test_json_id_to_record_map_uses_the_key_as_source_key(tmp_path):
    _write_json(tmp_path / "edits.json", {
        "0001": {"source": "a.png", "target": "a_out.png", "instruction": "Remove the sign.", "category": "remove"},
        "0002": {"source": "b.png", "target": "b_out.png", "instruction": "Add a bird.", "id": "own-id"},
    })
    table, _ = list_edit_sources(str(tmp_path), load_adapter("generic"))
    assert table.column("source_key").to_pylist() == ["0001", "own-id"]
    assert table.column("category").to_pylist() == ["local_remove", "other"]


# --------------------------------------------------------------------------------------------
# errors name the fault
# --------------------------------------------------------------------------------------------


def test_spec_errors_are_early_and_clear(tmp_path):
    with pytest.raises(EditSourceError, match=r"unknown adapter 'nope'.*ditto-1m"):
        load_adapter("nope")
    base = {"dataset": "x", "licence": "unknown", "edit_kind": "pair", "metadata": ["*.jsonl"],
            "columns": {"source": ["s"], "target": ["t"], "instruction": ["i"]}}
    with pytest.raises(ValueError, match="outside the taxonomy"):
        AdapterSpec.model_validate({**base, "categories": {"add": "addition"}})
    with pytest.raises(ValueError, match="named group"):
        AdapterSpec.model_validate({**base, "category_from_path": {"pattern": "([a-z]+)/"}})
    with pytest.raises(ValueError, match="extra"):
        AdapterSpec.model_validate({**base, "colums": {}})
    with pytest.raises(ValueError, match="path_base"):
        AdapterSpec.model_validate({**base, "path_base": "{dataset_root}/x"})
    with pytest.raises(ValueError, match=r"licence\n  Field required"):  # every adapter states one, `unknown` included
        AdapterSpec.model_validate({k: v for k, v in base.items() if k != "licence"})
    with pytest.raises(ValueError, match="licence"):
        AdapterSpec.model_validate({**base, "licence": "CC BY 4.0"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: x\nedit_kind: sometimes\n")
    with pytest.raises(EditSourceError, match=r"bad.yaml"):
        load_adapter(str(bad))


def test_listing_errors_name_the_file(tmp_path):
    with pytest.raises(EditSourceError, match="does not exist"):
        list_edit_sources(str(tmp_path / "missing"), load_adapter("reco"))
    with pytest.raises(EditSourceError, match="no metadata"):
        list_edit_sources(str(tmp_path), load_adapter("reco"))
    (tmp_path / "add").mkdir()
    (tmp_path / "add/add_data_configs.json").write_text("[{not json")
    with pytest.raises(EditSourceError, match=r"add_data_configs.json"):
        list_edit_sources(str(tmp_path), load_adapter("reco"))


def test_uri_roots_list_through_fsspec(tmp_path):
    """Remote roots (s3://…) go through fsspec; the in-memory filesystem stands in for S3 here."""
    import fsspec

    fs = fsspec.filesystem("memory")
    base = f"/{tmp_path.name}/gpt-edit"
    record = _gpt_record("omniedit", "removal", "00000001", "Remove the vase.")
    fs.pipe(f"{base}/omniedit/removal/metadata/omniedit_removal.json", json.dumps([record]).encode())
    try:
        root = f"memory://{base.lstrip('/')}"
        table, listing = list_edit_sources(root, load_adapter("gpt-image-edit-1.5m"))
    finally:
        fs.rm(f"/{tmp_path.name}", recursive=True)
    assert _edits(table) == [(f"{root}/omniedit/removal/input/00000001.png", f"{root}/omniedit/removal/output/00000001.png",
                              "Remove the vase.", "local_remove", "removal")]
    assert listing.metadata_files == 1


# --------------------------------------------------------------------------------------------
# captions are kept, never taken for the instruction
# --------------------------------------------------------------------------------------------


def test_a_caption_is_kept_but_never_the_instruction(tmp_path):
    _write_jsonl(tmp_path / "edits.jsonl", [
        {"source": "a.png", "target": "a_out.png", "caption": "A cat on a sofa.", "target_caption": "A dog on a sofa."},
        {"source": "b.png", "target": "b_out.png", "instruction": "Add a bird.", "caption": " A bare branch. "},
        {"source": "c.png", "target": "c_out.png"},
    ])
    table, listing = list_edit_sources(str(tmp_path), load_adapter("generic"))
    # The row with only captions has no instruction: it is skipped with a reason that says why.
    assert listing.skipped == {"missing_instruction": 1, "missing_instruction_caption_only": 1}
    (row,) = table.to_pylist()
    assert row["instruction"] == "Add a bird."
    assert row["dataset_captions"] == [{"field": "caption", "text": "A bare branch."}]
    assert row["licence"] == "unknown"
