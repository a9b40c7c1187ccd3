"""shard: write the manifest's ok samples as WebDataset tars, with per-shard stats and a byte-offset index."""

from __future__ import annotations

import os
import warnings
from collections import Counter, defaultdict
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from pydantic import BaseModel, Field, field_validator

from curation.core import config_change, layout, media_store, storage
from curation.core.schema import media_ext, rows_to_table
from curation.core.stage import SinkContext, SinkResult, SinkStage, failure_reason
from curation.shards.splits import assign_split, check_ratios
from curation.shards.writer import SHARD_SCHEMA_VERSION, MediaOptions, bucket_key, estimated_tar_bytes, sample_members, write_tar
from curation.sources.licences import UNKNOWN_LICENCE

PLAN = "_plan.parquet"
# What `_dataset.json` counts samples by (`counts_by_<field>`), and what a sample without a value
# counts as: an unstated licence is `unknown`; no generator means the sample has no generated media.
PROVENANCE_COUNTS = {"dataset": "none", "licence": UNKNOWN_LICENCE, "generator": "none", "category": "none",
                     "category_native": "none"}


class ShardColumns(BaseModel):
    shard: str | None = Field(None, description="tar file (relative to the shards dir) holding the sample")
    shard_offset: int | None = Field(None, description="byte offset of the sample's first tar header")
    shard_bytes: int | None = Field(None, description="bytes the sample's members span in the tar")
    split: str | None = Field(None, description="the split whose shards hold the sample")


