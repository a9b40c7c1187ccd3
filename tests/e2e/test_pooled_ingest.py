"""End to end through local Ray: one ingest run pooling several edit datasets (each in its own
published layout), and datasets whose media are embedded bytes (NHR-Edit's parquet form, Kiwi-Edit's
RefVIE-477K chunks) ingested through the run's media store, as far as the shards.

Media are the repo's bundled photos and clip with real pixel edits; embedding is the model-free
perceptual hash (`models=tiny`), so dedup's verdicts are real, offline.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.core import storage
from curation.core.config import compose
from curation.core.runner import run
from curation.media.edit_media import encode_h264

from tests.fixtures.media import EXAMPLES

pytestmark = pytest.mark.slow


def _rgb(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(EXAMPLES / "skimage" / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _encode(image: np.ndarray, ext: str, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), list(params))
    assert ok
    return buf.tobytes()


def _ball(cat: np.ndarray) -> np.ndarray:
    ball = cat.copy()
    cv2.circle(ball, (100, 150), 40, (220, 30, 30), -1)
    return ball


def _run(out: Path, *overrides: str):
    cfg = compose(["models=tiny", f"output={out}", "progress=false", *overrides])
    return run(cfg)


def _rows(stage_dir: Path) -> list[dict]:
    return storage.read_table(str(stage_dir)).to_pylist()


# --------------------------------------------------------------------------------------------
# Item: several datasets in one run, deduplicated as one pool
# --------------------------------------------------------------------------------------------


def _generic_dataset(root: Path) -> None:
    """generic layout: edits.jsonl beside the images. The ball edit at full size."""
    cat, cup = _rgb("chelsea.png"), _rgb("coffee.png")
    blue = cup.copy()
    blue[100:330, 180:430] = blue[100:330, 180:430, ::-1]
    (root / "images").mkdir(parents=True)
    (root / "images" / "cat.png").write_bytes(_encode(cat, ".png"))
    (root / "images" / "ball.png").write_bytes(_encode(_ball(cat), ".png"))
    (root / "images" / "cup.jpg").write_bytes(_encode(cup, ".jpg"))
    (root / "images" / "cup_blue.jpg").write_bytes(_encode(blue, ".jpg"))
    records = [{"source": "images/cat.png", "target": "images/ball.png", "instruction": "Add a red ball.", "category": "add"},
               {"source": "images/cup.jpg", "target": "images/cup_blue.jpg", "instruction": "Make the cup blue.",
                "category": "replace"}]
    (root / "edits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _nhr_dataset(root: Path) -> None:
    """NHR-Edit's folder layout: train/metadata.jsonl and train/images/NN/. Its first edit's target is
    the generic dataset's ball target at 3/4 size, re-encoded as a JPEG: a near-duplicate across the two."""
    cat, rocket = _rgb("chelsea.png"), _rgb("rocket.jpg")
    small = cv2.resize(_ball(cat), None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)
    images = root / "train" / "images"
    (images / "00").mkdir(parents=True)
    (images / "01").mkdir(parents=True)
    (images / "00" / "image_1_original.jpg").write_bytes(_encode(cv2.resize(cat, small.shape[1::-1]), ".jpg"))
    (images / "00" / "image_1_edited_0.jpg").write_bytes(_encode(small, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 80))
    (images / "01" / "image_2_original.jpg").write_bytes(_encode(rocket, ".jpg"))
    (images / "01" / "image_2_edited_0.jpg").write_bytes(_encode(255 - rocket, ".jpg"))
    records = [{"id": "1_0", "source_image": "images/00/image_1_original.jpg", "edited_image": "images/00/image_1_edited_0.jpg",
                "edit_instruction": "Put a red ball next to the cat.", "category": "Add object"},
               {"id": "2_0", "source_image": "images/01/image_2_original.jpg", "edited_image": "images/01/image_2_edited_0.jpg",
                "edit_instruction": "Invert the colours.", "category": "Change style"}]
    (root / "train" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_two_datasets_pool_into_one_run_and_dedup_drops_the_cross_dataset_near_duplicate(tmp_path, ray_local):
    generic, nhr = tmp_path / "generic", tmp_path / "nhr"
    _generic_dataset(generic)
    _nhr_dataset(nhr)
    out = tmp_path / "run"
    results = _run(out, "stages=[ingest,embed,dedup]",
                   f"ingest.datasets=[{{adapter: generic, input: {generic / 'edits.jsonl'}}}, {{adapter: nhr-edit, input: {nhr}}}]")
    assert [r.name for r in results] == ["ingest", "embed", "dedup"]

    ingested = {r["instruction"]: r for r in _rows(out / "01-ingest")}
    assert {i: (r["dataset"], r["kind"], r["status"]) for i, r in ingested.items()} == {
        "Add a red ball.": ("generic", "pair", "ok"), "Make the cup blue.": ("generic", "pair", "ok"),
        "Put a red ball next to the cat.": ("nhr-edit", "pair", "ok"), "Invert the colours.": ("nhr-edit", "pair", "ok")}
    assert len({r["sample_id"] for r in ingested.values()}) == 4
    listings = json.loads((out / "01-ingest" / "_run.json").read_text())["listings"]
    assert [(x["dataset"], x["rows_listed"]) for x in listings] == [("generic", 2), ("nhr-edit", 2)]

    deduped = {r["instruction"]: r for r in _rows(out / "03-dedup")}
    original, copy = deduped["Add a red ball."], deduped["Put a red ball next to the cat."]
    assert {i for i, r in deduped.items() if r["status"] != "ok"} == {"Put a red ball next to the cat."}
    assert copy["status"] == "dropped" and copy["duplicate_of"] == original["sample_id"]
    assert copy["reason"].startswith(f"near_duplicate: its group keeps {original['sample_id']} (")  # not leakage
    assert copy["content_hash"] != original["content_hash"]  # a lossy, resized copy: found by similarity


def test_pooled_ingest_refuses_a_stray_input(tmp_path, ray_local):
    _generic_dataset(tmp_path / "g")
    with pytest.raises(ValueError, match=r"ingest\.datasets names each dataset's input; leave input= unset"):
        _run(tmp_path / "run", "stages=[ingest]", f"input={tmp_path / 'g'}",
             f"ingest.datasets=[{{adapter: generic, input: {tmp_path / 'g' / 'edits.jsonl'}}}]")


# --------------------------------------------------------------------------------------------
# Embedded media: Kiwi-Edit RefVIE-477K chunks -> quads -> shards
# --------------------------------------------------------------------------------------------

CLIP_FRAMES = 12
MAX_FRAMES = 8  # below the clips' frame count, so the shard cap is exercised


def _clip_bytes(tint: bool) -> bytes:
    cap = cv2.VideoCapture(str(EXAMPLES / "intel-sample-videos" / "car-detection.mp4"))
    frames = []
    while len(frames) < CLIP_FRAMES:
        ok, frame = cap.read()
        assert ok
        frame = cv2.cvtColor(cv2.resize(frame, (256, 144), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        if tint:
            frame[40:100, 60:160, 0] = 230
        frames.append(frame)
    cap.release()
    return encode_h264(frames, 12.5)


def _refvie_chunk(root: Path) -> np.ndarray:
    """refvie_477k/chunk_000.parquet as DATASETS.md describes it (iid, prompt, src_video, tgt_video,
    ref_image_bytes), media embedded: the source video as an HF `{"bytes", "path"}` struct, the target
    as plain binary. Row 2's reference is not an image at all; row 3's is a truncated JPEG."""
    source, target = _clip_bytes(tint=False), _clip_bytes(tint=True)
    reference = _rgb("coffee.png")[100:330, 180:430]
    ref_jpeg = _encode(reference, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 95)
    video = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    chunk = pa.table({
        "iid": ["refvie_0", "refvie_1", "refvie_2"],
        "prompt": ["Paint the parked car red like the reference.", "Paint the car red.", "Make the car red."],
        "src_video": pa.array([{"bytes": source, "path": "src.mp4"}] * 3, video),
        "tgt_video": pa.array([target] * 3, pa.binary()),
        "ref_image_bytes": pa.array([ref_jpeg, b"not an image", ref_jpeg[:200]], pa.binary()),
    })
    (root / "refvie_477k").mkdir(parents=True)
    pq.write_table(chunk, root / "refvie_477k" / "chunk_000.parquet")
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(ref_jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _frames(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_refvie_chunk_with_embedded_media_ingests_to_quads_that_reach_the_shards(tmp_path, ray_local):
    import webdataset as wds

    root = tmp_path / "kiwi"
    reference = _refvie_chunk(root)
    out = tmp_path / "run"
    results = _run(out, "pipeline=refvie", f"input={root}", f"shard.max_frames={MAX_FRAMES}")
    assert [r.name for r in results] == ["ingest", "embed", "dedup", "shard"]

    listing = json.loads((out / "01-ingest" / "_run.json").read_text())["listing"]
    assert listing["rows_read"] == 3 and listing["skipped"] == {"reference_unknown_embedded_format": 1}
    ingested = {r["source_key"]: r for r in _rows(out / "01-ingest")}
    assert set(ingested) == {"refvie_0", "refvie_2"}
    quad, bad = ingested["refvie_0"], ingested["refvie_2"]
    assert (quad["kind"], quad["edit_kind"], quad["dataset"], quad["status"]) == ("quad", "triplet", "kiwi-refvie-477k", "ok")
    assert bad["status"] == "error" and bad["reason"].endswith("(reference)")  # one bad row; the run went on
    # The embedded media were written once, content-addressed, under the ingest stage's media dir.
    media = out / "01-ingest" / "media"
    assert quad["source_uri"].startswith(str(media)) and quad["target_uri"].startswith(str(media))
    assert quad["source_uri"] == bad["source_uri"]  # the same bytes in two rows: one file
    assert quad["num_frames"] == quad["target_num_frames"] == CLIP_FRAMES
    assert (quad["reference_width"], quad["reference_height"]) == (reference.shape[1], reference.shape[0])
    assert quad["reference"].startswith("01-ingest/media/") and quad["reference"].endswith(".png")  # run-relative
    assert quad["reference_backend"] == "dataset:kiwi-refvie-477k" and quad["reference_is_cutout"] is None

    tars = sorted(str(t) for t in (out / "shards").rglob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False))
    assert len(samples) == 1
    (sample,) = samples
    assert json.loads(sample["json"])["kind"] == "quad"
    assert sample["txt"].decode() == "Paint the parked car red like the reference."
    assert sample["ref.png"][:8] == b"\x89PNG\r\n\x1a\n"
    ref = cv2.cvtColor(cv2.imdecode(np.frombuffer(sample["ref.png"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(ref, reference)  # the dataset's reference, losslessly as PNG
    assert _frames(sample["src.mp4"]) == _frames(sample["tgt.mp4"]) == MAX_FRAMES
