"""The `api` remover: each frame is sent to an image-editing API (OpenAI `images.edit`, which takes
a mask) with its dilated hole marked transparent in the mask and `prompt` as the instruction,
through `image_edit`'s editor, so the response cache, retries, rate limits and the stage's spend
budget apply to every call.

Frame by frame, like the `diffusers` remover: nothing ties one frame's fill to the next, so the
fill may flicker; temporal consistency is not guaranteed. The returned image is resized to the
frame's size and pasted in under the hole only (the API may redraw the whole image). One frame
that fails fails its clip, after the clip's other frames were paid for: their cost is reported.
"""

from __future__ import annotations

import cv2
import numpy as np

from curation.backends.budget import Budget
from curation.backends.image_edit import BAD_OUTPUT, EditorClient, ImageEditConfig, ImageEditRequest
from curation.backends.removal.base import ObjectRemover, RemovalFailed, check_clip, keep_outside
from curation.backends.removal.temporal import dilate_masks
from curation.backends.usage import VLMError, VLMUsage
from curation.core.stage import StageError
from curation.media.jpeg import decode_image


class ApiRemover(EditorClient, ObjectRemover):
    name = "api"

    def __init__(self, cfg: ImageEditConfig, prompt: str, dilate_px: int, budget: Budget | None = None):
        if cfg.backend != "openai":
            raise ValueError(f"the api remover needs an API that takes a mask (openai images.edit), not {cfg.backend}")
        super().__init__(cfg, budget)
        self.prompt = prompt
        self.dilate_px = dilate_px

    def remove(self, frames: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        if self._editor is None:
            raise RuntimeError("ApiRemover.remove before open()")
        check_clip(frames, masks)
        holes = dilate_masks(masks, self.dilate_px)
        requests = [ImageEditRequest(prompt=self.prompt, image=encode_png(frame), mask=edit_mask_png(hole))
                    for frame, hole in zip(frames, holes)]
        replies = self._editor.edit_many(requests)
        self.last_usage = sum((reply.usage for reply in replies), VLMUsage())
        out = []
        for t, reply in enumerate(replies):
            if isinstance(reply, VLMError):
                raise RemovalFailed(f"{reply.reason} (frame {t})", self.last_usage)
            try:
                image = decode_image(reply.image)
            except StageError:
                raise RemovalFailed(f"{BAD_OUTPUT}: the API's image for frame {t} does not decode", self.last_usage) from None
            height, width = frames[t].shape[:2]
            if image.shape[:2] != (height, width):
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
            out.append(keep_outside(frames[t], image, holes[t]))
        return out

    def close(self) -> None:
        if self._editor is not None:
            self._editor.close()
            self._editor = None


def encode_png(frame: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoder refused the frame")
    return buf.tobytes()


def edit_mask_png(hole: np.ndarray) -> bytes:
    """images.edit's mask: an RGBA PNG, fully transparent (alpha 0) where the API may paint and
    opaque elsewhere."""
    rgba = np.zeros((*hole.shape, 4), np.uint8)
    rgba[..., 3] = np.where(hole, 0, 255)
    ok, buf = cv2.imencode(".png", rgba)
    if not ok:
        raise ValueError("PNG encoder refused the mask")
    return buf.tobytes()
