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
Each request carries annotate's payload: two frames of `--image-size` (default 1024x683, about
160 KB of JPEG each, a bundled photo with a distinct noise patch per frame), sent as sampled.
The goal (issue #17 item 6) is steady >= 0.9 of ideal, or, where the client's own CPU is the
ceiling on this machine, steady >= 0.95 of direct. `--repeat N` runs each setting N times, each
stage run followed at once by its direct baseline (same load on a shared machine), and prints
medians with the range of steady/direct.

    .venv/bin/python bench/vlm_throughput.py [--latency 0.2] [--in-flight 1 8 64] [--seconds 6]
        [--image-size 1024x683] [--repeat 1] [--workers 1] [--rpm 240] [--rpm-requests 20]

It ends with the run-wide rate limit: 2 Ray workers at `--rpm` each, with one rate ledger for both
and with a limiter each, and the request rate the server saw over the run in each case.
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

from latency_server import latency_server, photo_frames  # noqa: E402

from curation.core import storage  # noqa: E402
from curation.core.config import compose  # noqa: E402
from curation.core.runner import run  # noqa: E402
from curation.core.schema import SampleRow, arrow_schema  # noqa: E402
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


def write_sessions(directory: Path, count: int, size: tuple[int, int], per_fragment: int = 256) -> str:
    """`count` two-frame sessions (one annotation each) of distinct photo-like JPEGs of `size`.
    Where manifests hold media references (`frames` is a string column), the frames are files
    and the manifest names them by absolute path, as a run of another directory would."""
    schema = arrow_schema(SampleRow, SampleFramesColumns)
    by_reference = pa.types.is_string(schema.field("frames").type.value_type)
    frames: list = photo_frames(2 * count, size)
    if by_reference:
        media = directory / "media"
        media.mkdir(parents=True)
        for i, data in enumerate(frames):
            (media / f"{i:07d}.jpg").write_bytes(data)
        frames = [str(media / f"{i:07d}.jpg") for i in range(len(frames))]
    width, height = size
    rows = [dict(sample_id=f"s{i:06d}", parent_ids=[], kind="session", source_uri=f"v{i}.mp4", status="ok",
                 stage="sample_frames", stage_version="1", frames=frames[2 * i:2 * i + 2], frame_width=width,
                 frame_height=height) for i in range(count)]
    for start in range(0, count, per_fragment):
        table = pa.Table.from_pylist(rows[start:start + per_fragment], schema=schema)
        storage.write_table_atomic(table, str(directory / f"part-{start // per_fragment:05d}.parquet"))
    return str(directory)


def session_frames(inputs: str) -> list[list[bytes]]:
    """Each session's frame bytes, whether the manifest holds them or names their files."""
    sessions = storage.read_table(inputs, columns=["frames"]).column("frames").to_pylist()
    return [[Path(f).read_bytes() if isinstance(f, str) else f for f in frames] for frames in sessions]


def server_rates(times: list[tuple[float, float]], in_flight: int) -> tuple[float, float, int]:
    """(span seconds, mean share of `in_flight` busy at the server, peak in flight) of one run."""
    span = max(f for _, f in times) - min(a for a, _ in times)
    events = sorted([(a, 1) for a, _ in times] + [(f, -1) for _, f in times])
    peak = int(max(np.cumsum([d for _, d in events])))
    return span, sum(f - a for a, f in times) / span / in_flight, peak


def measure(in_flight: int, args: argparse.Namespace, inputs: str, count: int, output: Path, workers: int) -> dict:
    """annotate through the runner on local Ray; `in_flight` requests in flight over `workers` actors."""
    # Sessions per batch: `waves` full rounds of max_in_flight requests, so the slots drain (and
    # sit idle, but for calls_per_worker > 1) once per `waves` latencies.
    per_worker = max(1, in_flight // workers)
    batch = max(16, args.waves * per_worker)
    with latency_server(ANSWER, args.latency) as server:
        cfg = compose([
            "stage=annotate", f"input={inputs}", f"output={output}", "progress=false",
            "vlm=openai", f"vlm.base_url={server.url}", "vlm.model=bench", "vlm.pricing=self_hosted",
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
    span, busy, peak = server_rates(times, in_flight)
    return {"steady": count / span, "stage": count / wall, "busy": busy, "peak": peak, "batch": batch}


def direct(in_flight: int, args: argparse.Namespace, inputs: str) -> tuple[float, float]:
    """The same requests, byte for byte (annotate's prompt, the manifest's frames), through the
    backend alone in this process: no Ray, no stage work beside it. The bare client's ceiling here:
    (requests/s, CPU ms of this process per request)."""
    from curation.backends.vlm import VLMConfig, VLMRequest, make_vlm
    from curation.prompts.templates import load_template

    template = load_template("transition_annotation")
    prompt = template.render(caption=None, feedback=None)
    requests = [VLMRequest(prompt, frames, template.schema, cache_salt=template.hash) for frames in session_frames(inputs)]
    with latency_server(ANSWER, args.latency) as server:
        cfg = VLMConfig(backend="openai", model="bench", base_url=server.url, max_in_flight=in_flight,
                        cache=False, max_retries=0, timeout_s=30)
        with make_vlm(cfg) as backend:
            backend.open()  # the client exists before the clock starts, as in a stage's setup()
            cpu = time.process_time()
            replies = backend.generate_many(requests)
            cpu = time.process_time() - cpu
        times = server.stop()
    assert all(getattr(r, "parsed", None) is not None for r in replies)
    return len(requests) / server_rates(times, in_flight)[0], 1000.0 * cpu / len(requests)


def measure_all(in_flight: int, args: argparse.Namespace, work: Path) -> dict:
    """`args.repeat` rounds of (stage through Ray, then the direct baseline at once) on one input;
    the median of each rate and the range of steady/direct."""
    count = max(4 * in_flight, int(in_flight / args.latency * args.seconds))
    inputs = write_sessions(work / f"in-{in_flight}", count, args.image_size)
    workers = min(args.workers, in_flight)
    rounds = []
    for i in range(args.repeat):
        m = measure(in_flight, args, inputs, count, work / f"run-{in_flight}-{i}", workers)
        m["direct"], m["client_ms"] = direct(in_flight, args, inputs)
        m["steady_direct"] = m["steady"] / m["direct"]
        rounds.append(m)
    median = {k: float(np.median([m[k] for m in rounds])) for k in ("steady", "stage", "direct", "busy", "steady_direct", "client_ms")}
    return {**rounds[0], **median, "in_flight": in_flight, "annotations": count, "ideal": in_flight / args.latency,
            "peak": max(m["peak"] for m in rounds),
            "range": (min(m["steady_direct"] for m in rounds), max(m["steady_direct"] for m in rounds))}


class RateWorker:
    """One worker of a run as a Ray actor: its own backend, drawing on the named rate ledger when
    given one, else on its own limiter (how every worker held its limit before)."""

    def __init__(self, url: str, rpm: float, rate_ledger: str | None):
        from curation.backends.vlm import VLMConfig, make_vlm

        cfg = VLMConfig(backend="openai", model="bench", base_url=url, max_in_flight=16, cache=False,
                        max_retries=0, timeout_s=30, requests_per_minute=rpm)
        self.vlm = make_vlm(cfg)
        self.vlm.rate_ledger = rate_ledger
        self.vlm.open()

    def send(self, frames: list[list[bytes]]) -> int:
        from curation.backends.vlm import VLMRequest
        from curation.prompts.templates import load_template

        template = load_template("transition_annotation")
        prompt = template.render(caption=None, feedback=None)
        replies = self.vlm.generate_many([VLMRequest(prompt, f, template.schema) for f in frames])
        return sum(getattr(r, "parsed", None) is not None for r in replies)


def rate_limits(rpm: float, per_worker: int, size: tuple[int, int]) -> dict[str, float]:
    """Requests per minute seen by the server from 2 Ray actors, each with `vlm.requests_per_minute=rpm`:
    with one rate ledger for both (the run's limit) and with a limiter each (the old per-worker one).
    Rates over the whole run: requests after the first / (last arrival - first arrival)."""
    import ray

    from curation.backends.limits import create_rate_ledger

    frames = [[f, f] for f in photo_frames(per_worker, size)]
    out = {}
    for case, ledger_name in (("shared", "bench-rates"), ("per_worker", None)):
        ledger = create_rate_ledger(ledger_name, rpm, None) if ledger_name else None
        with latency_server(ANSWER, 0.05) as server:
            actor = ray.remote(num_cpus=0)(RateWorker)
            workers = [actor.remote(server.url, rpm, ledger_name) for _ in range(2)]
            ray.get([w.__ray_ready__.remote() for w in workers])
            assert ray.get([w.send.remote(frames) for w in workers]) == [per_worker, per_worker]
            times = sorted(a for a, _ in server.stop())
        for w in workers:
            ray.kill(w)
        if ledger is not None:
            ray.kill(ledger)
        out[case] = 60.0 * (len(times) - 1) / (times[-1] - times[0])
    return out


def size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 8, 64], help="vlm.max_in_flight values")
    parser.add_argument("--seconds", type=float, default=6.0, help="target length of each measurement at the ideal rate")
    parser.add_argument("--waves", type=int, default=8, help="annotate.resources.batch_size = waves * max_in_flight")
    parser.add_argument("--workers", type=int, default=1, help="annotate actors; each gets in_flight/workers requests in flight")
    parser.add_argument("--image-size", type=size, default=(1024, 683), metavar="WxH", help="size of each of a request's two frames")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per setting; rates are the median over rounds")
    parser.add_argument("--rpm", type=float, default=240.0,
                        help="requests_per_minute of the rate-limit check (2 workers; 0 skips it)")
    parser.add_argument("--rpm-requests", type=int, default=20, help="requests each worker sends in the rate-limit check")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from curation.core.ray_env import init_ray

    init_ray(compose([]).cluster)
    with tempfile.TemporaryDirectory(prefix="vlm-bench-") as tmp:
        results = [measure_all(n, args, Path(tmp)) for n in args.in_flight]
    w, h = args.image_size
    print(f"\nannotate through a {args.workers}-actor Ray pool, OpenAI-compatible loopback server at "
          f"{args.latency * 1000:.0f} ms/request, 2 frames of {w}x{h} per request, median of {args.repeat} round(s)")
    print(f"{'in_flight':>9} {'n':>6} {'ideal/s':>8} {'steady/s':>9} {'steady/ideal':>12} {'stage/s':>8} {'stage/ideal':>11} "
          f"{'direct/s':>9} {'direct/ideal':>12} {'steady/direct':>13} {'range':>11} {'busy':>5} {'peak':>5} {'client_ms':>9}")
    for r in results:
        print(f"{r['in_flight']:>9} {r['annotations']:>6} {r['ideal']:>8.1f} {r['steady']:>9.1f} {r['steady'] / r['ideal']:>12.3f} "
              f"{r['stage']:>8.1f} {r['stage'] / r['ideal']:>11.3f} {r['direct']:>9.1f} {r['direct'] / r['ideal']:>12.3f} "
              f"{r['steady_direct']:>13.3f} {'%.2f-%.2f' % r['range']:>11} {r['busy']:>5.2f} {r['peak']:>5} {r['client_ms']:>9.2f}")
    print("baselines: ideal = max_in_flight / latency; direct = the same requests through the backend alone, no Ray, "
          "no stage (the bare client's ceiling here), run right after each stage run")
    print("busy = mean requests in flight at the server / max_in_flight; peak = most in flight at once; "
          "client_ms = CPU ms per request of the direct run (the client's own cost)")
    print("goal: steady/ideal >= 0.90, or steady/direct >= 0.95 where direct/ideal < 0.90 (the client's CPU is the ceiling)")
    if args.rpm:
        rates = rate_limits(args.rpm, args.rpm_requests, args.image_size)
        print(f"\nrequests_per_minute={args.rpm:g} on each of 2 Ray workers, {args.rpm_requests} requests each; "
              "rate seen by the server over the run, / the limit:")
        for case, rate in rates.items():
            print(f"{case:>10}: {rate:7.1f}/min  {rate / args.rpm:5.2f}x the limit")
        print("shared = one rate ledger actor for the run (goal <= 1.0x, the initial burst aside); "
              "per_worker = a limiter per worker, as before (about 2x)")


if __name__ == "__main__":
    main()
