"""End to end through local Ray: `pipeline=pairs` with the `caption` stage after dedup (RVEDiT
recaptions every target), on real photos and clips with real pixel edits. A scripted
OpenAI-compatible server judges the edits, captions the image targets and answers the video
captions with text that is not JSON, so the triplets end uncaptioned. Every shard sample's `json`
has a `caption` field: the text for pairs, null for the triplets, and HF `datasets` reads both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.core import storage

from tests.e2e.test_edit_pipelines import by_name, run_pipeline, shard_urls
from tests.fixtures.edits import build_edit_dataset, judge_answer
from tests.fixtures.vlm_servers import ok_from_prompt, openai_server

pytestmark = pytest.mark.slow
IMAGE_CAPTION = "A photograph with a clearly edited subject in the middle."


def test_pairs_pipeline_with_caption_puts_the_target_caption_in_every_shard_json(tmp_path, ray_local):
    import datasets
    import webdataset as wds

    root = tmp_path / "edits"
    edits = build_edit_dataset(root)
    judge = judge_answer(edits)

    def answer(prompt: str) -> dict | str:
        if "one still image" in prompt:
            return {"caption": IMAGE_CAPTION}
        if "frames of one short video clip" in prompt:
            return "A car drives by."  # not the JSON asked for: the triplet keeps no caption
        return judge(prompt)

    out = tmp_path / "pairs"
    with openai_server(default=ok_from_prompt(answer)) as server:
        results = run_pipeline("pairs", root, out, server, "stages=[ingest,edit_score,embed,dedup,caption,shard]")
        bodies = [r.body for r in server.requests]
        asked = [(server.prompt_of(b), b) for b in bodies]
    assert [r.name for r in results] == ["ingest", "edit_score", "embed", "dedup", "caption", "shard"]

    # Each kept pair's caption request carries its target file's bytes (small upright images go as
    # they are), never its source's; each triplet's carries frames of its target video.
    kept_pairs = [e for e in edits if e.kind == "pair" and e.name != "unchanged"]  # "unchanged" scores 3.16 < 6

    def file_bytes(path: str) -> bytes:
        return (root / path).read_bytes() if not Path(path).is_absolute() else Path(path).read_bytes()

    image_requests = [b for p, b in asked if "one still image" in p]
    sent = sorted(server.image_of(b) for b in image_requests)
    assert sent == sorted(file_bytes(e.files["target"]) for e in kept_pairs)
    assert not {file_bytes(e.files["source"]) for e in kept_pairs} & set(sent)
    video_requests = [b for p, b in asked if "frames of one short video clip" in p]
    assert len(video_requests) == 2 * 2  # two triplets, each asked again after the non-JSON answer

    captioned = by_name(storage.read_table(str(out / "05-caption")).to_pylist(), edits)
    assert {n: (r["status"], r["caption"]) for n, r in captioned.items()} == {
        **{e.name: ("ok", IMAGE_CAPTION) for e in kept_pairs}, "car_red": ("ok", None), "car_bright": ("ok", None)}
    assert captioned["car_red"]["caption_error"].startswith("invalid_json")

    groups = shard_urls(out)
    samples = [s for urls in groups for s in wds.WebDataset(urls, shardshuffle=False)]
    metas = {json.loads(s["json"])["instruction"]: json.loads(s["json"]) for s in samples}
    expected = {e.instruction: (IMAGE_CAPTION if e.kind == "pair" else None) for e in edits if e.name != "unchanged"}
    assert {i: m["caption"] for i, m in metas.items()} == expected
    assert all("caption" in m for m in metas.values())  # a field of every sample, null when uncaptioned
    assert not any("caption" in key for s in samples for key in s if key != "json")  # never a member of some samples
    read_by_hf = {}
    for urls in groups:  # one member layout per bucket; HF reads the field, null included
        hf = datasets.load_dataset("webdataset", data_files={"train": urls}, split="train", cache_dir=str(tmp_path / "hf"))
        read_by_hf.update({meta["instruction"]: meta["caption"] for meta in hf["json"]})
    assert read_by_hf == expected
