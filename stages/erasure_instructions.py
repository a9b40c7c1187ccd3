"""erasure_instructions: one erased clip becomes a remove triplet and an add triplet (InstructX App. A.2).

InstructX gives the MLLM the original and the erased video and swaps their roles to get both
instructions. So each clip costs two requests (prompts/erasure_instruction.v1.j2):
- remove: `frames` original frames, then the erased frames at the same indices -> "Remove ...";
- add: the erased frames first, then the original ones -> "Add ...".
The add instruction is written from the frames rather than by rewording the remove one, so it can
say what the object looks like and where it goes.

Each clip becomes two `triplet` rows, ids made from the clip's id and the direction:
`local_remove` (source = the original clip, target = the erased clip) and `local_add` (the
reverse), each naming the other as `twin_id`. Both videos are written once to this stage's media
store and the rows hold their absolute paths in `source_uri` / `target_uri`, as edit datasets'
rows do. The add row also carries what `reference` needs to cut the object out: the original
clip's frame at the mask key frame (`tgt_frame`), its mask (`mask_tgt`) and the mask's box
(`edit_boxes`, labelled with the subject).

Failures: a request that failed after retries (API error, exhausted budget) makes the clip one
`status=error` row under the clip's own id, so `retry_errors=true` redoes both requests (answers
already paid for come back from the response cache). An answer that fails the schema after the
re-ask drops both triplets with `instruction_unparseable`: a remove pair whose add twin is
missing is no longer the pair InstructX trains on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from curation.backends.vlm import VLMError, VLMReply, VLMRequest, VLMUsage
from curation.core import layout, media_store, storage
from curation.core.estimate import SpendEstimate, measured_use
from curation.core.schema import Jpeg, Png
from curation.core.stage import Row, StageError, failure_reason
from curation.media.jpeg import encode_jpeg
from curation.media.video_bytes import MatchedFrames, frames_at, matched_frames
from curation.prompts.erasure import DIRECTIONS, ErasureInstruction
from curation.prompts.templates import PromptTemplate, answering_template, load_template
from curation.regions.roe import decode_mask_png, encode_mask_png
from curation.stages.base.vlm import VLMStage
from curation.stages.ground_edit import EditBox

Direction = Literal["remove", "add"]
CATEGORY: dict[str, str] = {"remove": "local_remove", "add": "local_add"}  # curation.labels.categories


class ErasureInstructionsColumns(BaseModel):
    instruction: str | None = Field(None, description="the VLM's editing instruction for this direction")
    category: str | None = Field(None, description="local_remove or local_add")
    edit_direction: str | None = Field(None, description="remove (original -> erased) or add (erased -> original)")
    twin_id: str | None = Field(None, description="sample_id of the other direction's triplet made from the same clip")
    target_uri: str | None = Field(None, description="absolute path of the target clip's MP4 (source_uri: the source clip's)")
    edit_kind: str | None = Field(None, description="triplet: the source and target are videos")
    num_frames: int | None = Field(None, description="frames in the source clip")
    target_num_frames: int | None = Field(None, description="frames in the target clip")
    instruction_frames: list[int] | None = Field(None, description="clip frame indices the VLM was shown (same in both clips)")
    src_frame: Jpeg | None = Field(None, description="add only: the erased clip's frame at the mask key frame (JPEG): what "
                                                   "score_reference shows as the input")
    tgt_frame: Jpeg | None = Field(None, description="add only: the original clip's frame at the mask key frame (JPEG)")
    mask_tgt: Png | None = Field(None, description="add only: the subject's mask on tgt_frame (PNG 0/255)")
    edit_boxes: list[EditBox] | None = Field(None, description="add only: the mask's box on tgt_frame, labelled with the subject")
    vlm_usage: VLMUsage | None = Field(None, description="this direction's request: tokens, cache hits and estimated USD")


class ErasureInstructions(VLMStage):
    """Two VLM instructions per erased clip, roles swapped: a remove triplet and an add triplet."""

    name: ClassVar[str] = "erasure_instructions"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = ErasureInstructionsColumns
    reads_media: ClassVar[tuple[str, ...]] = ("clip_video", "erased_video", "object_masks")

    template: str = Field("erasure_instruction", description="prompt template name (prompts/); rendered once per direction")
    frames: int = Field(4, ge=1, le=8, description="frames of each clip shown per request (the same indices in both)")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of the frames sent and of tgt_frame")
    max_pixels: int = Field(1 << 26, gt=0, description="image-bomb guard for the clips, checked from their headers")

    @field_validator("template")
    @classmethod
    def _instruction_template(cls, name: str) -> str:
        return answering_template(name, (ErasureInstruction,), "an erasure instruction")

    def templates(self) -> list[PromptTemplate]:
        return [load_template(self.template)]

    def spend_estimate(self, stage_dir: str) -> SpendEstimate:
        """Per input clip, not per manifest row: each triplet records its own request, so the
        measured usage is summed over the two triplets of a clip first."""
        per_clip: dict[str, VLMUsage] = {}
        if layout.manifest_parts(stage_dir):
            table = storage.read_table(stage_dir, columns=["sample_id", "kind", "parent_ids", "vlm_usage"])
            for row in table.to_pylist():
                if row["vlm_usage"]:
                    clip = row["parent_ids"][0] if row["kind"] == "triplet" and row["parent_ids"] else row["sample_id"]
                    per_clip[clip] = per_clip.get(clip, VLMUsage()) + VLMUsage(**row["vlm_usage"])
        source, rows, use = measured_use([u.model_dump() for u in per_clip.values()], self.expected)
        return SpendEstimate(source=source, measured_rows=rows, requests_per_row=use.requests_per_row,
                             prompt_tokens=use.prompt_tokens, completion_tokens=use.completion_tokens,
                             usd_per_request=self.usd_per_request(use.prompt_tokens, use.completion_tokens))

    def process_batch(self, rows: list[Row]) -> list[Row]:
        template = self.templates()[0]
        out: dict[int, list[Row]] = {}
        prepared: dict[int, _Clip] = {}
        for r, row in enumerate(rows):
            try:
                prepared[r] = self._prepare(row)
            except Exception as e:  # noqa: BLE001 - one unreadable clip must not stop the batch
                out[r] = [self.error_row(row, failure_reason(e))]
        asks = [(r, d) for r in prepared for d in DIRECTIONS]

        def request(r: int, direction: Direction, feedback: str | None) -> VLMRequest:
            clip = prepared[r]
            original, erased = clip.images
            images = original + erased if direction == "remove" else erased + original
            text = template.render(direction=direction, subject=rows[r]["subject"], num_frames=len(original), feedback=feedback)
            return VLMRequest(prompt=text, images=images, schema=template.schema, cache_salt=template.hash)

        replies, usage = self.ask([request(r, d, None) for r, d in asks], lambda i, error: request(*asks[i], error))
        answers: dict[int, dict[str, tuple[VLMReply | VLMError, VLMUsage]]] = {r: {} for r in prepared}
        for (r, direction), reply, spent in zip(asks, replies, usage):
            answers[r][direction] = (reply, spent)
        for r, clip in prepared.items():
            out[r] = self._triplets(rows[r], clip, answers[r])
        return [row for r in range(len(rows)) for row in out[r]]

    # ---- before asking ---------------------------------------------------------------------
    def _prepare(self, row: Row) -> _Clip:
        """Both clips stored, the frames each request shows, and the add row's reference inputs."""
        if self._media is None:
            raise StageError("no_media_store: erasure_instructions writes the clips' MP4s to its run's media store; "
                             "run it inside a run (the runner calls bind_run)")
        for column, stage in (("clip_video", "erase"), ("erased_video", "erase"), ("object_masks", "mask_video"),
                              ("subject", "choose_subject")):
            if not row.get(column):
                raise StageError(f"no_{column}: run {stage} first")
        matched = matched_frames(row["clip_video"], row["erased_video"], self.frames, self.max_pixels)
        key = self._key_index(row, matched)
        (key_frame,) = frames_at(row["clip_video"], [key], self.max_pixels)
        (erased_key_frame,) = frames_at(row["erased_video"], [key], self.max_pixels)
        mask_png, box = _key_mask(row["object_masks"][key], key_frame.shape[:2])
        uris = {name: media_store.resolve(self._media.put(row[name], "mp4"), self._media.run_dir)
                for name in ("clip_video", "erased_video")}
        images = ([encode_jpeg(f, self.jpeg_quality) for f in matched.source], [encode_jpeg(f, self.jpeg_quality) for f in matched.target])
        return _Clip(indices=matched.indices, counts=(matched.source_count, matched.target_count), images=images,
                     original_uri=uris["clip_video"], erased_uri=uris["erased_video"],
                     src_frame=encode_jpeg(erased_key_frame, self.jpeg_quality),
                     tgt_frame=encode_jpeg(key_frame, self.jpeg_quality), mask_tgt=mask_png, box=box)

    @staticmethod
    def _key_index(row: Row, matched: MatchedFrames) -> int:
        """The mask key frame as an index into the clip (`mask_key_frame` is the video's frame index)."""
        if row.get("mask_key_frame") is None:
            raise StageError("no_mask_key_frame: run mask_video first")
        key = int(row["mask_key_frame"]) - int(row.get("start_frame") or 0)
        frames = min(matched.source_count, len(row["object_masks"]))
        if not 0 <= key < frames:
            raise StageError(f"bad_mask_key_frame: {row['mask_key_frame']} is frame {key} of a {frames}-frame clip")
        return key

    # ---- after asking ----------------------------------------------------------------------
    def _triplets(self, row: Row, clip: _Clip, answers: dict[str, tuple[VLMReply | VLMError, VLMUsage]]) -> list[Row]:
        failed = next(((d, a[0]) for d, a in answers.items() if isinstance(a[0], VLMError)), None)
        if failed is not None:
            spent = answers["remove"][1] + answers["add"][1]
            return [self.error_row(row, f"{failed[1].reason} ({failed[0]} request)", vlm_usage=spent.model_dump())]
        ids = {d: self.child_row(row, kind="triplet", span=("erasure", d))["sample_id"] for d in DIRECTIONS}
        unparsed = next(((d, a[0]) for d, a in answers.items() if a[0].parsed is None), None)
        out = []
        for direction, twin in (("remove", "add"), ("add", "remove")):
            reply, spent = answers[direction]
            forward = direction == "remove"  # the original clip is the source
            source, target = (clip.original_uri, clip.erased_uri) if forward else (clip.erased_uri, clip.original_uri)
            source_frames, target_frames = clip.counts if forward else clip.counts[::-1]
            columns: dict[str, Any] = {
                "source_uri": source, "target_uri": target, "edit_kind": "triplet", "category": CATEGORY[direction],
                "edit_direction": direction, "twin_id": ids[twin], "instruction": reply.parsed.instruction if reply.parsed else None,
                "num_frames": source_frames, "target_num_frames": target_frames, "instruction_frames": clip.indices,
                "vlm_usage": spent.model_dump(), "src_frame": None, "tgt_frame": None, "mask_tgt": None, "edit_boxes": None,
            }
            if direction == "add":
                box = EditBox(image="edited", label=row["subject"], box=clip.box, answer=clip.box)
                columns.update(src_frame=clip.src_frame, tgt_frame=clip.tgt_frame, mask_tgt=clip.mask_tgt,
                               edit_boxes=[box.model_dump()])
            child = self.child_row(row, kind="triplet", span=("erasure", direction), **columns)
            if unparsed is not None:
                child.update(status="dropped", reason=f"instruction_unparseable: {unparsed[0]}: {unparsed[1].error}")
            out.append(child)
        return out


