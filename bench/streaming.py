"""Streamed pipeline against the same stages run one after another, measured in one Ray session.

    python bench/streaming.py [--copies 4] [--gpu-s 0.3] [--repeats 1]

Stages: ingest, scene_split, filter_quality, sample_frames on `--copies` copies of each bundled
example video (copies under distinct names are distinct sources), then a
stand-in for a GPU stage (`gpu_standin`: sleeps `--gpu-s` per session while holding its worker,
as a model's forward pass would, and asks for little CPU so decoding keeps its cores). Run one by
one (`stream=false`), the stand-in waits until every clip is decoded and sampled; streamed, it
starts on the first sessions. Prints the wall time of each, and streamed / one-by-one. The two
runs alternate (one-by-one first) so drift in the machine's load hits both.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pydantic import BaseModel, Field  # noqa: E402

from curation.core.stage import Resources, Row, Stage  # noqa: E402


class StandInColumns(BaseModel):
    standin_s: float | None = Field(None, description="seconds the stand-in held its worker for this row")


class GpuStandIn(Stage):
    """A GPU stage's shape without a GPU: a fixed time per session in which the worker is busy."""

    name: ClassVar[str] = "gpu_standin"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = StandInColumns

    seconds: float = Field(0.3, ge=0, description="busy time per row")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=0.1, batch_size=1, concurrency=(1, 1)))

    def process(self, row: Row) -> list[Row]:
        time.sleep(self.seconds)
        return [self.enrich(row, standin_s=self.seconds)]


def install(site: Path) -> None:
    """Register the stand-in as a `curate.stages` entry point, as a plugin package would."""
    info = site / "curate_bench_standin-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: curate-bench-standin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[curate.stages]\ngpu_standin = {__name__}:GpuStandIn\n")
    sys.path.insert(0, str(site))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-s", type=float, default=0.3, help="stand-in seconds per session")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs (one-by-one, streamed)")
    parser.add_argument("--copies", type=int, default=4, help="copies of each example video in the input")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="curate-stream-bench-"))
    install(work / "site")
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    from curation.core.config import compose
    from curation.core.runner import run

    videos = work / "videos"
    videos.mkdir()
    examples = sorted((REPO / "examples" / "media").glob("*/*.mp4"))
    for copy in range(args.copies):
        for video in examples:
            shutil.copyfile(video, videos / f"{video.stem}-{copy}.mp4")
    stages = "[ingest,scene_split,filter_quality,sample_frames,gpu_standin]"
    # The sessions pipeline's motion floor (pipeline/sessions.yaml): tripod shots with moving people stay.
    base = [f"stages={stages}", f"input={videos}", "models=tiny", "progress=false", f"gpu_standin.seconds={args.gpu_s}",
            "filter_quality.quality.motion.min_px_per_s=0.3"]
    # Warm up Ray and the decoders once, outside the timings.
    run(compose([*base, f"output={work / 'warm'}"]))
    walls: dict[str, list[float]] = {"one_by_one": [], "streamed": []}
    sessions = 0
    for repeat in range(args.repeats):
        for mode, extra in (("one_by_one", ["stream=false"]), ("streamed", [])):
            t0 = time.perf_counter()
            results = run(compose([*base, f"output={work / f'{mode}-{repeat}'}", *extra]))
            walls[mode].append(time.perf_counter() - t0)
            sessions = results[-1].counts["total"]
    one, streamed = min(walls["one_by_one"]), min(walls["streamed"])
    print(f"stages {stages} on {len(examples) * args.copies} example videos: {sessions} sessions, "
          f"stand-in {args.gpu_s} s/session")
    print(f"one by one (stream=false): {one:.1f} s   runs: {', '.join(f'{w:.1f}' for w in walls['one_by_one'])}")
    print(f"streamed   (stream=true):  {streamed:.1f} s   runs: {', '.join(f'{w:.1f}' for w in walls['streamed'])}")
    print(f"streamed / one-by-one: {streamed / one:.2f}x  (baseline: the same stages run one by one, same Ray session)")


if __name__ == "__main__":
    main()
