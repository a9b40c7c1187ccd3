"""Pairs per second of `render` through the Ray actor pool against a plain loop over the same
backends, with a loopback image API that takes a fixed time per image (issue #22).

The server is the test suite's loopback OpenAI server (tests/fixtures/vlm_servers.py): a draw
(`/v1/images/generations`) answers with one colour taken from the prompt's hash, an edit
(`/v1/images/edits`) with the inverse of the uploaded image, each after `--latency` seconds. At a
few requests per second its threaded werkzeug server is nowhere near its limit. Caches are off.

A pair is two requests (draw, then edit), and the stage gives each API `--in-flight` slots, so
the ideal rate is `in_flight / latency / 2` pairs/s (every slot busy, zero overhead). Printed as
ratios of it:
  steady - pairs / (the server's first arrival -> last answer): the pool's sustained rate, with
           batching, scheduling and Ray Data overhead included (goal >= 0.9);
  stage  - pairs / wall time of the whole `curation.core.runner.run`, actor start-up and manifest
           I/O included;
  loop   - the same rows through the backends alone in one process (`generate_images` on every
           prompt, then `edit_many` on every source): what the client side sustains without Ray.

Absolute times on a small shared machine are noise; nothing here asserts on timing.

    .venv/bin/python bench/render_throughput.py [--pairs 64] [--in-flight 8] [--latency 2.0] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation.backends.image_edit import ImageEditRequest, make_image_editor  # noqa: E402
from curation.backends.text_to_image import TextToImageRequest, make_image_generator  # noqa: E402
from curation.core import storage  # noqa: E402
from curation.core.config import build_stage, compose  # noqa: E402
from curation.core.runner import run  # noqa: E402
from curation.core.schema import SampleRow, arrow_schema, make_sample_id, merge_schemas, rows_to_table  # noqa: E402

from tests.fixtures.vlm_servers import image_ok, openai_server  # noqa: E402

SIZE = "256x256"


def write_prompts(directory: Path, count: int, per_fragment: int = 32) -> str:
    """`count` prompt rows, distinct prompts and instructions, in Parquet fragments."""
    texts = ("source_prompt", "edit_prompt", "instruction", "task_type", "category")
    schema = merge_schemas(arrow_schema(SampleRow), pa.schema([(c, pa.string()) for c in texts]))
    directory.mkdir(parents=True)
    rows = []
    for i in range(count):
        uri = f"synthesis://bench/{i}"
        rows.append(dict(sample_id=make_sample_id("prompt", uri), parent_ids=[], kind="prompt", source_uri=uri, status="ok",
                         stage="prompts", stage_version="1", source_prompt=f"a harbour at dawn, boat {i}",
                         edit_prompt=f"the harbour at dusk, boat {i}", instruction=f"Make it dusk ({i}).",
                         task_type="time_of_day", category="global_style"))
    for start in range(0, count, per_fragment):
        table = rows_to_table(rows[start:start + per_fragment], schema)
        storage.write_table_atomic(table, str(directory / f"part-{start // per_fragment:05d}.parquet"))
    return str(directory)


def overrides(inputs: str, output: str, url: str, in_flight: int, batch: int) -> list[str]:
    items = ["stages=[render]", f"input={inputs}", f"output={output}", "progress=false", f"render.source.size={SIZE}",
             "render.source.backend=api", "render.edit.backend=api", f"render.resources.batch_size={batch}",
             "render.resources.concurrency=[1,1]", "render.resources.num_cpus=0.25"]
    for block, model in (("render.source.api", "drawer"), ("render.edit.api", "editor")):
        items += [f"{block}.backend=openai", f"{block}.model={model}", f"{block}.base_url={url}", f"{block}.cache=false",
                  f"{block}.max_in_flight={in_flight}", f"{block}.max_retries=0", f"{block}.timeout_s=60"]
    return items


def steady_rate(server, pairs: int) -> tuple[float, int]:
    """Pairs per second between the first arrival and the last answer at the server, and the peak in flight."""
    times = [(r.started, r.finished) for r in server.requests]
    assert len(times) == 2 * pairs and all(f is not None for _, f in times), len(times)
    events = sorted([(a, 1) for a, _ in times] + [(f, -1) for _, f in times])
    peak, now = 0, 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return pairs / (max(f for _, f in times) - min(a for a, _ in times)), peak


def through_pool(args: argparse.Namespace, inputs: str, work: Path) -> dict:
    with openai_server(default=image_ok(latency_s=args.latency)) as server:
        cfg = compose(overrides(inputs, str(work / "run"), server.url, args.in_flight, args.batch_size))
        t0 = time.perf_counter()
        (result,) = run(cfg)
        wall = time.perf_counter() - t0
        steady, peak = steady_rate(server, args.pairs)
    assert result.counts["ok"] == args.pairs, result.counts
    return {"steady": steady, "stage": args.pairs / wall, "peak": peak, "cfg": cfg}


def plain_loop(args: argparse.Namespace, inputs: str, cfg) -> dict:
    """The same requests through the two backends in this process: every draw, then every edit."""
    stage = build_stage("render", cfg)
    rows = storage.read_table(inputs).to_pylist()
    with openai_server(default=image_ok(latency_s=args.latency)) as server:
        here = {"base_url": server.url}  # this server, not the pool run's
        drawer = make_image_generator(stage.source.api.model_copy(update=here))
        editor = make_image_editor(stage.edit.api.model_copy(update=here))
        t0 = time.perf_counter()
        sources = drawer.generate_images([TextToImageRequest(r["source_prompt"], stage.row_seed(r), SIZE) for r in rows])
        failed = [s.reason for s in sources if not hasattr(s, "image")]
        assert not failed, failed[:3]
        edits = editor.edit_many([ImageEditRequest(r["instruction"], s.image) for r, s in zip(rows, sources, strict=True)])
        wall = time.perf_counter() - t0
        drawer.close()
        editor.close()
        steady, peak = steady_rate(server, args.pairs)
    assert all(not isinstance(e, Exception) for e in edits)
    return {"loop": args.pairs / wall, "loop_steady": steady, "loop_peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--latency", type=float, default=2.0, help="seconds per image request")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per stage batch (two waves of 8 per phase)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="render-bench-") as tmp:
        work = Path(tmp)
        inputs = write_prompts(work / "prompts", args.pairs)
        pool = through_pool(args, inputs, work)
        loop = plain_loop(args, inputs, pool["cfg"])
    ideal = args.in_flight / args.latency / 2
    print(f"render: {args.pairs} pairs, {args.in_flight} in flight per API, {args.latency:g} s per image, "
          f"batch {args.batch_size}; ideal {ideal:.2f} pairs/s ({2 * ideal:.2f} images/s)")
    print(f"{'':8}{'pairs/s':>9}{'/ideal':>8}{'peak in flight':>16}")
    print(f"{'steady':8}{pool['steady']:9.2f}{pool['steady'] / ideal:8.2f}{pool['peak']:16d}")
    print(f"{'stage':8}{pool['stage']:9.2f}{pool['stage'] / ideal:8.2f}")
    print(f"{'loop':8}{loop['loop']:9.2f}{loop['loop'] / ideal:8.2f}{loop['loop_peak']:16d}")
    print(f"pool steady / plain loop: {pool['steady'] / loop['loop']:.2f}")


if __name__ == "__main__":
    main()
