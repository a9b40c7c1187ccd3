"""Annotations per second of `annotate` through the Ray actor pool against a loopback
OpenAI-compatible server with a fixed latency (bench/latency_server.py, its own process), at several `vlm.max_in_flight` values.

Baseline: the ideal rate `max_in_flight / latency` (every slot always busy, zero overhead).
Two rates are printed per setting:
  steady  - annotations / (last response - first request), seen by the server: the pool's
            sustained rate, with batching, scheduling and Ray Data overhead included;
  stage   - annotations / wall time of the whole stage run, which also pays for starting the
            actor (importing torch/transformers/openai) and writing the manifest.
  direct  - the same requests through the backend alone, no Ray: what the HTTP client itself
            sustains on this machine (its CPU ceiling), to separate pool overhead from client cost.
The goal (issue #3) is steady >= 90% of ideal.

    .venv/bin/python bench/vlm_throughput.py [--latency 0.2] [--in-flight 1 8 64] [--seconds 6]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from latency_server import latency_server  # noqa: E402

from curation.core import storage  # noqa: E402
from curation.core.config import compose  # noqa: E402
from curation.core.runner import run  # noqa: E402
from curation.core.schema import SampleRow, arrow_schema  # noqa: E402
from curation.media.jpeg import encode_jpeg  # noqa: E402
from curation.stages.sample_frames import SampleFramesColumns  # noqa: E402

ANSWER = {
    "frame1_caption": {"scene": "a street", "obj1": "a white car"},
    "frame2_caption": {"scene": "a street", "obj1": "a white car"},
    "character_change": {},
    "object_change": {"obj1": "drives forward"},
    "global_change": "",
    "camera_change": "none",
    "other_change": "",
    "summary_change": "Move the white car forward.",
}


def write_sessions(directory: Path, count: int, per_fragment: int = 256) -> str:
    """`count` two-frame sessions (one annotation each) of small distinct JPEGs."""
    rng = np.random.default_rng(0)
    schema = arrow_schema(SampleRow, SampleFramesColumns)
    rows = []
    for i in range(count):
        frames = [encode_jpeg(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), 80) for _ in range(2)]
        rows.append(dict(sample_id=f"s{i:06d}", parent_ids=[], kind="session", source_uri=f"v{i}.mp4", status="ok",
                         stage="sample_frames", stage_version="1", frames=frames, frame_width=64, frame_height=48))
    for start in range(0, count, per_fragment):
        table = pa.Table.from_pylist(rows[start:start + per_fragment], schema=schema)
        storage.write_table_atomic(table, str(directory / f"part-{start // per_fragment:05d}.parquet"))
    return str(directory)


def measure(in_flight: int, latency: float, seconds: float, work: Path, waves: int, workers: int) -> dict[str, float]:
    """`in_flight` requests in flight in total, split over `workers` actors."""
    count = max(4 * in_flight, int(in_flight / latency * seconds))
    inputs = write_sessions(work / f"in-{in_flight}", count)
    # Sessions per batch: `waves` full rounds of max_in_flight requests, so the slots drain (and
    # sit idle while the worker moves to its next batch) once per `waves` latencies.
    per_worker = max(1, in_flight // workers)
    batch = max(16, waves * per_worker)
    with latency_server(ANSWER, latency) as server:
        cfg = compose([
            "stage=annotate", f"input={inputs}", f"output={work / f'run-{in_flight}'}", "progress=false",
            "vlm=openai", f"vlm.base_url={server.url}", "vlm.model=bench", "vlm.api_key_env=null",
            f"vlm.max_in_flight={per_worker}", "vlm.cache=false", "vlm.max_retries=0", "vlm.timeout_s=30",
            f"annotate.resources.batch_size={batch}", f"annotate.resources.concurrency=[{workers},{workers}]",
            "annotate.resources.num_cpus=0.25",
        ])
        t0 = time.perf_counter()
        result = run(cfg)[0]
        wall = time.perf_counter() - t0
        times = server.stop()
    assert result.counts["ok"] == count, result.counts
    assert len(times) == count, f"{len(times)} requests for {count} annotations"
    span = max(f for _, f in times) - min(a for a, _ in times)
    events = sorted([(a, 1) for a, _ in times] + [(f, -1) for _, f in times])
    peak = max(np.cumsum([d for _, d in events]))
    ideal = in_flight / latency
    return {"in_flight": in_flight, "annotations": count, "ideal": ideal, "steady": count / span,
            "stage": count / wall, "peak_concurrency": int(peak)}


def direct(in_flight: int, latency: float, seconds: float) -> float:
    """The same requests through the backend alone in this process (no Ray, no manifests):
    the client's own ceiling on this machine."""
    from curation.backends.vlm import VLMConfig, VLMRequest, make_vlm
    from curation.prompts.templates import load_template
    from curation.prompts.transition import TransitionAnnotation

    count = max(4 * in_flight, int(in_flight / latency * seconds))
    rng = np.random.default_rng(1)
    frames = [encode_jpeg(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), 80) for _ in range(2)]
    prompt = load_template("transition_annotation").render(caption=None, feedback=None)
    with latency_server(ANSWER, latency) as server:
        cfg = VLMConfig(backend="openai", model="bench", base_url=server.url, max_in_flight=in_flight,
                        cache=False, max_retries=0, timeout_s=30)
        with make_vlm(cfg) as backend:
            requests = [VLMRequest(prompt, frames, TransitionAnnotation) for _ in range(count)]
            replies = backend.generate_many(requests)
        times = server.stop()
    assert all(getattr(r, "parsed", None) is not None for r in replies)
    return count / (max(f for _, f in times) - min(a for a, _ in times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 8, 64], help="vlm.max_in_flight values")
    parser.add_argument("--seconds", type=float, default=6.0, help="target length of each measurement at the ideal rate")
    parser.add_argument("--waves", type=int, default=8, help="annotate.resources.batch_size = waves * max_in_flight")
    parser.add_argument("--workers", type=int, default=1, help="annotate actors; each gets in_flight/workers requests in flight")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from curation.core.ray_env import init_ray

    init_ray(compose([]).cluster)
    with tempfile.TemporaryDirectory(prefix="vlm-bench-") as tmp:
        results = [measure(n, args.latency, args.seconds, Path(tmp), args.waves, min(args.workers, n)) for n in args.in_flight]
    for r in results:
        r["direct"] = direct(r["in_flight"], args.latency, args.seconds)
    print(f"\nannotate through a {args.workers}-actor Ray pool, OpenAI-compatible loopback server at {args.latency * 1000:.0f} ms/request")
    print(f"{'in_flight':>9} {'n':>6} {'ideal/s':>8} {'steady/s':>9} {'steady/ideal':>12} {'stage/s':>8} {'stage/ideal':>11} "
          f"{'direct/s':>9} {'direct/ideal':>12} {'peak':>5}")
    for r in results:
        print(f"{r['in_flight']:>9} {r['annotations']:>6} {r['ideal']:>8.1f} {r['steady']:>9.1f} {r['steady'] / r['ideal']:>12.3f} "
              f"{r['stage']:>8.1f} {r['stage'] / r['ideal']:>11.3f} {r['direct']:>9.1f} {r['direct'] / r['ideal']:>12.3f} "
              f"{r['peak_concurrency']:>5}")
    print("baselines: ideal = max_in_flight / latency; direct = the backend alone, no Ray (the client's CPU ceiling here)")
    print("goal: steady/ideal >= 0.90")


if __name__ == "__main__":
    main()
