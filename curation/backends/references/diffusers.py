"""The `diffusers` synthesizer: a local image-editing pipeline (`diffusers_edit`, e.g.
Qwen-Image-Edit, what Kiwi-Edit used) edits the grounded region of the target frame
(`editor_input`: the object's cutout, or the frame with the foreground blanked) with the
instruction, on the worker's GPU when it has one. The pipeline loads in `open()`; a sample whose
input cannot be built fails alone, a batch the pipeline fails on fails all its samples."""

from __future__ import annotations

import numpy as np

from curation.backends.diffusers_edit import DiffusersEditConfig, DiffusersEditor
from curation.backends.models import model_ref
from curation.backends.references.base import ReferenceInput, ReferenceSynthesizer, Synthesized
from curation.backends.references.editor_input import EditorInput
from curation.core.stage import ModelRef, failure_reason


class DiffusersSynthesizer(ReferenceSynthesizer):
    name = "diffusers"

    def __init__(self, cfg: DiffusersEditConfig, editor_input: EditorInput):
        self.cfg = cfg
        self.editor_input = editor_input
        self._editor: DiffusersEditor | None = None

    def open(self) -> None:
        self._editor = DiffusersEditor(self.cfg)

    def model(self) -> ModelRef:
        return model_ref(self.cfg.model, f"diffusers:{self.cfg.model}")

    def generator(self) -> str:
        return self.cfg.model

    def synthesize(self, items: list[ReferenceInput]) -> list[Synthesized]:
        if self._editor is None:
            raise RuntimeError("DiffusersSynthesizer.synthesize before open()")
        out: dict[int, Synthesized] = {}
        images: dict[int, np.ndarray] = {}
        for i, item in enumerate(items):
            try:
                images[i] = self.editor_input.image(item)
            except Exception as e:  # noqa: BLE001 - one bad sample must not fail its batch
                out[i] = Synthesized(reason=failure_reason(e))
        try:
            edited = self._editor.edit(list(images.values()), [items[i].prompt or "" for i in images])
        except Exception as e:  # noqa: BLE001 - the model failed on the batch: its samples are errors
            edited = None
            out.update({i: Synthesized(reason=failure_reason(e)) for i in images})
        if edited is not None:
            out.update({i: Synthesized(image=image) for i, image in zip(images, edited, strict=True)})
        return [out[i] for i in range(len(items))]

    @property
    def device(self) -> str | None:
        return self._editor.device if self._editor is not None else None

    def close(self) -> None:
        self._editor = None
