"""`pipeline=erasure` end to end through Ray, to shards: a real clip in, remove triplets and add
quads out, with a scripted loopback VLM (subject, removal check, both instructions, reference
score), tiny random detector/segmenter/editor models and the offline `temporal` remover.

The clip (tests/fixtures/erasure_media.py) is a real photo's static background with the head of
the cat from another real photo moving across it, so the object's true mask is known.

One gate is bypassed, and why: with random weights, `mask_video`'s SAM2 cannot segment the cat
(its masks are empty, and the clip would be dropped as `mask_vanished`: its own tests cover that
stage through the tiny model's API). So the run goes in two legs: the stages up to and including
`choose_subject`, then a `mask_video` manifest holding the cat's known masks (as the stage writes
them: one PNG per clip frame, the key frame, the box), then every later stage of the pipeline.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from curation.core import layout, media_store, storage
from curation.core.config import compose
from curation.core.runner import run
from curation.media.edit_media import encode_h264
from curation.regions.roe import encode_mask_png

from tests.fixtures.erasure_media import make_clip
from tests.fixtures.vlm_servers import ok_from_prompt, openai_server

FPS, FRAMES = 12.0, 36  # 3 s: above scene_split's 2 s minimum clip, choose_subject's and erase's 16 frames
REMOVE = "Remove the tabby cat's head sliding across the table."
ADD = "Add a tabby cat's head with green eyes, sliding from left to right across the table."
PIPELINE = compose(["pipeline=erasure"]).stages


def answer(prompt: str) -> dict:
    """What a VLM would answer each of the pipeline's prompts about this clip."""
    if '"subjects"' in prompt:
        return {"subjects": [{"name": "cat", "phrase": "the head of a tabby cat"}]}
    if "subject_removed" in prompt:
        return {"reasoning": "No trace of the cat; the table texture is continuous.", "subject_removed": 5, "artifact_free": 5}
    if 'Write the "remove" instruction' in prompt:
        return {"instruction": REMOVE}
    if 'Write the "add" instruction' in prompt:
        return {"instruction": ADD}
    return {"score": 9}  # reference_score.v2


def _vlm(server) -> list[str]:
    return ["vlm=openai", f"vlm.base_url={server.url}", "vlm.model=test-model", "vlm.api_key_env=null",
            "vlm.usd_per_mtok_input=1", "vlm.usd_per_mtok_output=1", "vlm.max_retries=0"]


