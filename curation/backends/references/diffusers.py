"""The `diffusers` synthesizer: a local image-editing pipeline (`diffusers_edit`, e.g.
Qwen-Image-Edit) edits the decoded target frame with the instruction, on the worker's GPU when
it has one. The pipeline loads in `open()`; a batch the pipeline fails on fails all its samples."""

from __future__ import annotations

from curation.backends.diffusers_edit import DiffusersEditConfig, DiffusersEditor
from curation.backends.models import model_ref
from curation.backends.references.base import ReferenceInput, ReferenceSynthesizer, Synthesized
from curation.core.stage import ModelRef, failure_reason


class DiffusersSynthesizer(ReferenceSynthesizer):
    name = "diffusers"

    def __init__(self, cfg: DiffusersEditConfig):
        self.cfg = cfg
        self._editor: DiffusersEditor | None = None

    def open(self) -> None:
        self._editor = DiffusersEditor(self.cfg)

    def model(self) -> ModelRef:
        return model_ref(self.cfg.model, f"diffusers:{self.cfg.model}")

    def synthesize(self, items: list[ReferenceInput]) -> list[Synthesized]:
        if self._editor is None:
            raise RuntimeError("DiffusersSynthesizer.synthesize before open()")
        try:
            images = self._editor.edit([item.frame for item in items], [item.prompt for item in items])
        except Exception as e:  # noqa: BLE001 - the model failed on the batch: its samples are errors
            return [Synthesized(reason=failure_reason(e)) for _ in items]
        return [Synthesized(image=image) for image in images]

    @property
    def device(self) -> str | None:
        return self._editor.device if self._editor is not None else None

    def close(self) -> None:
        self._editor = None
