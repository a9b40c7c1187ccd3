"""The `api` synthesizer: an image-editing API (OpenAI images edit or Gemini image output) is sent
the stored target frame with the edit instruction, through `image_edit`'s editors, so the
response cache, retries, rate limits and the stage's spend budget apply to every call."""

from __future__ import annotations

from curation.backends.budget import Budget
from curation.backends.image_edit import BAD_OUTPUT, ImageEditConfig, ImageEditor, ImageEditRequest, make_image_editor
from curation.backends.models import model_ref
from curation.backends.references.base import ReferenceInput, ReferenceSynthesizer, Synthesized
from curation.backends.usage import VLMError
from curation.core.stage import ModelRef, StageError
from curation.media.jpeg import decode_image


class ApiSynthesizer(ReferenceSynthesizer):
    name = "api"

    def __init__(self, cfg: ImageEditConfig, budget: Budget | None = None):
        self.cfg = cfg
        self.budget = budget  # shared by every worker of the stage (a ledger), or None: no cap
        self._editor: ImageEditor | None = None

    def open(self) -> None:
        """Create the editor and its client (a failure to connect is only logged: each request retries it)."""
        self._editor = make_image_editor(self.cfg, self.budget)
        self._editor.open()

    def model(self) -> ModelRef:
        return model_ref(self.cfg.model, f"api:{self.cfg.backend}:{self.cfg.model}")

    def synthesize(self, items: list[ReferenceInput]) -> list[Synthesized]:
        if self._editor is None:
            raise RuntimeError("ApiSynthesizer.synthesize before open()")
        replies = self._editor.edit_many(
            [ImageEditRequest(prompt=item.prompt, image=item.frame_file, cache_salt=item.cache_salt) for item in items])
        out = []
        for reply in replies:
            if isinstance(reply, VLMError):
                out.append(Synthesized(reason=reply.reason, usage=reply.usage))
                continue
            try:
                out.append(Synthesized(image=decode_image(reply.image), usage=reply.usage))
            except StageError:
                out.append(Synthesized(reason=f"{BAD_OUTPUT}: the API's image does not decode", usage=reply.usage))
        return out

    def close(self) -> None:
        if self._editor is not None:
            self._editor.close()
            self._editor = None
