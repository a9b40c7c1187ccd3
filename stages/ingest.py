"""Ingest: probe each source video with PyAV and describe it; unusable files become error rows."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field, create_model

from curation.media.probe import VideoInfo, probe_video
from curation.stage import Stage

# Every probed property is a column; all nullable, since error rows carry none of them.
IngestColumns: type[BaseModel] = create_model(
    "IngestColumns",
    **{
        name: (info.annotation | None, Field(None, description=info.description))
        for name, info in VideoInfo.model_fields.items()
    },
)


class Ingest(Stage):
    """Probe source videos (fps, VFR, frame count, display size, codec); bad files get a reason."""

    name: ClassVar[str] = "ingest"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = IngestColumns

    max_pixels: int = Field(gt=0, description="image-bomb guard: largest width*height accepted, checked from the header before decoding")
    scan_packets: int = Field(gt=0, description="demux at most this many packets per video to count frames and detect VFR/truncation (no decoding)")
    fragment_size: int = Field(gt=0, description="sources per input fragment when the runner lists sources (the unit of resume)")

    def process(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        info = probe_video(row["source_uri"], self.max_pixels, scan_packets=self.scan_packets)
        return [self.child_row(row, kind="video", span=None, **info.model_dump())]
