"""Ingest: probe each source with PyAV and describe it; unusable files become error rows.

A source row from an edit-dataset adapter (`ingest.adapter=...`) carries a `target_uri` too: then
both media are probed, and the row becomes a `pair` (two images) or a `triplet` (two videos).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, Field, create_model

from curation.core import layout, storage
from curation.core.stage import SourceStage, StageError
from curation.core.summary import format_counts
from curation.media.probe import VideoInfo, probe_video
from curation.sources.edit_datasets import list_edit_sources, load_adapter
from curation.sources.files import list_sources

LISTING = "_listing.json"  # an adapter's listing counts (rows skipped, categories), beside the listing

# The target's properties that later stages and the shard writer need.
TARGET_FIELDS = ("fps", "num_frames", "width", "height", "duration_s", "codec")

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
)


class Ingest(SourceStage):
    """Probe sources (fps, VFR, frame count, display size, codec); edits probe source and target; bad files get a reason."""

    name: ClassVar[str] = "ingest"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = IngestColumns

    adapter: str | None = Field(None, description="edit-dataset adapter (manifests/adapters/<name>.yaml or a YAML path): input is "
                                                  "then that dataset's root")
    max_pixels: int = Field(gt=0, description="image-bomb guard: largest width*height accepted, checked from the header before decoding")
    scan_packets: int = Field(gt=0, description="demux at most this many packets per video to count frames and detect "
                                                "VFR/truncation (no decoding)")

    def list_sources(self, spec: str | None, listing_dir: str) -> pa.Table:
        """Files, a glob or a source manifest; with an adapter, an edit dataset's root."""
        if self.adapter is None:
            return list_sources(spec)
        sources, listing = list_edit_sources(spec, load_adapter(self.adapter))
        storage.write_json_atomic(storage.join(listing_dir, LISTING), listing.model_dump())
        return sources

    def process(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        if row.get("target_uri"):
            return [self._edit_row(row)]
        info = probe_video(row["source_uri"], self.max_pixels, scan_packets=self.scan_packets)
        return [self.child_row(row, kind="video", span=None, **info.model_dump())]

    def run_extra(self, stage_dir: str) -> dict[str, Any]:
        """An adapter's listing counts (rows skipped, categories, unknown category names)."""
        uri = storage.join(layout.input_dir(stage_dir), LISTING)
        return {"listing": storage.read_json(uri)} if storage.exists(uri) else {}

    @classmethod
    def result_notes(cls, extra: dict[str, Any]) -> list[str]:
        listing = extra.get("listing")
        if not listing:
            return []
        skipped = listing.get("skipped") or {}
        notes = [f"adapter {listing.get('dataset')}: {listing.get('rows_listed')} edits listed from "
                 f"{listing.get('rows_read')} metadata rows; skipped {sum(skipped.values())} {format_counts(skipped)}; "
                 f"by category {format_counts(listing.get('by_category') or {})}"]
        if listing.get("unknown_categories"):
            notes.append(f"[yellow]categories no mapping knows (listed as other):[/] {format_counts(listing['unknown_categories'])}")
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
        return self.child_row(row, kind=kind, span=None, **columns)

    def _probe(self, uri: str, side: str) -> VideoInfo:
        try:
            return probe_video(uri, self.max_pixels, scan_packets=self.scan_packets)
        except StageError as e:
            raise StageError(f"{e.reason} ({side})") from e
