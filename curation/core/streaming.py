"""Run a chain of consecutive map stages as one Ray Data plan, one manifest part per fragment and stage.

Why one plan: run one after another, a GPU stage waits until every clip of the run has been
decoded and sampled; streamed, the first clips reach it while later videos are still decoding.

    fragment file --read task--> rows of stage k-1 (k = the first stage this fragment still lacks)
      --pool of stage 1--> --pool of stage 2--> ... --driver--> <stage_dir of each stage>/<part name>

Every row carries private tags: its fragment, the stage that made it (`_stage`), and an order
key (`_order`: its input row's key plus its position among that row's outputs). A stage's pool
takes the `ok` rows the stage before it made and passes every other row on untouched, so each
stage's dropped and error rows, and the rows later stages consume, all reach the driver. The
driver writes a fragment of stage s once every input row of it has come back, sorted by the
order key: exactly the rows, order and ids that running the stages one by one would write. A
fragment is complete for stage s only after it is complete for stage s-1, so a run killed at any
point resumes each fragment at the first stage whose part is missing, and redoes nothing written.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curation.core import config_change, layout, media_store, storage
from curation.core.resources import READ_TASK_CPUS, fit_to_cluster
from curation.core.schema import PRIVATE_PREFIX, public_schema, rows_to_table
from curation.core.stage import Resources, Stage

log = logging.getLogger(__name__)
FRAG, ORDER, STAGE, ON_DISK, NODE, DEVICES = "_frag", "_order", "_stage", "_on_disk", "_node", "_devices"
MAX_WORKER_RESTARTS = 3
ORDER_TYPE = pa.list_(pa.int32())
# Target size of the blocks between a chain's stages. Rows hold media references, so 64 KiB is a few
# dozen rows: a batch reaches the next stage long before its fragment is done (bench/streaming.py),
# while a pool still gets bundles as large as its batch_size. 4 KiB blocks handed edit_score's pool
# bundles of a few rows and cut its rate from 0.82 to 0.35 of ideal (bench/judge_throughput.py).
STREAM_BLOCK_BYTES = 64 * 1024


@dataclass
class Fragment:
    """One unit of resumable work: a part name, and the first stage of the chain still to make it."""

    index: int
    input_uri: str  # what stage `start` reads: the chain's input part, or the part stage start-1 wrote
    output_uri: str  # the part stage `start` writes
    only_ids: list[str] | None = None  # retry_errors: reprocess just these input rows
    expected: int = 0  # input rows stage `start` processes (status=ok, or the retried ones)
    start: int = 0  # chain position of the first stage whose part is missing

    @property
    def name(self) -> str:
        return self.input_uri.rsplit("/", 1)[1]


@dataclass
class ChainLink:
    """One stage of a chain: the stage, where it writes, the resources its pool runs with."""

    stage: Stage
    stage_dir: str
    resources: Resources


@dataclass
class LinkOutcome:
    """What one stage of a chain did in this run."""

    processed: int = 0  # input rows that came back
    done: int = 0  # parts written
    nodes: Counter = field(default_factory=Counter)  # Ray node id -> output rows made there
    devices: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # model role -> devices seen
    assigned: set[str] = field(default_factory=set)  # what Ray gave the workers (JSON), e.g. {"CPU": 0.5, "GPU": 0.5}


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


def plan_chain(input_uris: list[str], stage_dirs: list[str], retry_errors: bool) -> tuple[list[Fragment], list[int]]:
    """Fragments still to do, and per stage how many parts were already complete (skipped).

    retry_errors redoes a single stage's error rows, so it plans a chain of one stage."""
    if retry_errors and len(stage_dirs) != 1:
        raise ValueError("retry_errors plans one stage at a time")
    todo: list[Fragment] = []
    skipped = [0] * len(stage_dirs)
    for uri in input_uris:
        name = uri.rsplit("/", 1)[1]
        outputs = [storage.join(d, name) for d in stage_dirs]
        start = next((i for i, out in enumerate(outputs) if not storage.exists(out)), len(outputs))
        for i in range(start):
            skipped[i] += 1
        if start == len(outputs) and not retry_errors:
            continue
        if start == len(outputs):  # retry_errors, one stage, part present: redo its error rows, if any
            skipped[0] -= 1
            done = storage.read_table(outputs[0], columns=["sample_id", "status"])
            errored = done.filter(pc.equal(done.column("status"), "error")).column("sample_id").to_pylist()
            if not errored:
                skipped[0] += 1
                continue
            ids = sorted(set(errored))
            todo.append(Fragment(len(todo), uri, outputs[0], only_ids=ids, expected=len(ids)))
            continue
        source = uri if start == 0 else outputs[start - 1]
        status = storage.read_table(source, columns=["status"]).column("status")
        todo.append(Fragment(len(todo), source, outputs[start], expected=pc.sum(pc.equal(status, "ok")).as_py() or 0,
                             start=start))
    return todo, skipped