@dataclass(frozen=True)
class _Clip:
    """One clip ready to ask about: the frames shown, where its videos are stored, the add row's reference inputs."""

    indices: list[int]  # clip frame indices shown, the same in both clips
    counts: tuple[int, int]  # frames in the original clip, in the erased clip
    images: tuple[list[bytes], list[bytes]]  # (original JPEGs, erased JPEGs) at `indices`
    original_uri: str
    erased_uri: str
    src_frame: bytes
    tgt_frame: bytes
    mask_tgt: bytes
    box: list[float]


def _key_mask(mask_png: bytes, frame_hw: tuple[int, ...]) -> tuple[bytes, list[float]]:
    """The key frame's mask as `reference` needs it (the frame's size) and its box [x0, y0, x1, y1]
    in pixels. H.264 drops an odd last row or column (`encode_h264`), which the masks, made on the
    decoded source frames, still have: that one row or column is cut off here too."""
    try:
        mask = decode_mask_png(mask_png) > 0
    except ValueError as e:
        raise StageError(f"decode_failed: object_masks: {e}") from e
    height, width = frame_hw[:2]
    if mask.shape != (height, width):
        if not (0 <= mask.shape[0] - height <= 1 and 0 <= mask.shape[1] - width <= 1):
            raise StageError(f"mask_size_mismatch: mask {mask.shape[::-1]} vs frame {(width, height)}")
        mask = mask[:height, :width]
        mask_png = encode_mask_png(mask)
    ys, xs = np.nonzero(mask)
    if not len(xs):
        raise StageError("empty_mask: the subject's mask at mask_key_frame has no foreground pixel")
    return mask_png, [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
