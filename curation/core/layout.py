"""Where a run keeps its files. One module owns the run-directory layout, so the runner, the CLI,
the auditors' tools and a stage that writes beside its manifest agree on every name:

    <run_dir>/
      _summary.json                 the last `curate run`'s per-stage counts and funnel
      _spend.json                   what paid API calls cost so far, all stages and attempts (budget.py)
      _replaced/<time>/NN-<stage>/  stage outputs a rerun with on_change=recompute moved aside
      01-ingest/
        _input/part-*.parquet       a source stage's listing (kind=source rows), made on its first run
        part-*.parquet              the manifest: one part per input fragment, written atomically
        _run.json                   config, code, counts, wall time (runinfo.RunRecord)
      02-scene_split/ ...
      04-sample_frames/
        media/ab/ab12…f0.jpg        media this stage made, stored once by content (media_store.py);
                                    its manifest and later ones hold `04-sample_frames/media/ab/ab12…f0.jpg`
"""

from __future__ import annotations

from curation.core import storage

RUN_JSON = "_run.json"
SUMMARY_JSON = "_summary.json"
SPEND_JSON = "_spend.json"
REPLACED_DIR = "_replaced"
INPUT_DIR = "_input"  # a source stage's listing, the root of every lineage
MEDIA_DIR = "media"  # a stage's content-addressed media files
PART_PREFIX, PART_SUFFIX = "part-", ".parquet"


def stage_dirs(run_dir: str) -> list[str]:
    """Stage output directory names of a run, in order (`01-ingest`, `02-scene_split`, ...)."""
    return [d for d in storage.list_dirs(run_dir) if d[:2].isdigit() and "-" in d]


def stage_name(dir_name: str) -> str:
    """`03-filter_quality` -> `filter_quality`."""
    return dir_name.split("-", 1)[1]


def stage_dir_for(run_dir: str, name: str, position: int | None) -> str:
    """Reuse the stage's existing directory (resume); else number it by pipeline position or next free."""
    for d in stage_dirs(run_dir):
        if stage_name(d) == name:
            return storage.join(run_dir, d)
    existing = [int(d[:2]) for d in stage_dirs(run_dir)]
    number = position if position is not None else (max(existing, default=0) + 1)
    return storage.join(run_dir, f"{number:02d}-{name}")


def stage_dirs_for(run_dir: str, names: list[str]) -> list[str]:
    """Directories for the stages `names` of one run, in order. A stage's existing directory is
    reused (resume); a new one is numbered by its place in the list, after the stage before it and
    never on a number another directory holds: `stages=[sample_frames,annotate]` in a run that
    already has 01-ingest and 02-scene_split gets 03- and 04-, not a second 01 and 02."""
    existing = {stage_name(d): d for d in stage_dirs(run_dir)}
    taken = {int(d[:2]) for d in existing.values()}
    dirs: list[str] = []
    previous = 0
    for position, name in enumerate(names, 1):
        if name in existing:
            d = existing[name]
        else:
            number = max(position, previous + 1)
            if number in taken:
                number = max(taken) + 1
            taken.add(number)
            d = f"{number:02d}-{name}"
        previous = int(d[:2])
        dirs.append(storage.join(run_dir, d))
    return dirs


def default_input(run_dir: str, name: str) -> str | None:
    """Without `input=`, a stage reads the latest earlier stage of the same run."""
    earlier = [d for d in stage_dirs(run_dir) if stage_name(d) != name]
    return storage.join(run_dir, earlier[-1]) if earlier else None


def run_dir_of(stage_dir: str) -> str:
    return stage_dir.rstrip("/").rsplit("/", 1)[0]


def manifest_run_dir(part_uri: str) -> str:
    """The run dir of a manifest part file (`<run_dir>/<NN-stage>/part-*.parquet`): relative media
    references in it resolve against this."""
    return run_dir_of(run_dir_of(part_uri))


def media_dir(stage_dir: str) -> str:
    return storage.join(stage_dir, MEDIA_DIR)


def input_dir(stage_dir: str) -> str:
    return storage.join(stage_dir, INPUT_DIR)


def run_json(stage_dir: str) -> str:
    return storage.join(stage_dir, RUN_JSON)


def manifest_parts(dir_uri: str) -> list[str]:
    """The part files of a manifest directory (empty if there are none)."""
    return storage.list_files(dir_uri, prefix=PART_PREFIX, suffix=PART_SUFFIX)
