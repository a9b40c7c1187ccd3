"""Ingest: probe each source with PyAV and describe it; unusable files become error rows.

A source row from an edit-dataset adapter (`ingest.adapter=...`, or several datasets at once with
`ingest.datasets=[{adapter, input}, ...]`) carries a `target_uri` too: then both media are probed,
and the row becomes a `pair` (two images) or a `triplet` (two videos); one that also carries the
dataset's own reference image (Kiwi-Edit RefVIE-477K) becomes a `quad`, its reference stored as
PNG in the same `reference` column the reference stage fills.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from curation.backends.references.composite import encode_reference_png
from curation.core import layout, media_store, storage
from curation.core.stage import SourceStage, StageError
from curation.core.summary import format_counts
from curation.media.edit_media import load_image
from curation.media.probe import VideoInfo, probe_video
from curation.sources.edit_datasets import list_edit_sources, load_adapter
from curation.sources.files import list_sources
from curation.sources.licences import UNKNOWN_LICENCE, licence_id
from curation.stages.reference import ReferenceColumns

LISTING = "_listing.json"  # the adapters' listing counts (rows skipped, categories), beside the listing

# The target's properties that later stages and the shard writer need.
TARGET_FIELDS = ("fps", "num_frames", "width", "height", "duration_s", "codec")
# A dataset's own reference fills the reference stage's columns, so later stages see one quad schema.
REFERENCE_FIELDS = ("reference", "reference_width", "reference_height", "reference_backend", "reference_is_cutout")

# Every probed property is a column; all nullable, since error rows carry none of them.
IngestColumns: type[BaseModel] = create_model(
    "IngestColumns",
    **{
        name: (info.annotation | None, Field(None, description=info.description))
        for name, info in VideoInfo.model_fields.items()
    },
    **{
        f"target_{name}": (VideoInfo.model_fields[name].annotation | None,
                           Field(None, description=f"edits: the target's {VideoInfo.model_fields[name].description}"))
        for name in TARGET_FIELDS
    },
    **{name: (ReferenceColumns.model_fields[name].annotation, ReferenceColumns.model_fields[name]) for name in REFERENCE_FIELDS},
)


class DatasetInput(BaseModel):
    """One dataset of a pooled ingest run."""

    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(description="adapter name (manifests/adapters/<name>.yaml) or a YAML path")
    input: str = Field(description="the dataset's root (or its metadata file)")


class Ingest(SourceStage):
    """Probe sources (fps, VFR, frame count, display size, codec); edits probe source and target; bad files get a reason."""

    name: ClassVar[str] = "ingest"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = IngestColumns

    adapter: str | None = Field(None, description="edit-dataset adapter (manifests/adapters/<name>.yaml or a YAML path): input is "
                                                  "then that dataset's root")
    datasets: list[DatasetInput] | None = Field(
        None, description="several edit datasets pooled in one run, each {adapter, input}; `adapter` and `input=` are then unused "
                          "(input= must be unset). Every later stage, dedup included, runs over the whole pool")
    max_pixels: int = Field(gt=0, description="image-bomb guard: largest width*height accepted, checked from the header before decoding")
    scan_packets: int = Field(gt=0, description="demux at most this many packets per video to count frames and detect "
                                                "VFR/truncation (no decoding)")
    licence: str | None = Field(None, description="licence of sources nobody else states one for (plain files, a manifest without a "
                                                  "`licence` column, the generic adapter); null leaves them `unknown`")
    licences: list[str] | None = Field(None, description="keep only rows whose licence is listed (others dropped as licence_excluded); "
                                                         "null keeps every licence")

    @field_validator("licence")
    @classmethod
    def _licence_id(cls, value: str | None) -> str | None:
        return None if value is None else licence_id(value)

    @field_validator("licences")
    @classmethod
    def _licence_ids(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [licence_id(v) for v in value]

    def list_sources(self, spec: str | None, listing_dir: str) -> pa.Table:
        """Files, a glob or a source manifest; with an adapter, an edit dataset's root; with
        `datasets`, every listed dataset pooled."""
        if self.datasets:
            if spec is not None:
                raise ValueError(f"ingest.datasets names each dataset's input; leave input= unset (got {spec!r})")
            inputs = [(d.adapter, d.input) for d in self.datasets]
        elif self.adapter is not None:
            inputs = [(self.adapter, spec)]
        else:
            return list_sources(spec, self.licence or UNKNOWN_LICENCE)
        tables, listings = [], []
        for adapter, root in inputs:
            table, listing = list_edit_sources(root, load_adapter(adapter), self._store_media if self._media else None)
            tables.append(table)
            listings.append(listing.model_dump())
        storage.write_json_atomic(storage.join(listing_dir, LISTING), {"listings": listings})
        pool = pa.concat_tables(tables)
        # The same dataset listed twice (two overlapping roots) must not list an edit twice.
        seen: set[str] = set()
        keep = []
        for i, sid in enumerate(pool.column("sample_id").to_pylist()):
            if sid not in seen:
                seen.add(sid)
                keep.append(i)
        return _stated_licence(pool.take(keep).sort_by([("source_uri", "ascending"), ("sample_id", "ascending")]), self.licence)

    def _store_media(self, data: bytes, ext: str) -> str:
        """Embedded media, written once to this stage's media store; rows hold the file's URI, since
        every later stage reads `source_uri`/`target_uri` as a plain path."""
        return media_store.resolve(self._media.put(data, ext), self._media.run_dir)

    def process(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        if self.licences is not None and row.get("licence", UNKNOWN_LICENCE) not in self.licences:
            return [self.error_row(row, f"licence_excluded: {row.get('licence', UNKNOWN_LICENCE)} "
                                        f"(ingest.licences keeps {', '.join(self.licences)})", "dropped")]
        if row.get("target_uri"):
            return [self._edit_row(row)]
        info = probe_video(row["source_uri"], self.max_pixels, scan_packets=self.scan_packets)
        return [self.child_row(row, kind="video", span=None, **info.model_dump())]

    def run_extra(self, stage_dir: str) -> dict[str, Any]:
        """The adapters' listing counts (rows skipped, categories, unknown category names): `listings`,
        one per dataset, and `listing` too when the run has one dataset."""
        uri = storage.join(layout.input_dir(stage_dir), LISTING)
        if not storage.exists(uri):
            return {}
        listings = storage.read_json(uri)["listings"]
        return {"listings": listings, **({"listing": listings[0]} if len(listings) == 1 else {})}

    @classmethod
    def result_notes(cls, extra: dict[str, Any]) -> list[str]:
        notes = []
        for listing in extra.get("listings") or []:
            skipped = listing.get("skipped") or {}
            notes.append(f"adapter {listing.get('dataset')}: {listing.get('rows_listed')} edits listed from "
                         f"{listing.get('rows_read')} metadata rows; skipped {sum(skipped.values())} {format_counts(skipped)}; "
                         f"by category {format_counts(listing.get('by_category') or {})}")
            if listing.get("unknown_categories"):
                notes.append(f"[yellow]{listing.get('dataset')}: categories no mapping knows (listed as other):[/] "
                             f"{format_counts(listing['unknown_categories'])}")
        return notes

    def _edit_row(self, row: dict[str, Any]) -> dict[str, Any]:
        kind = row.get("edit_kind")
        if kind not in ("pair", "triplet"):
            raise StageError(f"bad_edit_kind: {kind!r} (the adapter must say pair or triplet)")
        source = self._probe(row["source_uri"], "source")
        target = self._probe(row["target_uri"], "target")
        for side, info in (("source", source), ("target", target)):
            is_image = info.num_frames <= 1
            if kind == "pair" and not is_image:
                raise StageError(f"kind_mismatch: a pair's {side} is a video ({info.num_frames} frames)")
            if kind == "triplet" and is_image:
                raise StageError(f"kind_mismatch: a triplet's {side} is a single image")
        columns = {**source.model_dump(), **{f"target_{n}": getattr(target, n) for n in TARGET_FIELDS}}
        if row.get("reference_uri"):
            return self.child_row(row, kind="quad", span="reference", **columns, **self._reference(row))
        return self.child_row(row, kind=kind, span=None, **columns)

    def _reference(self, row: dict[str, Any]) -> dict[str, Any]:
        """The dataset's reference image as the reference stage stores one: upright RGB as PNG."""
        try:
            image = load_image(row["reference_uri"], self.max_pixels)
        except StageError as e:
            raise StageError(f"{e.reason} (reference)") from e
        height, width = image.shape[:2]
        # Whether the dataset cut it from the target's pixels is not recorded per row: unknown, not False.
        return {"reference": encode_reference_png(image), "reference_width": width, "reference_height": height,
                "reference_backend": f"dataset:{row['dataset']}", "reference_is_cutout": None}

    def _probe(self, uri: str, side: str) -> VideoInfo:
        try:
            return probe_video(uri, self.max_pixels, scan_packets=self.scan_packets)
        except StageError as e:
            raise StageError(f"{e.reason} ({side})") from e


def _stated_licence(sources: pa.Table, licence: str | None) -> pa.Table:
    """An adapter that knows no licence (`unknown`, e.g. generic) takes the one the user states."""
    if licence is None or "licence" not in sources.column_names:
        return sources
    column = pc.if_else(pc.equal(sources.column("licence"), UNKNOWN_LICENCE), licence, sources.column("licence"))
    return sources.set_column(sources.column_names.index("licence"), "licence", column)