def plan_fragments(input_uris: list[str], stage_dir: str, retry_errors: bool) -> tuple[list[Fragment], int]:
    """A single stage's plan: fragments still to do, and how many were complete."""
    todo, skipped = plan_chain(input_uris, [stage_dir], retry_errors)
    return todo, skipped[0]


# --------------------------------------------------------------------------------------------
# Ray side
# --------------------------------------------------------------------------------------------


def _read_fragments(batch: pa.Table, fragments: list[Fragment]) -> pa.Table:
    """Ray task: the rows of the fragments named in `batch` that their first missing stage processes."""
    tables = []
    for index in batch.column("index").to_pylist():
        frag = fragments[index]
        table = storage.read_table(frag.input_uri)
        if layout.manifest_run_dir(frag.input_uri) != layout.manifest_run_dir(frag.output_uri):  # another run's media refs
            table = media_store.absolutize(table, layout.manifest_run_dir(frag.input_uri))
        if frag.only_ids is not None:
            mask = pc.is_in(table.column("sample_id"), value_set=pa.array(frag.only_ids, pa.string()))
        else:
            mask = pc.equal(table.column("status"), "ok")
        table = table.filter(mask)
        n = table.num_rows
        table = table.append_column(FRAG, pa.array([index] * n, pa.int32()))
        table = table.append_column(STAGE, pa.array([frag.start - 1] * n, pa.int32()))
        table = table.append_column(ON_DISK, pa.array([True] * n, pa.bool_()))
        table = table.append_column(ORDER, pa.array([[i] for i in range(n)], ORDER_TYPE))
        tables.append(table)
    return pa.concat_tables(tables, promote_options="permissive")


def run_batch(stage: Stage, batch: pa.Table, columns: list[str] | None = None) -> pa.Table:
    """Apply the stage to `batch` (rows tagged with `_frag` and `_order`) and tag each output with
    its fragment and an order key: its input row's key plus its position among that row's outputs.

    `columns` (if given) are the stage's input columns: rows streamed from a later resume point
    travel in the same batches with more columns, which must not leak into this stage's rows.
    Every input row comes back at least once: a stage that returns nothing for a row gets a
    `dropped` row with reason `no_output`, so no sample vanishes."""
    outputs = []
    for frag in pc.unique(batch.column(FRAG)).to_pylist():
        rows = batch.filter(pc.equal(batch.column(FRAG), frag))
        keep = [c for c in rows.column_names if not c.startswith(PRIVATE_PREFIX) and (columns is None or c in columns)]
        inputs = rows.select(keep)
        orders = [tuple(o) for o in rows.column(ORDER).to_pylist()]
        order_of = dict(zip(inputs.column("sample_id").to_pylist(), orders))
        out = stage(inputs)
        # Only the id columns are read back: rows may be wide.
        parents: list[tuple[int, ...] | None] = []
        for sample_id, parent_ids in zip(out.column("sample_id").to_pylist(), out.column("parent_ids").to_pylist()):
            key = order_of.get(sample_id)
            if key is None and parent_ids:
                key = order_of.get(parent_ids[0])
            parents.append(key)
        if None in parents:
            raise RuntimeError(f"stage {stage.name} produced rows whose sample_id/parent_ids match no input row")
        missing = set(orders) - set(parents)
        if missing:
            lost = [stage.error_row(r, "no_output: the stage returned no row for this sample", "dropped")
                    for r, key in zip(inputs.to_pylist(), orders) if key in missing]
            out = pa.concat_tables([out, rows_to_table(lost, out.schema)])
            parents += [key for key in orders if key in missing]
        seen: Counter = Counter()
        keys = []
        for key in parents:
            keys.append([*key, seen[key]])
            seen[key] += 1
        out = out.append_column(FRAG, pa.array([frag] * out.num_rows, pa.int32()))
        out = out.append_column(ORDER, pa.array(keys, ORDER_TYPE))
        outputs.append(out)
    return pa.concat_tables(outputs, promote_options="permissive")


