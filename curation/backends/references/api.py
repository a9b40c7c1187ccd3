"""The `api` synthesizer: an image-editing API (OpenAI images edit or Gemini image output) is sent
the grounded region of the target frame (`editor_input`: the object's cutout, or the frame with the
foreground blanked) as a PNG with the edit instruction, through `image_edit`'s editors, so the
response cache, retries, rate limits and the stage's spend budget apply to every call."""

from __future__ import annotations

from curation.backends.budget import Budget
from curation.backends.image_edit import (
    BAD_OUTPUT,
    EditorClient,
    ImageEditConfig,
    ImageEditReply,
    ImageEditRequest,
)
from curation.backends.references.base import ReferenceInput, ReferenceSynthesizer, Synthesized
from curation.backends.references.composite import encode_reference_png
from curation.backends.references.editor_input import EditorInput
from curation.backends.usage import VLMError
from curation.core.stage import StageError, failure_reason
from curation.media.jpeg import decode_image


class ApiSynthesizer(EditorClient, ReferenceSynthesizer):
    name = "api"

    def __init__(self, cfg: ImageEditConfig, editor_input: EditorInput, budget: Budget | None = None):
        super().__init__(cfg, budget)
        self.editor_input = editor_input

    def generator(self) -> str:
        return f"{self.cfg.backend}:{self.cfg.model}"  # the provider first: its terms cover what it made

    def synthesize(self, items: list[ReferenceInput]) -> list[Synthesized]:
        if self._editor is None:
            raise RuntimeError("ApiSynthesizer.synthesize before open()")
        out: dict[int, Synthesized] = {}
        requests: dict[int, ImageEditRequest] = {}
        for i, item in enumerate(items):
            try:  # PNG: the plain area stays exactly one colour, with no JPEG ringing for the editor to copy
                image = encode_reference_png(self.editor_input.image(item))
            except Exception as e:  # noqa: BLE001 - one bad sample must not fail its batch
                out[i] = Synthesized(reason=failure_reason(e))
                continue
            requests[i] = ImageEditRequest(prompt=item.prompt or "", image=image, cache_salt=item.cache_salt)
        for i, reply in zip(requests, self._editor.edit_many(list(requests.values())), strict=True):
            out[i] = self._result(reply)
        return [out[i] for i in range(len(items))]

    @staticmethod
    def _result(reply: ImageEditReply | VLMError) -> Synthesized:
        if isinstance(reply, VLMError):
            return Synthesized(reason=reply.reason, usage=reply.usage)
        try:
            return Synthesized(image=decode_image(reply.image), usage=reply.usage)
        except StageError:
            return Synthesized(reason=f"{BAD_OUTPUT}: the API's image does not decode", usage=reply.usage)

    def close(self) -> None:
        if self._editor is not None:
            self._editor.close()
            self._editor = None
