"""The `diffusers` remover: a local inpainting pipeline (`AutoPipelineForInpainting`, e.g. a
Stable Diffusion or FLUX inpainting checkpoint, or an object remover's weights packaged as one)
repaints each frame's dilated hole, guided by `prompt` (a description of plain background).

Frame by frame: each frame is inpainted on its own, so nothing ties frame t's fill to frame
t+1's, and the fill may flicker between frames; temporal consistency is not guaranteed. A video
remover with its own temporal model needs its own backend. Only the hole changes: the pipeline's
output is pasted back into the frame under the dilated mask, since it may alter (and its VAE
does soften) the whole image.

Every frame gets a CPU generator seeded with `seed`, so a frame's fill does not depend on the
batch it landed in (a resumed run reproduces it). The sampling options are `DiffusersEditConfig`'s
(curation/backends/diffusers_edit.py), with the same rule: an option set that the pipeline's
`__call__` does not take is an error at load time.
"""

from __future__ import annotations

import inspect

import cv2
import numpy as np

from curation.backends.diffusers_edit import OPTIONAL_CALL_ARGS, DiffusersEditConfig
from curation.backends.models import model_ref, pick_device, resolve_model
from curation.backends.removal.base import ObjectRemover, RemovalFailed, check_clip, keep_outside
from curation.backends.removal.temporal import dilate_masks
from curation.core.stage import ModelRef, failure_reason

# Latent diffusion pipelines need sides divisible by their VAE's downscale (8 for SD and FLUX).
SIDE_MULTIPLE = 8


class DiffusersRemover(ObjectRemover):
    name = "diffusers"

    def __init__(self, cfg: DiffusersEditConfig, prompt: str, dilate_px: int):
        self.cfg = cfg
        self.prompt = prompt
        self.dilate_px = dilate_px
        self.device: str | None = None
        self._pipe = None
        self._call_args: dict = {}

    def open(self) -> None:
        import torch
        from diffusers import AutoPipelineForInpainting

        self.device = pick_device(self.cfg.device)
        resolved = resolve_model(self.cfg.model)
        dtype = self.cfg.dtype if self.cfg.dtype != "auto" else ("bfloat16" if self.device.startswith("cuda") else "float32")
        pipe = AutoPipelineForInpainting.from_pretrained(resolved.path, dtype=getattr(torch, dtype)).to(self.device)
        pipe.set_progress_bar_config(disable=True)
        accepted = inspect.signature(type(pipe).__call__).parameters
        for needed in ("image", "mask_image", "prompt", "num_inference_steps", "generator", "output_type"):
            if needed not in accepted:
                raise ValueError(f"{type(pipe).__name__}.__call__ takes no {needed}=; not an inpainting pipeline")
        unsupported = [arg for arg in OPTIONAL_CALL_ARGS if getattr(self.cfg, arg) is not None and arg not in accepted]
        if unsupported:
            raise ValueError(f"{type(pipe).__name__} does not take {', '.join(unsupported)}; set them to null")
        self._call_args = {arg: getattr(self.cfg, arg) for arg in OPTIONAL_CALL_ARGS if getattr(self.cfg, arg) is not None}
        self._sizes_from_input = self.cfg.working_size == "input" and {"height", "width"} <= accepted.keys()
        self._pipe = pipe

    def model(self) -> ModelRef:
        return model_ref(self.cfg.model, f"diffusers:{self.cfg.model}")

    def remove(self, frames: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        if self._pipe is None:
            raise RuntimeError("DiffusersRemover.remove before open()")
        check_clip(frames, masks)
        holes = dilate_masks(masks, self.dilate_px)
        out: list[np.ndarray] = []
        try:
            for start in range(0, len(frames), self.cfg.batch_size):
                chunk = range(start, min(start + self.cfg.batch_size, len(frames)))
                filled = self._inpaint([frames[t] for t in chunk], [holes[t] for t in chunk])
                out.extend(keep_outside(frames[t], image, holes[t]) for t, image in zip(chunk, filled))
        except Exception as e:  # the model failed on this clip: its row is the error, not the run's
            raise RemovalFailed(f"removal_failed: {failure_reason(e)}") from e
        return out

    def _inpaint(self, frames: list[np.ndarray], holes: list[np.ndarray]) -> list[np.ndarray]:
        import torch
        from PIL import Image

        height, width = frames[0].shape[:2]
        kwargs = dict(self._call_args)
        if "negative_prompt" in kwargs:
            kwargs["negative_prompt"] = [kwargs["negative_prompt"]] * len(frames)
        images = [Image.fromarray(f) for f in frames]
        mask_images = [Image.fromarray(np.where(h, 255, 0).astype(np.uint8)) for h in holes]
        if self._sizes_from_input:
            work_h, work_w = max(SIDE_MULTIPLE, height - height % SIDE_MULTIPLE), max(SIDE_MULTIPLE, width - width % SIDE_MULTIPLE)
            kwargs.update(height=work_h, width=work_w)
        result = self._pipe(
            prompt=[self.prompt] * len(frames), image=images, mask_image=mask_images,
            num_inference_steps=self.cfg.steps, output_type="np",
            generator=[torch.Generator("cpu").manual_seed(self.cfg.seed) for _ in frames], **kwargs,
        )
        filled = []
        for image in result.images:  # (h, w, 3) float in [0, 1]
            image = (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)
            if image.shape[:2] != (height, width):
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
            filled.append(image)
        return filled

    def close(self) -> None:
        self._pipe = None