class ChainWorker:
    """Ray actor: one stage of a chain, its models loaded once by `setup()`. It processes the ok
    rows the previous stage made (or read from disk for it) and passes every other row on."""

    def __init__(self, stage: Stage, position: int, columns: list[str] | None):
        import ray

        self.stage = stage
        self.position = position
        self.columns = columns
        self.stage.ensure_setup()
        self.node_id = ray.get_runtime_context().get_node_id()
        # What Ray really gave this worker: the proof a model stage was scheduled with its GPU share.
        self.assigned = ray.get_runtime_context().get_assigned_resources()

    def __call__(self, batch: pa.Table) -> pa.Table:
        made_by_previous = pc.equal(batch.column(STAGE), self.position - 1)
        on_disk = pc.fill_null(batch.column(ON_DISK), False)
        mine = pc.and_(made_by_previous, pc.or_(on_disk, pc.equal(batch.column("status"), "ok")))
        # The previous stage's rows go on to the driver, which writes its parts; rows read from disk
        # were written by an earlier run, so they stop here.
        todo, passing = batch.filter(mine), batch.filter(pc.invert(pc.and_(mine, on_disk)))
        if todo.num_rows == 0:
            return batch
        out = run_batch(self.stage, todo, self.columns)
        n = out.num_rows
        devices = json.dumps({"models": self.stage.model_devices(), "assigned": self.assigned}, sort_keys=True)
        out = out.append_column(STAGE, pa.array([self.position] * n, pa.int32()))
        out = out.append_column(ON_DISK, pa.array([False] * n, pa.bool_()))
        out = out.append_column(NODE, pa.array([self.node_id] * n, pa.string()))
        out = out.append_column(DEVICES, pa.array([devices] * n, pa.string()))
        return pa.concat_tables([out, passing], promote_options="permissive") if passing.num_rows else out


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


class _Writer:
    """Driver-side bookkeeping: buffers each (stage, fragment)'s rows until every input row of it
    came back, then writes the part, which makes the next stage's count of that part known."""

    def __init__(self, links: list[ChainLink], fragments: list[Fragment], outcomes: list[LinkOutcome], bars: list[Any]):
        self.links, self.fragments, self.outcomes, self.bars = links, fragments, outcomes, bars
        self.buffers: dict[tuple[int, int], list[pa.Table]] = defaultdict(list)
        self.seen: dict[tuple[int, int], set[tuple[int, ...]]] = defaultdict(set)
        self.expected: dict[tuple[int, int], int] = {}
        self.open: set[tuple[int, int]] = set()
        for f in fragments:
            for s in range(f.start, len(links)):
                self.open.add((s, f.index))
            self._expect(f.start, f.index, f.expected)

    def _input_uri(self, s: int, f: int) -> str:
        frag = self.fragments[f]
        return frag.input_uri if s == frag.start else storage.join(self.links[s - 1].stage_dir, frag.name)

    def _expect(self, s: int, f: int, count: int) -> None:
        self.expected[(s, f)] = count
        self.bars[s].total = (self.bars[s].total or 0) + count
        self.bars[s].refresh()
        self._maybe_finish(s, f)

    def add(self, table: pa.Table) -> None:
        stages = table.column(STAGE)
        for s in pc.unique(stages).to_pylist():
            of_stage = table.filter(pc.equal(stages, s))
            outcome = self.outcomes[s]
            outcome.nodes.update(of_stage.column(NODE).to_pylist())
            for worker in pc.unique(of_stage.column(DEVICES)).to_pylist():
                facts = json.loads(worker)
                for role, device in facts["models"].items():
                    outcome.devices[role].add(device)
                outcome.assigned.add(json.dumps(facts["assigned"], sort_keys=True))
            for f in pc.unique(of_stage.column(FRAG)).to_pylist():
                part = of_stage.filter(pc.equal(of_stage.column(FRAG), f))
                self.buffers[(s, f)].append(part)
                before = len(self.seen[(s, f)])
                self.seen[(s, f)].update(tuple(o[:-1]) for o in part.column(ORDER).to_pylist())
                newly = len(self.seen[(s, f)]) - before
                outcome.processed += newly
                self.bars[s].update(newly)
                self._maybe_finish(s, f)

    def _maybe_finish(self, s: int, f: int) -> None:
        expected = self.expected.get((s, f))
        if (s, f) not in self.open or expected is None or len(self.seen[(s, f)]) < expected:
            return
        self.open.discard((s, f))
        link, frag = self.links[s], self.fragments[f]
        table = finish_part(link.stage, self.buffers.pop((s, f), []), self._input_uri(s, f),
                            storage.join(link.stage_dir, frag.name), frag.only_ids if s == frag.start else None)
        self.seen.pop((s, f), None)
        self.outcomes[s].done += 1
        if s + 1 < len(self.links):
            ok = pc.sum(pc.equal(table.column("status"), "ok")).as_py() or 0
            self._expect(s + 1, f, ok)


