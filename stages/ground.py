"""Ground: region-of-edit masks for each annotated turn of a session (VINCIE).

For turn k (frame k -> frame k+1) the changed entities' descriptions are searched with Grounding
DINO: an entity's frame-1 description in frame k, its frame-2 description in frame k+1, and an
entity absent from a frame is not searched there. SAM2 turns the boxes into masks, and
`curation.regions.roe` unions them into one mask per frame. All frames of all sessions in a batch go
through each model together, in the backends' chunks, rather than one call per frame.

Outcomes per turn: `found`; `none` (no changed entity, or nothing found in either frame: a valid
outcome, VINCIE uses RoE maps only some of the time); `unannotated` (the turn has no annotation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field, PrivateAttr

from curation.backends.detect import Detection as FoundBox
from curation.backends.detect import DetectorConfig, GroundingDinoDetector, clean_query
from curation.backends.models import model_ref
from curation.backends.segment import BoxSegmenter, SegmenterConfig
from curation.core.schema import Png
from curation.core.stage import ModelRef, Resources, Row, Stage, StageError, failure_reason
from curation.media.jpeg import decode_image
from curation.prompts.transition import Turn
from curation.regions.roe import FrameRegions, fuse_turn


class Detection(BaseModel):
    frame: Literal["src", "tgt"] = Field(description="src: the turn's frame k; tgt: frame k+1")
    entity: str = Field(description="entity id from the annotation (char1, obj2, ...)")
    query: str = Field(description="the description searched for (lower case, as sent to the detector)")
    label: str = Field(description="the query's tokens the detector matched above text_threshold")
    score: float = Field(description="the box's best token probability within its query")
    box: list[float] = Field(description="x0, y0, x1, y1 in pixels of the stored frame")


class TurnRoE(BaseModel):
    turn: int = Field(description="turn index k: frame k -> frame k+1")
    outcome: Literal["found", "none", "unannotated"] = Field(description="found | none (nothing to find or nothing found) | unannotated")
    queries: list[str] = Field(description="distinct descriptions searched in either frame")
    detections: list[Detection] = Field(description="boxes found in both frames")
    src_mask: Png | None = Field(None, description="RoE of frame k: PNG, 0/255, frame size; None unless found")
    tgt_mask: Png | None = Field(None, description="RoE of frame k+1: PNG, 0/255, frame size; None unless found")


class GroundColumns(BaseModel):
    roe: list[TurnRoE] | None = Field(
        None, description="per turn: Grounding DINO boxes of the changed entities, SAM2 masks fused into source/target RoE masks"
    )


@dataclass
class _Search:
    """One frame of one turn to search: the entities present there and their queries."""

    frame: int
    entities: list[str]
    queries: list[str]
    found: list[FoundBox] = field(default_factory=list)
    masks: list[np.ndarray | None] = field(default_factory=list)


@dataclass
class _TurnPlan:
    index: int
    annotated: bool
    src: _Search
    tgt: _Search


@dataclass
class _SessionPlan:
    row: dict[str, Any]
    height: int
    width: int
    images: dict[int, np.ndarray]  # frame index -> RGB, only the frames searched
    turns: list[_TurnPlan]


class Ground(Stage):
    """Grounding DINO boxes + SAM2 masks for each turn's changed entities, fused into RoE masks."""

    name: ClassVar[str] = "ground"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = GroundColumns
    reads_media: ClassVar[tuple[str, ...]] = ("frames",)

    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="Grounding DINO: model, thresholds, batch size, device")
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig,
                                       description="SAM2 or SAM3 (family): model, batch size, mask threshold, device")
    resources: Resources = Field(default_factory=lambda: Resources(concurrency=(1, 1)), description="Ray resources per worker")

    _detector: GroundingDinoDetector | None = PrivateAttr(default=None)
    _segmenter: BoxSegmenter | None = PrivateAttr(default=None)

    def setup(self) -> None:
        self._detector = GroundingDinoDetector(self.detector)
        self._segmenter = BoxSegmenter(self.segmenter)

    def uses_gpu(self) -> bool:
        return True

    def model_devices(self) -> dict[str, str]:
        if self._detector is None or self._segmenter is None:
            return {}
        return {"detector": self._detector.device, "segmenter": self._segmenter.device}

    def models(self) -> dict[str, ModelRef]:
        return {"detector": model_ref(self.detector.model), "segmenter": model_ref(self.segmenter.model)}

    # ---- work ------------------------------------------------------------------------------
    def process_batch(self, rows: list[Row]) -> list[Row]:
        plans: list[tuple[int, _SessionPlan]] = []
        results: dict[int, dict[str, Any]] = {}
        for i, row in enumerate(rows):
            try:
                plans.append((i, plan_session(row)))
            except Exception as e:  # noqa: BLE001 - a bad sample must not stop the run
                results[i] = self.error_row(row, failure_reason(e))
        try:
            self.run_models([p for _, p in plans])
            results.update({i: self._session_row(p) for i, p in plans})
        except Exception:  # noqa: BLE001 - one bad session must not fail its batch: redo one by one
            for i, p in plans:
                try:
                    self.run_models([p])
                    results[i] = self._session_row(p)
                except Exception as e:  # noqa: BLE001
                    results[i] = self.error_row(p.row, failure_reason(e))
        out = [results[i] for i in range(len(rows))]
        return out

    def run_models(self, plans: list[_SessionPlan]) -> None:
        """Detect in every searched frame of every session at once, then segment every box, one
        SAM2 image per (session, frame) even when two turns search the same frame."""
        searches = [(p, s) for p in plans for t in p.turns for s in (t.src, t.tgt) if s.queries]
        for _, s in searches:
            s.found, s.masks = [], []  # a retry after a failed batch starts clean
        found = self._detector.detect([p.images[s.frame] for p, s in searches], [s.queries for _, s in searches])
        per_frame: dict[tuple[int, int], list[_Search]] = {}
        for (p, s), boxes in zip(searches, found):
            s.found = boxes
            if boxes:
                per_frame.setdefault((id(p), s.frame), []).append(s)
        keys = list(per_frame)
        session = {id(p): p for p in plans}
        masks = self._segmenter.segment(
            [session[pid].images[frame] for pid, frame in keys],
            [[d.box for s in per_frame[k] for d in s.found] for k in keys],
        )
        for key, frame_masks in zip(keys, masks):
            at = 0
            for s in per_frame[key]:
                # An empty SAM2 mask says nothing about the region: fuse_turn then uses the box.
                s.masks = [m if m.any() else None for m in frame_masks[at:at + len(s.found)]]
                at += len(s.found)

    def _session_row(self, plan: _SessionPlan) -> dict[str, Any]:
        return self.enrich(plan.row, roe=[self._turn_roe(t, plan.height, plan.width).model_dump() for t in plan.turns])

    @staticmethod
    def _turn_roe(turn: _TurnPlan, height: int, width: int) -> TurnRoE:
        if not turn.annotated:
            return TurnRoE(turn=turn.index, outcome="unannotated", queries=[], detections=[])
        queries = list(dict.fromkeys(turn.src.queries + turn.tgt.queries))
        detections = [
            Detection(frame=side, entity=s.entities[d.query], query=s.queries[d.query], label=d.label,
                      score=d.score, box=list(d.box))
            for side, s in (("src", turn.src), ("tgt", turn.tgt)) for d in s.found
        ]
        fused = fuse_turn(FrameRegions([d.box for d in turn.src.found], turn.src.masks),
                          FrameRegions([d.box for d in turn.tgt.found], turn.tgt.masks), height, width)
        return TurnRoE(turn=turn.index, outcome=fused.outcome, queries=queries, detections=detections,
                       src_mask=fused.src_mask, tgt_mask=fused.tgt_mask)