class Shard(SinkStage):
    """Write ok samples to WebDataset tars rolled by size and count, plus index.parquet and _dataset.json."""

    name: ClassVar[str] = "shard"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = ShardColumns

    output_dir: str | None = Field(description="where the tars go; null means <run dir>/shards")
    split: str = Field(description="split name in shard file names (<split>-000000.tar) when `splits` is null")
    splits: dict[str, float] | None = Field(None, description="split name -> share of source groups, e.g. {train: 0.95, "
                                            "val: 0.05}: all samples of one group go to one split (curation/shards/splits.py)")
    split_key: str = Field("source_uri", description="column whose value is a sample's source group (default: the root "
                                                     "source of its lineage, e.g. the video a session was cut from)")
    split_seed: int = Field(0, description="seed of the hash of (seed, group key) that picks a group's split")
    max_count: int = Field(gt=0, description="start a new shard after this many samples")
    max_bytes: int = Field(gt=0, description="start a new shard before it would exceed this size (bytes)")
    bucket: bool = Field(description="group shards by resolution/aspect/frame-count bucket: shards/<bucket>/...")
    max_frames: int = Field(81, gt=0, description="triplets/quads from videos: src.mp4 and tgt.mp4 keep the first min(src, tgt, "
                                                  "this) frames")
    video_crf: int = Field(18, ge=0, le=51, description="x264 CRF for re-encoded src.mp4/tgt.mp4 (lower = better quality, bigger shards)")

    @field_validator("splits")
    @classmethod
    def _check_splits(cls, splits: dict[str, float] | None) -> dict[str, float] | None:
        return None if splits is None else check_ratios(splits)

    # ---- planning --------------------------------------------------------------------------
    def _splits_of(self, table: pa.Table) -> list[str]:
        """Each row's split: its group's under `splits` (a null key: the sample is its own group), else `split`."""
        if self.splits is None:
            return [self.split] * table.num_rows
        if self.split_key not in table.column_names:
            raise ValueError(f"shard.split_key={self.split_key!r} is not a manifest column; it has {table.column_names}")
        return [assign_split(str(key) if key is not None else sid, self.splits, self.split_seed)
                for key, sid in zip(table.column(self.split_key).to_pylist(), table.column("sample_id").to_pylist())]

    def plan(self, input_uri: str) -> pa.Table:
        """Deterministic sample -> shard assignment, in manifest order, rolled by count and size."""
        rows: list[dict[str, Any]] = []
        for part in layout.manifest_parts(input_uri):
            table = storage.read_table(part, filter=pc.field("status") == "ok")
            sizes = estimated_tar_bytes(table, layout.manifest_run_dir(part))
            if self.bucket:
                frames = self._frame_counts(table)
                widths, heights = (table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows
                                   for c in ("width", "height"))
                buckets = [bucket_key(w, h, f) for w, h, f in zip(widths, heights, frames)]
            else:
                buckets = [""] * table.num_rows
            rows.extend({"sample_id": sid, "part": part, "bucket": b, "split": split, "bytes": int(n)}
                        for sid, b, split, n in zip(table.column("sample_id").to_pylist(), buckets, self._splits_of(table), sizes))
        counters: dict[tuple[str, str], tuple[int, int, int]] = {}  # (bucket, split) -> (shard number, count, bytes)
        for row in rows:
            number, count, size = counters.get((row["bucket"], row["split"]), (0, 0, 0))
            if count and (count >= self.max_count or size + row["bytes"] > self.max_bytes):
                number, count, size = number + 1, 0, 0
            counters[(row["bucket"], row["split"])] = (number, count + 1, size + row["bytes"])
            prefix = f"{row['bucket']}/" if row["bucket"] else ""
            row["shard"] = f"{prefix}{row['split']}-{number:06d}.tar"
        schema = pa.schema([("sample_id", pa.string()), ("part", pa.string()), ("bucket", pa.string()),
                            ("split", pa.string()), ("bytes", pa.int64()), ("shard", pa.string())])
        return pa.Table.from_pylist(rows, schema=schema)

    def _frame_counts(self, table: pa.Table) -> list[int]:
        """Frames per sample as the trainer will see them: a session's frames, an edit clip's
        capped common length, 1 for images."""
        n = table.num_rows
        if "frames" in table.column_names:
            sessions = pc.fill_null(pc.list_value_length(table.column("frames")), 0).to_pylist()
        else:
            sessions = [0] * n
        src, tgt = (table.column(c).to_pylist() if c in table.column_names else [None] * n
                    for c in ("num_frames", "target_num_frames"))
        counts = []
        for count, a, b in zip(sessions, src, tgt):
            if count:
                counts.append(count)
            elif a and b:
                counts.append(min(a, b, self.max_frames))
            else:
                counts.append(1)
        return counts

    # ---- one shard (runs as a Ray task) ----------------------------------------------------
    def write_shard(self, shard: str, plan: pa.Table, shards_dir: str, stage_dir: str) -> dict[str, Any]:
        wanted = plan.filter(pc.equal(plan.column("shard"), shard))
        order = {sid: i for i, sid in enumerate(wanted.column("sample_id").to_pylist())}
        rows: list[dict[str, Any]] = []
        schemas: dict[str, tuple[pa.Schema, str]] = {}  # sample_id -> its part's schema and run dir (media refs)
        for part in sorted(set(wanted.column("part").to_pylist())):
            table = storage.read_table(part, filter=pc.field("sample_id").isin(list(order)))
            rows.extend(table.to_pylist())
            schemas.update(dict.fromkeys(table.column("sample_id").to_pylist(), (table.schema, layout.manifest_run_dir(part))))
        rows.sort(key=lambda r: order[r["sample_id"]])

        samples, bad = [], []
        media = MediaOptions(max_frames=self.max_frames, crf=self.video_crf)
        for row in rows:
            try:
                with_media = dict(row)  # members are the media's bytes; the manifest keeps the references
                media_store.inline([with_media], *schemas[row["sample_id"]])
                samples.append((row["sample_id"], sample_members(with_media, media)))
            except Exception as e:  # noqa: BLE001 - an unreadable sample must not lose its shard
                bad.append(self.error_row(row, f"unshardable: {failure_reason(e)}"))
        tar_uri = storage.join(shards_dir, shard)
        fs, tar_path = storage.resolve(tar_uri)
        local = isinstance(fs, pafs.LocalFileSystem)
        tmp_path = (os.path.dirname(tar_path) if local else "/tmp") + f"/.tmp-{os.getpid()}-{os.path.basename(shard)}"
        os.makedirs(os.path.dirname(tmp_path), exist_ok=True)
        index = write_tar(tmp_path, samples)
        if local:
            os.replace(tmp_path, tar_path)
        else:  # object stores: upload the finished tar, retrying transient failures
            try:
                storage.upload_file(tmp_path, tar_uri)
            finally:
                os.remove(tmp_path)
        tar_bytes = fs.get_file_info(tar_path).size
        by_sample = {key: (offset, span) for key, offset, span in index}

        kinds = Counter(r["kind"] for r in rows if r["sample_id"] in by_sample)
        split = wanted.column("split")[0].as_py()  # one shard, one split
        stats = {"shard": shard, "split": split, "samples": len(index), "bytes": tar_bytes, "by_kind": dict(kinds),
                 "errors": len(bad)}
        stats["provenance"] = provenance_counts([r for r in rows if r["sample_id"] in by_sample])
        storage.write_json_atomic(tar_uri[: -len(".tar")] + ".stats.json", stats)
        storage.write_table_atomic(
            pa.table({"sample_id": [k for k, _, _ in index], "shard": [shard] * len(index),
                      "offset": pa.array([o for _, o, _ in index], pa.int64()),
                      "length": pa.array([s for _, _, s in index], pa.int64()),
                      "kind": [r["kind"] for r in rows if r["sample_id"] in by_sample]}),
            storage.join(shards_dir, "_index", shard.replace("/", "__") + ".parquet"),
        )
        out_rows = []
        for row in rows:
            if row["sample_id"] not in by_sample:
                continue
            offset, span = by_sample[row["sample_id"]]
            out_rows.append(dict(row, stage=self.name, stage_version=self.version, shard=shard, shard_offset=offset,
                                 shard_bytes=span, split=split))
        out_rows.extend(bad)
        # Media columns are left out (rows_to_table drops keys the schema lacks): the shards hold the media.
        schema = self.output_schema(_light_schema(storage.read_schema(wanted.column("part")[0].as_py())))
        # The manifest part is written last: it is the shard's completion marker.
        storage.write_table_atomic(config_change.tag(rows_to_table(out_rows, schema), self),
                                   storage.join(stage_dir, f"part-{shard.replace('/', '__')}.parquet"))
        return stats

    # ---- the sink --------------------------------------------------------------------------
    def outputs_outside(self, run_dir: str) -> list[str]:
        return [self.output_dir or storage.join(run_dir, "shards")]

    def run_sink(self, ctx: SinkContext) -> SinkResult:
        import ray.data
        from tqdm.auto import tqdm

        input_dir, stage_dir = ctx.input_uri, ctx.stage_dir
        if input_dir is None:
            raise ValueError("shard needs input=<manifest dir> (e.g. the sample_frames output)")
        shards_dir = self.outputs_outside(ctx.run_dir)[0]
        plan_uri = storage.join(stage_dir, PLAN)
        plan = self.plan(input_dir)
        if storage.exists(plan_uri):
            saved = storage.read_table(plan_uri)
            if saved.column("sample_id").to_pylist() != plan.column("sample_id").to_pylist() or \
                    saved.column("shard").to_pylist() != plan.column("shard").to_pylist():
                raise ValueError(f"{stage_dir} was sharded from different input or settings; "
                                 "write to a new output= run dir or delete that stage dir")
        else:
            storage.write_table_atomic(plan, plan_uri)

        all_shards = sorted(set(plan.column("shard").to_pylist()))
        todo = [s for s in all_shards
                if not storage.exists(storage.join(stage_dir, f"part-{s.replace('/', '__')}.parquet"))]
        if todo:
            ray.data.DataContext.get_current().enable_progress_bars = False

            def write(batch: dict[str, Any]) -> dict[str, Any]:
                samples = [self.write_shard(s, plan, shards_dir, stage_dir)["samples"] for s in batch["shard"]]
                return {"shard": batch["shard"], "samples": samples}

            with warnings.catch_warnings():  # Ray's deprecation of **ray_remote_args; see the runner
                warnings.simplefilter("ignore", DeprecationWarning)
                jobs = ray.data.from_items([{"shard": s} for s in todo], override_num_blocks=len(todo)).map_batches(
                    write, batch_size=1, num_cpus=self.resources.num_cpus, max_retries=ctx.max_restarts)
            with tqdm(total=len(todo), desc="shard", unit="shard", disable=not ctx.progress) as bar:
                for _ in jobs.iter_rows():
                    bar.update(1)
        self._write_dataset_card(shards_dir, all_shards, ctx.config_hash)
        processed = plan.filter(pc.is_in(plan.column("shard"), value_set=pa.array(todo, pa.string()))).num_rows
        return SinkResult(processed=processed, skipped=len(all_shards) - len(todo), done=len(todo),
                          extra={"shards_dir": shards_dir, "num_shards": len(all_shards)})

    def _write_dataset_card(self, shards_dir: str, shards: list[str], config_hash: str) -> None:
        """Merge per-shard index parts into index.parquet and write _dataset.json."""
        parts = [storage.read_table(storage.join(shards_dir, "_index", s.replace("/", "__") + ".parquet")) for s in shards]
        index = pa.concat_tables(parts) if parts else pa.table({"sample_id": pa.array([], pa.string())})
        storage.write_table_atomic(index, storage.join(shards_dir, "index.parquet"))
        per_shard = [storage.read_json(storage.join(shards_dir, s[: -len(".tar")] + ".stats.json")) for s in shards]
        by_kind: Counter[str] = Counter()
        buckets: dict[str, int] = defaultdict(int)
        splits: dict[str, int] = dict.fromkeys(self.splits or [self.split], 0)
        provenance: dict[str, Counter[str]] = {field: Counter() for field in PROVENANCE_COUNTS}
        for stats, name in zip(per_shard, shards):
            by_kind.update(stats["by_kind"])
            for field, counts in stats.get("provenance", {}).items():  # shards written before provenance: none
                provenance[field].update(counts)
            buckets[name.rsplit("/", 1)[0] if "/" in name else ""] += stats["samples"]
            splits[stats.get("split", self.split)] += stats["samples"]  # shards of runs before splits: all `split`
        storage.write_json_atomic(storage.join(shards_dir, "_dataset.json"), {
            "schema_version": SHARD_SCHEMA_VERSION,
            "format": "webdataset",
            "split": self.split if self.splits is None else None,
            "splits": splits,  # samples per split
            "split_by": None if self.splits is None else {"key": self.split_key, "seed": self.split_seed, "ratios": self.splits},
            "num_samples": sum(s["samples"] for s in per_shard),
            "num_shards": len(shards),
            "counts_by_kind": dict(by_kind),
            # Provenance: samples per source dataset, licence, generator of their generated media and category
            # (normalised and as the dataset wrote it); API generators are `<provider>:<model>`, whose terms apply.
            **{f"counts_by_{field}": dict(sorted(counts.items())) for field, counts in provenance.items()},
            "buckets": dict(buckets) if self.bucket else {},
            "shards": per_shard,
            "config_hash": config_hash,
            "members": "json, txt (instruction); sessions: frame_<i>.jpg + turns.json + mask_<k>_src.png/mask_<k>_tgt.png; "
                       "pairs: src.jpg + tgt.jpg; triplets: src.mp4 + tgt.mp4 (H.264, same frame count); quads: + ref.png; "
                       "grounded edits: + mask_src.png/mask_tgt.png; see DESIGN.md §5",
        })


def provenance_counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Samples per value of each provenance field (PROVENANCE_COUNTS), for a shard's stats."""
    return {field: dict(Counter(row.get(field) or missing for row in rows)) for field, missing in PROVENANCE_COUNTS.items()}


def _light_schema(schema: pa.Schema) -> pa.Schema:
    """The input schema without media columns (references, or bytes in manifests written before
    them): the shards hold the media, the manifest the facts."""
    heavy = (pa.binary(), pa.large_binary(), pa.list_(pa.binary()), pa.large_list(pa.binary()))
    return pa.schema([f for f in schema if f.type not in heavy and media_ext(f) is None])