def finish_part(stage: Stage, parts: list[pa.Table], input_uri: str, output_uri: str,
                only_ids: list[str] | None = None) -> pa.Table:
    """Sort a complete part into input order and write it atomically with exactly the stage's
    output columns (merging retried rows into the earlier part under retry_errors). Returns it."""
    schema = stage.output_schema(public_schema(storage.read_schema(input_uri)))
    if parts:
        table = pa.concat_tables(parts, promote_options="permissive")
        orders = table.column(ORDER).to_pylist()
        table = table.take(pa.array(sorted(range(len(orders)), key=orders.__getitem__), pa.int64()))
        table = pa.table({f.name: table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
                          for f in schema}).cast(schema)
    else:
        table = schema.empty_table()
    if only_ids is not None:
        # retry_errors: keep the earlier rows except the retried samples' error rows, then add the new rows.
        previous = storage.read_table(output_uri)
        retried = pa.array(only_ids, pa.string())
        keep = pc.invert(pc.and_(pc.is_in(previous.column("sample_id"), value_set=retried),
                                 pc.equal(previous.column("status"), "error")))
        table = pa.concat_tables([previous.filter(keep), table], promote_options="permissive")
    table = config_change.tag(table, stage)  # what a rerun compares its own config with
    storage.write_table_atomic(table, output_uri)
    return table


def _progress(desc: str, enabled: bool, position: int):
    from tqdm.auto import tqdm

    return tqdm(total=0, desc=desc, unit="sample", disable=not enabled, dynamic_ncols=True, position=position)


def stage_columns(links: list[ChainLink], fragments: list[Fragment]) -> list[list[str] | None]:
    """Each stage's input columns: the union over the fragments' first inputs, carried forward
    through each stage's output schema (columns are added, never renamed)."""
    columns: list[list[str] | None] = []
    schema: pa.Schema | None = None
    for s, link in enumerate(links):
        here = [public_schema(storage.read_schema(f.input_uri)) for f in fragments if f.start == s]
        if schema is None and not here:
            columns.append(None)  # no fragment reaches this stage from here on
            continue
        merged = pa.unify_schemas(([schema] if schema is not None else []) + here, promote_options="permissive")
        columns.append(merged.names)
        schema = link.stage.output_schema(merged)
    return columns


def _blocks_of(ds: Any, rows: int) -> Any:
    """Cut the stream into blocks of at most `rows` rows: the next stage's batch.

    Why: an actor pool hands each input block whole to one worker, and a map task emits its output
    only when the block is done. A fragment read as one block (or one video's clips made in one
    call) would be worked through batch after batch by one worker while the others idle, and
    reach the driver, which writes the parts, only at the end. Measured before this cut: four
    videos went through one scene_split worker of two, and every part of the run was written in
    the same 20 ms at its end.

    Ray Data's streaming repartition does the cut; its tasks ask for a whole CPU by default, which
    a chain whose pools hold all but READ_TASK_CPUS of a small machine never frees, so they ask
    for that share (Ray fuses the cut into the read task that comes before the first stage)."""
    ds = ds.repartition(target_num_rows_per_block=rows)
    cut = ds._logical_plan.dag
    object.__setattr__(cut, "ray_remote_args", {**cut.ray_remote_args, "num_cpus": READ_TASK_CPUS})
    return ds