# ---- planning (no models) -------------------------------------------------------------------


def plan_session(row: dict[str, Any]) -> _SessionPlan:
    """What to search in which frame for every turn of a session, with those frames decoded."""
    turns = [Turn.model_validate(t) for t in row.get("turns") or []]
    if not turns:
        raise StageError("no_turns: run annotate first")
    frames = row.get("frames") or []
    plans = []
    for turn in turns:
        if not 0 <= turn.index < len(frames) - 1:
            raise StageError(f"bad_turn: turn {turn.index} needs frames {turn.index} and {turn.index + 1} of {len(frames)}")
        plans.append(plan_turn(turn))
    images = {s.frame: decode_image(frames[s.frame], f"frame {s.frame}") for t in plans for s in (t.src, t.tgt) if s.queries}
    height, width = row.get("frame_height"), row.get("frame_width")
    if height is None or width is None:
        height, width = decode_image(frames[0], "frame 0").shape[:2]
    for k, image in images.items():
        if image.shape[:2] != (height, width):
            raise StageError(f"frame_size_mismatch: frame {k} is {image.shape[1]}x{image.shape[0]}, row says {width}x{height}")
    return _SessionPlan(row=row, height=int(height), width=int(width), images=images, turns=plans)


def plan_turn(turn: Turn) -> _TurnPlan:
    """The queries of one turn per frame. Two entities with the same description in a frame are
    one query to the detector, and its boxes are credited to the first of them."""
    annotation = turn.parsed()
    src, tgt = _Search(turn.index, [], []), _Search(turn.index + 1, [], [])
    if annotation is None:
        return _TurnPlan(turn.index, False, src, tgt)
    for entity, before, after in annotation.changed_entities():
        for search, description in ((src, before), (tgt, after)):
            query = clean_query(description or "")
            if query:  # absent from this frame (or described by nothing): not searched there
                search.entities.append(entity)
                search.queries.append(query)
    return _TurnPlan(turn.index, True, src, tgt)
