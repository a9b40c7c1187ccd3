"""End to end through local Ray: `pipeline=references` (Kiwi-Edit RefVIE: judge -> ground -> reference
-> reference score -> quads) and `pipeline=pairs` (judge -> shards) on real photos and clips with
real pixel edits, the judges answered by a scripted OpenAI-compatible server, tiny random SAM2."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import cv2
import pytest

from curation.core import storage
from curation.core.config import compose
from curation.core.runner import run

from tests.fixtures.audit_run import browse_images
from tests.fixtures.edits import Edit, build_edit_dataset, judge_answer
from tests.fixtures.vlm_servers import ok_from_prompt, openai_server

pytestmark = pytest.mark.slow
MAX_FRAMES = 24  # below the fixture clips' 30 frames, so the cap is exercised


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("edits")
    return root, build_edit_dataset(root)


def run_pipeline(pipeline: str, root: Path, out: Path, server, *extra: str, listing: str = "edits.jsonl"):
    cfg = compose([f"pipeline={pipeline}", "models=tiny", f"input={root / listing}", f"output={out}",
                   "vlm=openai", f"vlm.base_url={server.url}", "vlm.model=judge", "vlm.api_key_env=null", "vlm.max_retries=1",
                   "vlm.backoff_initial_s=0.01", f"vlm.cache_dir={out.parent / (out.name + '-cache')}",
                   f"shard.max_frames={MAX_FRAMES}", "progress=false", *extra])
    return run(cfg)


def by_name(table_rows: list[dict], edits) -> dict[str, dict]:
    names = {e.instruction: e.name for e in edits}
    return {names[r["instruction"]]: r for r in table_rows}


def shard_urls(run_dir: Path) -> list[list[str]]:
    """Tar URLs grouped by bucket directory (one member layout per bucket)."""
    tars = sorted((run_dir / "shards").rglob("*.tar"))
    groups: dict[Path, list[str]] = {}
    for t in tars:
        groups.setdefault(t.parent, []).append(str(t))
    return list(groups.values())


def frame_count(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_references_pipeline_turns_edits_into_filtered_quads(dataset, tmp_path, ray_local):
    import datasets
    import webdataset as wds

    root, edits = dataset
    out = tmp_path / "refs"
    with openai_server(default=ok_from_prompt(judge_answer(edits))) as server:
        results = run_pipeline("references", root, out, server)
    assert [r.name for r in results] == ["ingest", "edit_score", "ground_edit", "reference", "score_reference", "embed",
                                         "dedup", "shard"]

    ingest = by_name(storage.read_table(str(out / "01-ingest")).to_pylist(), edits)
    assert {n: r["kind"] for n, r in ingest.items()} == {e.name: e.kind for e in edits}
    assert ingest["car_red"]["num_frames"] == ingest["car_red"]["target_num_frames"] == 30
    assert ingest["cup"]["category"] == "local_change" and ingest["backdrop"]["category"] == "background_change"
    assert ingest["car_bright"]["category"] == "other" and ingest["car_bright"]["category_native"] == "mystery tweak"
    listing = json.loads((out / "01-ingest" / "_run.json").read_text())["listing"]
    assert listing["unknown_categories"] == {"mystery tweak": 1}

    judged = by_name(storage.read_table(str(out / "02-edit_score")).to_pylist(), edits)
    assert judged["sepia"]["status"] == "dropped" and judged["sepia"]["reason"] == "category_excluded: global_style"
    assert judged["car_bright"]["reason"] == "category_excluded: other"
    assert judged["unchanged"]["status"] == "dropped"
    assert judged["unchanged"]["reason"].startswith("edit_score_below_threshold: 3.16 (keep > 8)")
    for name in ("ball", "cup", "backdrop", "car_red"):
        row, edit = judged[name], next(e for e in edits if e.name == name)
        assert row["status"] == "ok", row["reason"]
        assert dict(row["scores"])["edit_score"] == pytest.approx(edit.edit_score)
        # A triplet: 30 frames at 12.5 fps judged at 2 fps, at 0, 0.5, 1, 1.5 and 2 s.
        assert len(row["edit_judgements"]) == (5 if edit.kind == "triplet" else 1)
    # Out-of-category edits are never sent to the judge: SC questions for ball, cup, backdrop and
    # unchanged (one image pair each) and car_red's 5 frame pairs.
    asked = [r for r in server.requests if "evaluates the editing success" in server.prompt_of(r.body)]
    assert len(asked) == 4 + 5

    grounded = by_name(storage.read_table(str(out / "03-ground_edit")).to_pylist(), edits)
    assert set(grounded) == {"ball", "cup", "backdrop", "car_red"}
    for name, row in grounded.items():
        edit = next(e for e in edits if e.name == name)
        assert row["status"] == "ok", row["reason"]
        assert row["edit_mode"] == ("background" if name == "backdrop" else "object")
        edited = [b for b in row["edit_boxes"] if b["image"] == "edited"]
        assert len(edited) == 1 and edited[0]["box"] == pytest.approx(list(edit.box), abs=1.0)  # 0-1000 -> pixels
        assert row["mask_tgt"] and row["tgt_frame"] and row["src_frame"]
    assert grounded["backdrop"]["mask_src"]  # foreground found in both frames

    refs = storage.read_table(str(out / "04-reference")).to_pylist()
    assert {r["kind"] for r in refs} == {"quad"} and all(r["reference"] for r in refs)
    scored = by_name(storage.read_table(str(out / "05-score_reference")).to_pylist(), edits)
    assert scored["backdrop"]["status"] == "dropped"
    assert scored["backdrop"]["reason"] == "reference_score_below_threshold: 6 (keep >= 7)"
    kept = {n for n, r in scored.items() if r["status"] == "ok"}
    assert kept == {"ball", "cup", "car_red"}
    assert dict(scored["ball"]["scores"]) == pytest.approx({**dict(judged["ball"]["scores"]), "reference_score": 8.0})

    # Shards: quads with src/tgt as jpg (images) or mp4 (videos), ref.png and both masks.
    groups = shard_urls(out)
    samples = [s for urls in groups for s in wds.WebDataset(urls, shardshuffle=False)]
    assert len(samples) == 3
    for sample in samples:
        meta = json.loads(sample["json"])
        assert meta["kind"] == "quad" and sample["txt"].decode() == meta["instruction"]
        # Provenance: the reference was made by the composite backend; the generic manifest states no licence.
        assert (meta["generator"], meta["licence"], meta["dataset"]) == ("composite", "unknown", "generic")
        assert {"ref.png", "mask_src.png", "mask_tgt.png"} <= set(sample)
        if meta["edit_kind"] == "triplet":
            assert frame_count(sample["src.mp4"]) == frame_count(sample["tgt.mp4"]) == MAX_FRAMES
        else:
            assert sample["src.jpg"][:3] == sample["tgt.jpg"][:3] == b"\xff\xd8\xff"
    card = json.loads((out / "shards" / "_dataset.json").read_text())
    assert card["counts_by_generator"] == {"composite": 3} and card["counts_by_licence"] == {"unknown": 3}
    for urls in groups:
        hf = datasets.load_dataset("webdataset", data_files={"train": urls}, split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
        assert hf.num_rows == sum(1 for _ in wds.WebDataset(urls, shardshuffle=False))

    # The funnel: what entered each stage and what it kept, by reason.
    funnel = json.loads((out / "_summary.json").read_text())["_funnel"]
    assert [(f["stage"], f["entered"], f["kept"]) for f in funnel] == [
        ("ingest", 7, 7), ("edit_score", 7, 4), ("ground_edit", 4, 4), ("reference", 4, 4),
        ("score_reference", 4, 3), ("embed", 3, 3), ("dedup", 3, 3), ("shard", 3, 3)]
    assert funnel[1]["dropped"] == {"category_excluded": 2, "edit_score_below_threshold": 1}

    # `curate browse` shows a quad's first frames with its mask and boxes drawn, and its reference.
    images = browse_images(out, scored["backdrop"]["sample_id"])
    assert set(images) == {"edit-src", "edit-tgt", "ref"}
    assert all(data[:2] == b"\xff\xd8" for data in images.values())


def test_pairs_pipeline_keeps_edits_scoring_six_or_more(dataset, tmp_path, ray_local):
    import webdataset as wds

    root, edits = dataset
    # One more edit whose target is the ball edit's target re-saved as a JPEG: a near-duplicate the
    # judge scores lower (8.9 against 9.5), so dedup keeps the original and names it.
    again = Edit("ball_again", "pair", "Add a red ball beside the cat.", "add", (20.0, 20.0), size=edits[0].size,
                 files={"source": "images/ball_src.png", "target": "images/ball_again_tgt.jpg"})
    ball = cv2.imread(str(root / "images" / "ball_tgt.png"))
    cv2.imwrite(str(root / "images" / "ball_again_tgt.jpg"), ball, [cv2.IMWRITE_JPEG_QUALITY, 80])
    with_dup = [*edits, again]
    lines = (root / "edits.jsonl").read_text() + json.dumps(
        {"source": again.files["source"], "target": again.files["target"], "instruction": again.instruction, "category": "add"}) + "\n"
    (root / "edits_with_duplicate.jsonl").write_text(lines)
    out = tmp_path / "pairs"
    with openai_server(default=ok_from_prompt(judge_answer(with_dup))) as server:
        results = run_pipeline("pairs", root, out, server, listing="edits_with_duplicate.jsonl")
    assert [r.name for r in results] == ["ingest", "edit_score", "embed", "dedup", "shard"]
    judged = by_name(storage.read_table(str(out / "02-edit_score")).to_pylist(), with_dup)
    assert {n for n, r in judged.items() if r["status"] == "ok"} == {"ball", "ball_again", "cup", "backdrop", "sepia",
                                                                     "car_red", "car_bright"}
    assert judged["unchanged"]["reason"].startswith("edit_score_below_threshold: 3.16 (keep >= 6)")
    deduped = by_name(storage.read_table(str(out / "04-dedup")).to_pylist(), with_dup)
    assert {n for n, r in deduped.items() if r["status"] == "dropped"} == {"ball_again"}
    assert deduped["ball_again"]["duplicate_of"] == deduped["ball"]["sample_id"]
    assert deduped["ball_again"]["reason"].startswith(f"near_duplicate: its group keeps {deduped['ball']['sample_id']} (cosine ")
    assert deduped["ball_again"]["content_hash"] != deduped["ball"]["content_hash"]  # lossy copy: found by similarity
    assert deduped["ball_again"]["duplicate_similarity"] >= 0.88
    # `curate browse` shows an unground pair's and triplet's images from their media URIs.
    for name in ("unchanged", "car_red"):
        images = browse_images(out, judged[name]["sample_id"])
        assert set(images) == {"uri-src", "uri-tgt"} and all(d[:2] == b"\xff\xd8" for d in images.values())
    samples = [s for urls in shard_urls(out) for s in wds.WebDataset(urls, shardshuffle=False)]
    kinds = sorted(json.loads(s["json"])["kind"] for s in samples)
    assert kinds == ["pair"] * 4 + ["triplet"] * 2
    for sample in samples:
        assert "ref.png" not in sample and "mask_tgt.png" not in sample
        if "src.mp4" in sample:
            assert frame_count(sample["src.mp4"]) == frame_count(sample["tgt.mp4"]) == MAX_FRAMES