def _chain_dataset(links: list[ChainLink], fragments: list[Fragment]) -> Any:
    """The plan: read each fragment at its first missing stage, then every stage's actor pool."""
    import ray.data

    ds = ray.data.from_items([{"index": f.index} for f in fragments], override_num_blocks=len(fragments))
    ds = ds.map_batches(_read_fragments, fn_kwargs={"fragments": fragments}, batch_size=1, batch_format="pyarrow",
                        num_cpus=READ_TASK_CPUS)
    first = min(f.start for f in fragments)
    columns = stage_columns(links, fragments)
    for position in range(first, len(links)):
        link, res = links[position], links[position].resources
        ds = _blocks_of(ds, res.batch_size)
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing actor options as **kwargs but has no named parameter for
            # these yet; its default (-1) would retry a sample that crashes its worker forever.
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ds.map_batches(
                ChainWorker,
                fn_constructor_kwargs={"stage": link.stage, "position": position, "columns": columns[position]},
                compute=ray.data.ActorPoolStrategy(
                    min_size=res.concurrency[0],
                    max_size=res.concurrency[1],
                    max_concurrent_calls_per_actor=res.calls_per_worker if res.calls_per_worker > 1 else None,
                    enable_true_multi_threading=res.calls_per_worker > 1,  # else Ray runs the calls one at a time
                ),
                batch_size=res.batch_size,
                batch_format="pyarrow",
                num_cpus=res.num_cpus,
                num_gpus=res.num_gpus or None,
                resources=res.custom_resources or None,
                max_restarts=MAX_WORKER_RESTARTS,  # a crashed worker is restarted and its batch retried
                max_task_retries=MAX_WORKER_RESTARTS,
            )

    return ds


def run_chain(links: list[ChainLink], fragments: list[Fragment], progress: bool) -> list[LinkOutcome]:
    """Stream the fragments through every stage's actor pool in one Ray Data plan and write each
    stage's parts as they complete."""
    import ray.data

    outcomes = [LinkOutcome() for _ in links]
    if not fragments:
        return outcomes
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours (per stage, per sample) are the ones users read
    ctx.verbose_stats_logs = False
    # Ray Data announces every execution at INFO (and resets its logger when first imported).
    logging.getLogger("ray.data").setLevel(logging.WARNING)

    # Small blocks: a map task emits its output only when it ends, and it ends after the whole block
    # it was handed. With fragment-sized blocks a stage would see nothing until the stage before
    # finished a fragment; small blocks carry each batch on soon after it is done. The context is
    # sealed into the dataset when it is created, so this touches no other dataset.
    sealed_block_size = ctx.target_max_block_size
    ctx.target_max_block_size = STREAM_BLOCK_BYTES
    try:
        ds = _chain_dataset(links, fragments)
    finally:
        ctx.target_max_block_size = sealed_block_size

    first = min(f.start for f in fragments)
    bars = [_progress(link.stage.name, progress and s >= first, s - first) for s, link in enumerate(links)]
    try:
        writer = _Writer(links, fragments, outcomes, bars)
        if writer.open:
            # No prefetch: with prefetch_batches=2 the iterator held a finished block until two more
            # were ready, so on a small run every part was written at the very end.
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
                writer.add(batch)
    finally:
        for bar in bars:
            bar.close()
    if writer.open:
        missing = sorted({(links[s].stage.name, fragments[f].name) for s, f in writer.open})
        raise RuntimeError(f"rows missing from the output of {missing}")
    return outcomes


def run_map_stage(stage: Stage, fragments: list[Fragment], progress: bool, nodes: Counter | None = None,
                  resources: Resources | None = None) -> int:
    """One stage on its own (a chain of one); returns input rows processed. `nodes` (if given)
    counts the output rows each Ray node's workers returned."""
    if not fragments:
        return 0
    stage_dir = fragments[0].output_uri.rsplit("/", 1)[0]
    link = ChainLink(stage, stage_dir, resources or fit_to_cluster(stage.name, stage.resources))
    outcome = run_chain([link], fragments, progress)[0]
    if nodes is not None:
        nodes.update(outcome.nodes)
    return outcome.processed