def _frames(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_raw_clip_to_remove_triplets_and_add_quads(tmp_path, ray_local):
    clip = make_clip(n=FRAMES, scale=2)  # 640x480: the cat's head is 220x160, above reference's 128 px minimum side
    media = tmp_path / "media"
    media.mkdir()
    (media / "cat_on_table.mp4").write_bytes(encode_h264(clip.frames, FPS))
    run_dir = tmp_path / "run"
    base = [f"output={run_dir}", "models=tiny", "progress=false", f"vlm.cache_dir={tmp_path / 'cache'}"]
    leg_one = PIPELINE[:PIPELINE.index("mask_video")]
    with openai_server(default=ok_from_prompt(answer)) as server:
        run(compose(["pipeline=erasure", f"stages=[{','.join(leg_one)}]", f"input={media}", *base, *_vlm(server)]))
        chosen = storage.read_table(str(run_dir / "04-choose_subject"))
        assert chosen.column("status").to_pylist() == ["ok"], chosen.column("reason").to_pylist()
        row = chosen.to_pylist()[0]
        assert (row["subject"], row["subject_phrase"]) == ("cat", "the head of a tabby cat")

        # mask_video's output with the object's known masks (the bypassed gate: see the module docstring).
        start, end = row["start_frame"], row["end_frame"]
        masks = clip.masks[start:end]
        key = start + len(masks) // 2
        ys, xs = np.nonzero(masks[key - start])
        fixture = tmp_path / "masked"
        (fixture / "masks").mkdir(parents=True)
        refs = []  # a manifest's media column holds references: absolute paths of the PNG files here
        for i, mask in enumerate(masks):
            (fixture / "masks" / f"{i:03d}.png").write_bytes(encode_mask_png(mask.astype(np.uint8) * 255))
            refs.append(str(fixture / "masks" / f"{i:03d}.png"))
        row.update(stage="mask_video", object_masks=refs, mask_key_frame=key,
                   mask_box=[float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)])
        table = pa.Table.from_pylist([row], schema=_with_masks(chosen.schema))
        storage.write_table_atomic(table, str(fixture / "part-00000.parquet"))

        leg_two = PIPELINE[PIPELINE.index("erase"):]
        run(compose(["pipeline=erasure", f"stages=[{','.join(leg_two)}]", f"input={fixture}", *base, *_vlm(server),
                     "reference.diffusers.model=tiny:instruct-pix2pix", "reference.diffusers.steps=2"]))
        prompts = [server.prompt_of(r.body) for r in server.requests]
    assert sum('Write the "remove" instruction' in p for p in prompts) == 1
    assert sum('Write the "add" instruction' in p for p in prompts) == 1

    dirs = {layout.stage_name(d): run_dir / d for d in layout.stage_dirs(str(run_dir))}
    erased = storage.read_table(str(dirs["erase"])).to_pylist()[0]
    assert erased["status"] == "ok" and erased["removal_backend"] == "temporal", erased["reason"]
    original = _frames(media_store.load(erased["clip_video"], str(run_dir)))
    cleaned = _frames(media_store.load(erased["erased_video"], str(run_dir)))
    assert len(original) == len(cleaned) == end - start
    # The cat is gone: inside its mask the erased frames are close to the true background, far from the cat.
    inside = np.concatenate([(f.astype(float) - b)[m] for f, b, m in zip(cleaned, clip.backgrounds[start:end], masks)])
    before = np.concatenate([(f.astype(float) - b)[m] for f, b, m in zip(original, clip.backgrounds[start:end], masks)])
    assert np.abs(inside).mean() < np.abs(before).mean() / 3, (np.abs(inside).mean(), np.abs(before).mean())

    triplets = storage.read_table(str(dirs["erasure_instructions"]))
    assert triplets.num_rows == 2 and set(triplets.column("status").to_pylist()) == {"ok"}
    by_direction = {r["edit_direction"]: r for r in triplets.to_pylist()}
    remove, add = by_direction["remove"], by_direction["add"]
    assert (remove["category"], remove["instruction"]) == ("local_remove", REMOVE)
    assert (add["category"], add["instruction"]) == ("local_add", ADD)
    assert remove["twin_id"] == add["sample_id"] and add["twin_id"] == remove["sample_id"]
    assert (remove["source_uri"], remove["target_uri"]) == (add["target_uri"], add["source_uri"])  # the roles swapped
    assert remove["parent_ids"] == add["parent_ids"] == [row["sample_id"]]
    _assert_lineage_reaches_the_video(run_dir, dirs, row["sample_id"], str(media / "cat_on_table.mp4"))

    shards = sorted((run_dir / "shards").rglob("*.tar"))
    members: dict[str, dict[str, bytes]] = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key_, ext = member.name.split(".", 1)
                members.setdefault(key_, {})[ext] = tar.extractfile(member).read()
    assert len(members) == 2, {k: sorted(v) for k, v in members.items()}
    kinds = {}
    for sample in members.values():
        meta = json.loads(sample["json"])
        kinds[meta["category"]] = sample
        assert "object_masks" not in meta and "clip_video" not in meta  # media are never json text
        assert len(_frames(sample["src.mp4"])) == len(_frames(sample["tgt.mp4"])) >= 16
    assert sorted(kinds) == ["local_add", "local_remove"]
    assert "ref.png" in kinds["local_add"] and "ref.png" not in kinds["local_remove"]
    assert json.loads(kinds["local_add"]["json"])["reference_is_cutout"] is False  # an editor drew it


def _with_masks(schema: pa.Schema) -> pa.Schema:
    """choose_subject's schema plus mask_video's columns, media marked as the stage marks them."""
    from curation.core.config import build_stage

    stage = build_stage("mask_video", compose(["models=tiny"]))
    return stage.output_schema(schema).remove_metadata()


def _assert_lineage_reaches_the_video(run_dir: Path, dirs: dict[str, Path], clip_id: str, video: str) -> None:
    clips = storage.read_table(str(dirs["scene_split"]), filter=pc.field("sample_id") == clip_id).to_pylist()
    assert len(clips) == 1 and clips[0]["source_uri"] == video
    (video_id,) = clips[0]["parent_ids"]
    videos = storage.read_table(str(dirs["ingest"]), filter=pc.field("sample_id") == video_id).to_pylist()
    assert videos and videos[0]["source_uri"] == video
