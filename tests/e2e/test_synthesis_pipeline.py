"""`pipeline=synthesis` end to end through Ray, from a plan to shards: 3 environments x 2 conditions
x 2 tasks, a scripted loopback LLM/VLM (plausibility, prompts, the judge), tiny random
text-to-image and image-edit pipelines (`models=tiny`).

The script makes one scene implausible (the library's) and judges every relighting pair below 6,
so each stage's row count is known: 3 scenes -> 2 plausible -> 4 (scene, task) prompts -> 4
rendered pairs -> 2 kept by the judge -> dedup -> shards, which webdataset and HF `datasets` read
with both prompts and the task type in each sample's json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.core import layout, storage
from curation.core.config import compose
from curation.core.runner import run

from tests.fixtures.vlm_servers import ok_from_prompt, openai_server

PLAN = """environments: [a small fishing harbour, a reading room in an old library, a vegetable garden]
conditions: [light morning fog, warm light from a low sun]
conditions_per_scene: 2
scenes_per_environment: 1
tasks: {color_texture_change: 1, relighting: 1}
seed: 3
"""


def answer(prompt: str) -> dict:
    if '"physics"' in prompt:  # the plausibility judge
        low = "reading room" in prompt
        return {"reasoning": "Fog indoors." if low else "Fine.", "physics": 1 if low else 5, "commonsense": 2 if low else 5,
                "depictable": 5}
    if '"source_prompt"' in prompt:  # the prompt writer, per (scene, task)
        task = "relighting" if "The edit task: relighting" in prompt else "recolour"
        scene = next(env for env in ("harbour", "library", "garden") if env in prompt)
        return {"source_prompt": f"A photo of a {scene} in the morning.",
                "edit_prompt": f"The same {scene}, after the {task} edit, every detail described.",
                "instruction": f"Apply the {task} edit to the {scene}."}
    if '"faithfulness"' in prompt:  # the judge (ImVideoEdit's three criteria)
        poor = "relighting edit" in prompt
        return {"reasoning": "Scripted.", "faithfulness": 4 if poor else 8, "visual_quality": 8, "preservation": 9}
    raise AssertionError(f"unexpected prompt: {prompt[:200]}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_plan_becomes_judged_pairs_in_shards(tmp_path, ray_local):
    spec = tmp_path / "plan.yaml"
    spec.write_text(PLAN)
    run_dir = tmp_path / "run"
    with openai_server(default=ok_from_prompt(answer)) as server:
        run(compose(["pipeline=synthesis", f"input={spec}", f"output={run_dir}", "models=tiny", "progress=false",
                     "vlm=openai", f"vlm.base_url={server.url}", "vlm.model=test-model", "vlm.api_key_env=null",
                     "vlm.usd_per_mtok_input=1", "vlm.usd_per_mtok_output=1", f"vlm.cache_dir={tmp_path / 'cache'}"]))
    dirs = {layout.stage_name(d): run_dir / d for d in layout.stage_dirs(str(run_dir))}
    tables = {name: storage.read_table(str(d)) for name, d in dirs.items() if name != "shard"}

    scenes = tables["plan_scenes"].to_pylist()
    assert len(scenes) == 3 and all(len(s["conditions"]) == 2 and sorted(s["tasks"]) == ["color_texture_change", "relighting"]
                                    for s in scenes)
    judged = {r["environment"]: r for r in tables["judge_plausibility"].to_pylist()}
    library = judged["a reading room in an old library"]
    assert library["status"] == "dropped" and library["reason"].startswith("implausible: ")
    assert dict(library["scores"])["plausibility_physics"] == 1
    prompts = tables["write_prompts"].to_pylist()
    assert len(prompts) == 4 and {p["kind"] for p in prompts} == {"prompt"}
    assert sorted(p["task_type"] for p in prompts) == ["color_texture_change"] * 2 + ["relighting"] * 2
    pairs = [p for p in tables["render"].to_pylist() if p["status"] == "ok"]
    assert len(pairs) == 4 and all(Path(p["source_uri"]).is_file() and Path(p["target_uri"]).is_file() for p in pairs)
    scored = tables["edit_score"].to_pylist()
    kept = [r for r in scored if r["status"] == "ok"]
    assert sorted(r["task_type"] for r in kept) == ["color_texture_change"] * 2
    assert all(r["reason"].startswith("edit_score_below_threshold: 4.00") for r in scored if r["status"] != "ok")
    # Lineage: each kept pair goes back through its prompt row to its scene.
    prompt_ids = {p["sample_id"]: p for p in prompts}
    for pair in kept:
        (prompt_id,) = pair["parent_ids"]
        assert prompt_ids[prompt_id]["parent_ids"][0] in {s["sample_id"] for s in scenes}

    deduped = [r["sample_id"] for r in tables["dedup"].to_pylist() if r["status"] == "ok"]
    assert deduped  # whatever the perceptual hash merges among the tiny renders, something reaches the shards
    shards = sorted(str(p) for p in (run_dir / "shards").rglob("*.tar"))
    import webdataset as wds

    samples = list(wds.WebDataset(shards, shardshuffle=False))
    assert len(samples) == len(deduped)
    for sample in samples:
        meta = json.loads(sample["json"])
        assert meta["task_type"] == "color_texture_change" and meta["category"] == "color_texture"
        assert meta["source_prompt"].startswith("A photo of a ") and "after the recolour edit" in meta["edit_prompt"]
        assert meta["instruction"].startswith("Apply the recolour edit")
        assert {"src.jpg", "tgt.jpg"} <= set(sample)
    from datasets import load_dataset

    hf = load_dataset("webdataset", data_files={"train": shards}, split="train")
    assert len(hf) == len(deduped) and all(row["json"]["task_type"] == "color_texture_change" for row in hf)

    # `curate browse`: a kept pair's page shows both prompts and the judge's criteria, and serves both images.
    from starlette.testclient import TestClient

    from curation.audit.app import build_app

    client = TestClient(build_app(str(run_dir), None))
    page = client.get(f"/sample/{kept[0]['sample_id']}").text
    assert all(text in page for text in ("source_prompt", "edit_prompt", "faithfulness", kept[0]["edit_prompt"]))
    images = [src for src in page.split('src="')[1:]]
    urls = [src.split('"', 1)[0] for src in images if "-src.jpg" in src or "-tgt.jpg" in src]
    assert len(urls) == 2 and all(client.get(u).headers["content-type"] == "image/jpeg" for u in urls)
