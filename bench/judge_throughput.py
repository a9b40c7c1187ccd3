"""Judged samples per second of `edit_score` through the Ray actor pool against a loopback
OpenAI-compatible server with a fixed latency (bench/latency_server.py, its own process), at
several `vlm.max_in_flight` values, for both judges (issue #4).

Input: an ingest-style manifest of `pair` rows (written directly as Parquet fragments, no ingest
run) whose source and target are small distinct JPEG files, so no two requests are alike; the
response cache is off anyway (`vlm.cache=false`). The server answers every request with one fixed
JSON answer that validates as the judge's schema and scores 8/10, so every sample ends `ok`.

Baseline: the ideal rate `max_in_flight / latency / requests per sample` (every slot always busy,
zero overhead); `judge=vlm` asks 1 request per image pair (edit_judge), `judge=editscore` asks 2
(semantic consistency and perceptual quality). Rates, all printed as ratios of that ideal:
  steady  - samples / (server's first request arrival -> last response), seen by the server: the
            pool's sustained rate, with batching, scheduling and Ray Data overhead included;
  stage   - samples / wall time of the whole stage run through `curation.core.runner.run`, which also
            pays for starting the actor and reading/writing the manifests;
  direct  - the same requests (same prompts, same JPEG bytes), rendered beforehand, through the
            backend alone (`make_vlm(...).generate_many`, no Ray, no stage): what the HTTP client
            itself sustains on this machine, to separate stage and pool overhead from client cost.
The goal is steady >= 90% of ideal at 64 in flight.

A second table says where the time goes, in CPU milliseconds per sample (process CPU time, so
other processes on the machine do not count): the stage's own work (decode both images and
re-encode them as JPEG, render the prompt(s), build the output rows), measured by calling the
stage on the same batches with an instant fake backend, and the client's work (the backend's CPU
in the direct run at the largest in-flight value). One actor does both in one process under one
GIL, so `1 / (stage + client)` samples/s is roughly the most one actor can sustain.

Absolute times on a small shared machine are noise: compare ratios measured in the same run, and
read nothing into a single number. Nothing here asserts on timing.

    .venv/bin/python bench/judge_throughput.py [--judge vlm editscore] [--in-flight 1 8 64]
        [--latency 0.2] [--seconds 6] [--waves 8] [--batch-size N] [--calls-per-worker N]
        [--workers 1] [--repeat 1] [--image-size 1024x683]

`--repeat N` runs each setting N times (each stage run followed by its direct baseline, so both see
the same load on a shared machine) and prints medians, with the range of steady/ideal.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from latency_server import latency_server, photo_frames  # noqa: E402

from curation.core import storage  # noqa: E402
from curation.core.config import build_stage, compose  # noqa: E402
from curation.core.runner import run  # noqa: E402
from curation.core.schema import arrow_schema  # noqa: E402
from curation.media.jpeg import encode_jpeg  # noqa: E402
from curation.sources.edit_datasets import EditSourceRow  # noqa: E402
from curation.sources.licences import UNKNOWN_LICENCE  # noqa: E402
from curation.stages.ingest import IngestColumns  # noqa: E402

# One fixed answer per judge; both score 8/10 overall, above the default threshold (6).
ANSWERS = {
    "vlm": {"reasoning": "fine", "edit_success": 8, "over_editing": 8, "naturalness": 8, "artifacts": 8},  # EditJudgement
    "editscore": {"reasoning": "fine", "score": [20, 20]},  # valid as both EditScoreSC and EditScorePQ
}
REQUESTS_PER_SAMPLE = {"vlm": 1, "editscore": 2}


def judge_templates(judge: str) -> list:
    """The prompts `edit_score` renders for `judge` (EditScore's come from the editscore package)."""
    from curation.prompts.editscore import editscore_prompts
    from curation.prompts.templates import load_template

    return list(editscore_prompts()) if judge == "editscore" else [load_template("edit_judge")]


# --------------------------------------------------------------------------------------------
# Input: an ingest-style manifest of image pairs
# --------------------------------------------------------------------------------------------


def write_pairs(directory: Path, count: int, size: tuple[int, int], per_fragment: int = 256) -> str:
    """`count` pair rows as ingest would write them, over distinct photo-like JPEG files
    (`latency_server.photo_frames`: what a real frame weighs, where noise weighs four times more)."""
    width, height = size
    media = directory / "media"
    media.mkdir(parents=True)
    images = iter(photo_frames(2 * count, size))
    schema = arrow_schema(EditSourceRow, IngestColumns)
    rows = []
    for i in range(count):
        uris = []
        for side in ("src", "tgt"):
            path = media / f"{i:06d}-{side}.jpg"
            path.write_bytes(next(images))
            uris.append(str(path))
        rows.append(dict(
            sample_id=f"e{i:06d}", parent_ids=[f"s{i:06d}"], kind="pair", edit_kind="pair", source_uri=uris[0],
            target_uri=uris[1], instruction=f"make object {i} red", category="color_texture", dataset="bench",
            num_frames=1, target_num_frames=1, width=width, height=height, target_width=width, target_height=height,
            licence=UNKNOWN_LICENCE, status="ok", stage="ingest", stage_version="1",
        ))
    for start in range(0, count, per_fragment):
        table = pa.Table.from_pylist(rows[start:start + per_fragment], schema=schema)
        storage.write_table_atomic(table, str(directory / f"part-{start // per_fragment:05d}.parquet"))
    return str(directory)


def sample_count(judge: str, in_flight: int, latency: float, seconds: float) -> int:
    ideal = in_flight / latency / REQUESTS_PER_SAMPLE[judge]
    return max(4 * in_flight, int(ideal * seconds))


def overrides(judge: str, inputs: str, output: str, url: str, per_worker: int, batch: int, calls: int | None,
              workers: int) -> list[str]:
    items = [
        "stage=edit_score", f"input={inputs}", f"output={output}", "progress=false",
        "vlm=openai", f"vlm.base_url={url}", "vlm.model=bench", "vlm.pricing=self_hosted",
        f"vlm.max_in_flight={per_worker}", "vlm.cache=false", "vlm.max_retries=0", "vlm.timeout_s=30",
        f"edit_score.judge={judge}", f"edit_score.resources.batch_size={batch}",
        f"edit_score.resources.concurrency=[{workers},{workers}]", "edit_score.resources.num_cpus=0.25",
    ]
    if calls is not None:
        items.append(f"edit_score.resources.calls_per_worker={calls}")
    return items


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def measure(judge: str, in_flight: int, args: argparse.Namespace, inputs: str, count: int, output: str) -> dict:
    """The stage through the runner on local Ray; `in_flight` requests in flight over all workers."""
    workers = min(args.workers, in_flight)
    rps = REQUESTS_PER_SAMPLE[judge]
    per_worker = max(1, in_flight // workers)
    # Samples per batch: `waves` full rounds of a worker's max_in_flight requests, so its slots
    # drain (and would sit idle, but for calls_per_worker > 1) once per `waves` latencies.
    batch = args.batch_size or max(16, args.waves * per_worker // rps)
    with latency_server(ANSWERS[judge], args.latency) as server:
        cfg = compose(overrides(judge, inputs, output, server.url, per_worker, batch, args.calls_per_worker, workers))
        t0 = time.perf_counter()
        result = run(cfg)[0]
        wall = time.perf_counter() - t0
        times = server.stop()
    assert result.counts["ok"] == count, result.counts
    assert len(times) == rps * count, f"{len(times)} requests for {count} samples x {rps}"
    span = max(f for _, f in times) - min(a for a, _ in times)
    events = sorted([(a, 1) for a, _ in times] + [(f, -1) for _, f in times])
    peak = max(np.cumsum([d for _, d in events]))
    # Requests in flight at the server on average over the span, as a share of max_in_flight:
    # below 1, the client side (stage, pool, HTTP client) did not keep every slot filled.
    busy = sum(f - a for a, f in times) / span / in_flight
    return {"batch": batch, "calls": cfg.edit_score.resources.calls_per_worker, "steady": count / span,
            "stage": count / wall, "peak": int(peak), "busy": busy, "cfg": cfg}


def measure_all(judge: str, in_flight: int, args: argparse.Namespace, work: Path) -> dict:
    """`args.repeat` rounds of (stage through Ray, then the direct baseline) on one input; the
    median of each rate. Each baseline runs right after its stage run: close enough in time to
    see the same load on a shared machine, never at the same time, so the two do not compete."""
    count = sample_count(judge, in_flight, args.latency, args.seconds)
    inputs = write_pairs(work / f"in-{judge}-{in_flight}", count, args.image_size)
    rounds = []
    for i in range(args.repeat):
        m = measure(judge, in_flight, args, inputs, count, str(work / f"run-{judge}-{in_flight}-{i}"))
        m["direct"], m["client_ms"] = direct(judge, in_flight, args, inputs, m["cfg"])
        rounds.append(m)
    ideal = in_flight / args.latency / REQUESTS_PER_SAMPLE[judge]
    median = {k: float(np.median([m[k] for m in rounds])) for k in ("steady", "stage", "direct", "client_ms", "busy")}
    return {**rounds[0], **median, "judge": judge, "in_flight": in_flight, "samples": count, "inputs": inputs,
            "ideal": ideal, "peak": max(m["peak"] for m in rounds),
            "steady_range": (min(m["steady"] for m in rounds) / ideal, max(m["steady"] for m in rounds) / ideal)}


def stage_requests(judge: str, inputs: str, cfg) -> list:
    """The requests the stage sends for every input row, byte for byte: the same decode and
    JPEG re-encode (`jpeg_quality`), the same rendered prompts and cache salt."""
    from curation.backends.vlm import VLMRequest
    from curation.media.edit_media import read_edit_frames
    from curation.prompts.judges import EditScorePQ

    quality, max_pixels = cfg.edit_score.jpeg_quality, cfg.edit_score.max_pixels
    templates = judge_templates(judge)
    requests = []
    for row in storage.read_table(inputs).to_pylist():
        ((src, tgt),) = read_edit_frames(row["source_uri"], row["target_uri"], [0], is_video=False, max_pixels=max_pixels)
        source, target = encode_jpeg(src, quality), encode_jpeg(tgt, quality)
        for t in templates:
            text = t.render(instruction=row["instruction"], category=row["category"], is_video=False, feedback=None)
            images = [target] if t.schema is EditScorePQ else [source, target]
            requests.append(VLMRequest(prompt=text, images=images, schema=t.schema, cache_salt=t.hash,
                                       json_in_text=judge == "editscore"))
    return requests


def direct(judge: str, in_flight: int, args: argparse.Namespace, inputs: str, cfg) -> tuple[float, float]:
    """The same requests through the backend alone in this process (no Ray, no stage, prompts and
    images prepared beforehand): samples/s (the client's own ceiling on this machine) and the
    client's CPU milliseconds per sample (all threads of this process; the server is another)."""
    from curation.backends.vlm import VLMConfig, make_vlm

    requests = stage_requests(judge, inputs, cfg)
    samples = len(requests) / REQUESTS_PER_SAMPLE[judge]
    with latency_server(ANSWERS[judge], args.latency) as server:
        vlm = VLMConfig(backend="openai", model="bench", base_url=server.url, max_in_flight=in_flight,
                        cache=False, max_retries=0, timeout_s=30)
        with make_vlm(vlm) as backend:
            backend.open()  # create the client before the CPU clock starts
            cpu = time.process_time()
            replies = backend.generate_many(requests)
            cpu = time.process_time() - cpu
        times = server.stop()
    assert all(getattr(r, "parsed", None) is not None for r in replies)
    return samples / (max(f for _, f in times) - min(a for a, _ in times)), 1000 * cpu / samples


class InstantBackend:
    """Stands in for the VLM backend: answers every request at once with the parsed fixed answer."""

    def __init__(self, judge: str):
        from curation.backends.vlm import VLMReply, VLMUsage, parse_reply

        raw = json.dumps(ANSWERS[judge])
        parsed = {t.schema: parse_reply(t.schema, raw)[0] for t in judge_templates(judge)}
        self._reply = lambda req: VLMReply(parsed[req.schema], raw, VLMUsage(requests=1))

    def generate_many(self, requests: list) -> list:
        return [self._reply(r) for r in requests]


def stage_cpu(judge: str, inputs: str, cfg, batch: int) -> dict[str, float]:
    """CPU milliseconds per sample of the stage's own work, no network (process CPU time, so other
    processes on the machine do not count): the whole `EditScore.__call__` on the run's batches
    with an instant backend, and the two parts of it that grow with the images and the prompt."""
    from curation.media.edit_media import read_edit_frames

    stage = build_stage("edit_score", cfg)
    stage._backend, stage._ready = InstantBackend(judge), True  # skip setup(): no client, no server
    table = storage.read_table(inputs)
    rows = table.to_pylist()
    templates = judge_templates(judge)

    def whole() -> None:
        for start in range(0, table.num_rows, batch):
            out = stage(table.slice(start, batch))
            assert out.column("status").to_pylist().count("ok") == out.num_rows

    def media() -> None:  # what EditScore._frames does for an image pair
        for row in rows:
            ((src, tgt),) = read_edit_frames(row["source_uri"], row["target_uri"], [0], is_video=False,
                                             max_pixels=stage.max_pixels)
            encode_jpeg(src, stage.jpeg_quality), encode_jpeg(tgt, stage.jpeg_quality)

    def prompts() -> None:
        for row in rows:
            for t in templates:
                t.render(instruction=row["instruction"], category=row["category"], is_video=False, feedback=None)

    def ms(work) -> float:
        cpu = time.process_time()
        work()
        return 1000 * (time.process_time() - cpu) / len(rows)

    stage(table.slice(0, 16))  # warm up: first-call imports and caches
    return {"stage_ms": ms(whole), "media_ms": ms(media), "prompt_ms": ms(prompts)}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", nargs="+", choices=sorted(ANSWERS), default=["vlm", "editscore"], help="edit_score.judge values")
    parser.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 8, 64], help="vlm.max_in_flight values (over all workers)")
    parser.add_argument("--seconds", type=float, default=6.0, help="target length of each measurement at the ideal rate")
    parser.add_argument("--waves", type=int, default=8,
                        help="edit_score.resources.batch_size = waves * max_in_flight / requests per sample (at least 16)")
    parser.add_argument("--batch-size", type=int, default=None, help="fixed edit_score.resources.batch_size (overrides --waves)")
    parser.add_argument("--calls-per-worker", type=int, default=None,
                        help="edit_score.resources.calls_per_worker (default: the stage's config)")
    parser.add_argument("--workers", type=int, default=1, help="edit_score actors; each gets in_flight/workers requests in flight")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per setting; rates are the median over rounds")
    parser.add_argument("--image-size", type=size, default=(1024, 683), metavar="WxH",
                        help="source and target image size (1024 px: annotate's payload, two images a request)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from curation.core.ray_env import init_ray

    init_ray(compose([]).cluster)
    results = []
    with tempfile.TemporaryDirectory(prefix="judge-bench-") as tmp:
        for judge in args.judge:
            for n in args.in_flight:
                results.append(measure_all(judge, n, args, Path(tmp)))
        costs = {}
        for judge in args.judge:
            last = max((r for r in results if r["judge"] == judge), key=lambda r: r["in_flight"])
            costs[judge] = {**stage_cpu(judge, last["inputs"], last["cfg"], last["batch"]),
                            "client_ms": last["client_ms"], "in_flight": last["in_flight"]}

    report(results, costs, args)


def report(results: list[dict], costs: dict[str, dict], args: argparse.Namespace) -> None:
    w, h = args.image_size
    print(f"\nedit_score through a {args.workers}-actor Ray pool, OpenAI-compatible loopback server at "
          f"{args.latency * 1000:.0f} ms/request, {w}x{h} JPEG pairs, median of {args.repeat} round(s)")
    print(f"{'judge':>9} {'req':>3} {'in_flight':>9} {'n':>5} {'batch':>5} {'calls':>5} {'ideal/s':>8} {'steady/s':>9} "
          f"{'steady/ideal':>12} {'stage/s':>8} {'stage/ideal':>11} {'direct/s':>9} {'direct/ideal':>12} "
          f"{'steady/direct':>13} {'busy':>5} {'peak':>5} {'steady/ideal range':>18}")
    for r in results:
        print(f"{r['judge']:>9} {REQUESTS_PER_SAMPLE[r['judge']]:>3} {r['in_flight']:>9} {r['samples']:>5} {r['batch']:>5} "
              f"{r['calls']:>5} {r['ideal']:>8.1f} {r['steady']:>9.1f} {r['steady'] / r['ideal']:>12.3f} "
              f"{r['stage']:>8.1f} {r['stage'] / r['ideal']:>11.3f} {r['direct']:>9.1f} {r['direct'] / r['ideal']:>12.3f} "
              f"{r['steady'] / r['direct']:>13.3f} {r['busy']:>5.2f} {r['peak']:>5} {'%.3f-%.3f' % r['steady_range']:>18}")
    print("rates are judged samples/s; req = requests per sample; ideal = max_in_flight / latency / req;")
    print("direct = the same requests through the backend alone, no Ray, no stage (the client's ceiling here);")
    print("steady/direct = the share of the bare client's rate the stage keeps through the pool;")
    print("busy = mean requests in flight at the server / max_in_flight (steady run); peak = most in flight at once")
    print("goal: steady/ideal >= 0.90")

    print("\nwhere the time goes: CPU ms per sample (this process's CPU time; no network)")
    print(f"{'judge':>9} {'media':>7} {'prompts':>8} {'stage':>7} {'client':>7} {'ceiling/s':>10} {'ceiling/ideal':>13}")
    for judge, c in costs.items():
        ceiling = 1000 / (c["stage_ms"] + c["client_ms"])
        ideal = c["in_flight"] / args.latency / REQUESTS_PER_SAMPLE[judge]
        print(f"{judge:>9} {c['media_ms']:>7.2f} {c['prompt_ms']:>8.2f} {c['stage_ms']:>7.2f} {c['client_ms']:>7.2f} "
              f"{ceiling:>10.1f} {ceiling / ideal:>13.3f}")
    print("media = decode source + target and re-encode both as JPEG; prompts = render the judge's template(s);")
    print("stage = the whole EditScore call per sample with an instant backend (includes media and prompts);")
    print(f"client = the backend's CPU per sample in the direct run at {max(args.in_flight)} in flight;")
    print("ceiling = 1 / (stage + client): about the most one actor sustains (one process, one GIL); ideal at that in-flight")


if __name__ == "__main__":
    main()
