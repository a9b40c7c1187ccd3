"""stratify on real edits through local Ray: ingest -> stratify -> edit_score against the scripted
OpenAI-compatible judge. The draw keeps min(per_group, group size) per group before the judge is
asked anything, the judge never hears of a dropped edit, and the same rows are kept whatever order
and fragments the input comes in."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pytest

from curation.core import layout, storage
from curation.core.config import compose
from curation.core.runner import run, run_stage

from tests.fixtures.edits import Edit, build_edit_dataset, judge_answer
from tests.fixtures.vlm_servers import ok_from_prompt, openai_server

PER_GROUP = 2
VARIANTS = 3  # rows per base edit: groups of 3 (6 for `add`, which has two base edits), so some are dropped


@pytest.fixture(scope="module")
def listing(tmp_path_factory) -> tuple[Path, list[Edit]]:
    """The fixture photos as an edit dataset with several edits per native category, and one uncategorised."""
    root = tmp_path_factory.mktemp("strat")
    base = [e for e in build_edit_dataset(root) if e.kind == "pair"]
    edits, records = [], []
    for edit in base:
        for k in range(VARIANTS):
            variant = dataclasses.replace(edit, name=f"{edit.name}{k}", instruction=f"Variant {k}: {edit.instruction}")
            edits.append(variant)
            records.append({"source": edit.files["source"], "target": edit.files["target"],
                            "instruction": variant.instruction, "category": edit.category_raw})
    loose = dataclasses.replace(base[0], name="loose", instruction=f"Uncategorised: {base[0].instruction}")
    edits.append(loose)
    records.append({"source": base[0].files["source"], "target": base[0].files["target"], "instruction": loose.instruction})
    (root / "strat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "reversed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(records)))
    return root, edits


def config(root: Path, listing_name: str, out: Path, stages: str, *extra: str):
    return compose([f"stages={stages}", "ingest.adapter=generic", f"input={root / listing_name}", f"output={out}",
                    f"stratify.per_group={PER_GROUP}", "progress=false", *extra])


def rows_of(stage_dir: Path) -> list[dict]:
    return storage.read_table(str(stage_dir), columns=["sample_id", "instruction", "category_native", "dataset", "status",
                                                       "reason", "stratify_group", "stratify_rank"]).to_pylist()


def kept_ids(stage_dir: Path) -> set[str]:
    return {r["sample_id"] for r in rows_of(stage_dir) if r["status"] == "ok"}


@pytest.mark.slow
def test_stratify_keeps_per_group_before_the_judge_hears_of_any_edit(listing, tmp_path, ray_local):
    root, edits = listing
    out = tmp_path / "run"
    with openai_server(default=ok_from_prompt(judge_answer(edits))) as server:
        run(config(root, "strat.jsonl", out, "[ingest,stratify,edit_score]", "vlm=openai", f"vlm.base_url={server.url}",
                   "vlm.model=judge", "vlm.api_key_env=null", "vlm.max_retries=1", "vlm.cache=false",
                   "edit_score.judge=editscore"))
        requests = list(server.requests)

    drawn = rows_of(out / "02-stratify")
    assert len(drawn) == len(edits)
    by_group: dict[tuple, list[dict]] = defaultdict(list)
    for row in drawn:
        by_group[(row["category_native"], row["dataset"])].append(row)
    assert {category: len(rows) for (category, _), rows in by_group.items()} == {
        "add": 2 * VARIANTS, "replace": VARIANTS, "Background Change": VARIANTS, "style": VARIANTS, None: 1}
    for (category, dataset), rows in by_group.items():
        kept = [r for r in rows if r["status"] == "ok"]
        assert len(kept) == min(PER_GROUP, len(rows)), (category, dataset)
        assert sorted(r["stratify_rank"] for r in kept) == list(range(len(kept)))
        assert {r["stratify_group"] for r in rows} == {f"{category or '<none>'} / {dataset}"}
        for r in rows:
            if r["status"] != "ok":
                assert r["status"] == "dropped" and r["reason"].startswith("stratified_out: rank ")
                assert r["stratify_rank"] >= PER_GROUP

    kept = {r["instruction"] for r in drawn if r["status"] == "ok"}
    dropped = {r["instruction"] for r in drawn if r["status"] != "ok"}
    assert len(kept) == 4 * PER_GROUP + 1 and len(dropped) == len(edits) - len(kept)
    # The judge saw exactly the kept edits: one semantic-consistency question naming each, and one
    # perceptual-quality question each (it names no instruction; the cache is off, so none is saved).
    prompts = [server.prompt_of(r.body) for r in requests]
    asked = Counter(i for p in prompts if "evaluates the editing success" in p for i in kept | dropped if i in p)
    assert asked == Counter(kept)
    assert not [p for p in prompts for i in dropped if i in p]
    assert len(requests) == 2 * len(kept)
    judged = storage.read_table(str(out / "03-edit_score"), columns=["sample_id"]).column("sample_id").to_pylist()
    assert set(judged) == kept_ids(out / "02-stratify")
    record = json.loads((out / "02-stratify" / "_run.json").read_text())
    assert record["stratify"]["groups"]["add / generic"] == {"rows": 2 * VARIANTS, "kept": PER_GROUP}


@pytest.mark.slow
def test_the_same_rows_are_kept_whatever_the_input_order(listing, tmp_path, ray_local):
    root, _ = listing
    first, second = tmp_path / "first", tmp_path / "second"
    run(config(root, "strat.jsonl", first, "[ingest,stratify]"))
    run(config(root, "reversed.jsonl", second, "[ingest,stratify]", "ingest.fragment_size=2"))
    kept = kept_ids(first / "02-stratify")
    assert kept and kept == kept_ids(second / "02-stratify")

    # The ingest manifest reversed row by row and cut into other parts, drawn on its own.
    ingested = storage.read_table(str(first / "01-ingest"))
    shuffled = tmp_path / "shuffled"
    backwards = ingested.take(pa.array(range(ingested.num_rows - 1, -1, -1)))
    for i, start in enumerate(range(0, backwards.num_rows, 5)):
        storage.write_table_atomic(backwards.slice(start, 5), str(shuffled / f"part-{i:05d}.parquet"))
    cfg = config(root, "strat.jsonl", tmp_path / "alone", "[stratify]")
    result = run_stage("stratify", cfg, str(shuffled), layout.stage_dir_for(str(tmp_path / "alone"), "stratify", None))
    assert kept_ids(Path(result.stage_dir)) == kept

    # A rerun finds every part written and draws again from scratch: nothing changes.
    again = run_stage("stratify", cfg, str(shuffled), result.stage_dir)
    assert again.skipped_fragments == result.done_fragments and kept_ids(Path(again.stage_dir)) == kept


@pytest.mark.slow
def test_group_by_the_normalised_category_or_a_missing_column(listing, tmp_path, ray_local):
    root, edits = listing
    run(config(root, "strat.jsonl", tmp_path / "norm", "[ingest,stratify]", "stratify.group_by=[category]"))
    rows = rows_of(tmp_path / "norm" / "02-stratify")
    groups = Counter(r["stratify_group"] for r in rows)
    assert sum(groups.values()) == len(edits) and all(" / " not in g for g in groups)
    kept = Counter(r["stratify_group"] for r in rows if r["status"] == "ok")
    assert kept == {g: min(PER_GROUP, n) for g, n in groups.items()}

    with pytest.raises(ValueError, match=r"stratify.group_by names \['no_such_column'\]"):
        run(config(root, "strat.jsonl", tmp_path / "bad", "[ingest,stratify]", "stratify.group_by=[no_such_column]"))


def test_the_rvedit_preset_draws_ten_thousand_per_group_and_judges_nothing():
    cfg = compose(["pipeline=rvedit"])
    assert list(cfg.stages)[:2] == ["ingest", "stratify"]
    assert "edit_score" not in cfg.stages and "score_reference" not in cfg.stages
    assert cfg.stratify.per_group == 10000 and list(cfg.stratify.group_by) == ["category_native", "dataset"]
