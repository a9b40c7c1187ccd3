"""Box-prompted segmentation with SAM2 or SAM3 (transformers), batched across images.

`segmenter.family` picks the model: `sam2` (`Sam2Model`, e.g. facebook/sam2.1-hiera-tiny) or
`sam3` (`Sam3TrackerModel`, the box/point-prompted half of SAM 3, e.g. facebook/sam3), which
Kiwi-Edit §3.1 uses to refine its grounding boxes into masks. The two share the prompt encoder and
mask decoder interface (`Sam3TrackerProcessor` is `Sam2Processor`'s), so one adapter serves both.

`Sam2Processor` cannot pad box lists of different lengths across images, so each image's list is
padded by repeating its last box and the extra masks are dropped. The mask decoder treats every
box of an image independently, so the padding changes no real mask; one forward pass then covers
a whole chunk of images however many boxes each has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.backends.detect import Box
from curation.backends.models import DEVICE_PATTERN, pick_device, resolve_model
from curation.core.config_change import RUN_ONLY

# family -> (transformers model class, processor class, the checkpoint `model_type`s it loads).
# facebook/sam3 is published as one sam3_video checkpoint; Sam3TrackerModel takes its tracker part.
FAMILIES: dict[str, tuple[str, str, frozenset[str]]] = {
    "sam2": ("Sam2Model", "Sam2Processor", frozenset({"sam2"})),
    "sam3": ("Sam3TrackerModel", "Sam3TrackerProcessor", frozenset({"sam3_tracker", "sam3_video"})),
}


class SegmenterConfig(BaseModel):
    """Which SAM, and how its logits become masks."""

    model_config = ConfigDict(extra="forbid")

    family: Literal["sam2", "sam3"] = Field("sam2", description="sam2 (Sam2Model) or sam3 (Sam3TrackerModel: SAM 3, box prompts)")
    model: str = Field("facebook/sam2.1-hiera-tiny", description="hub id, local directory or tiny:sam2; a checkpoint of `family`")
    batch_size: int = Field(8, ge=1, json_schema_extra=RUN_ONLY, description="images per forward pass (all boxes of an image go together)")
    mask_threshold: float = Field(0.0, description="mask logit above which a pixel is inside (SAM's own 0.0)")
    device: str = Field("auto", pattern=DEVICE_PATTERN, json_schema_extra=RUN_ONLY,
                        description="auto (CUDA when the worker has a GPU), cpu, cuda or cuda:N")


class BoxSegmenter:
    """Loads once, then `segment` returns one mask per box at each image's own size."""

    def __init__(self, cfg: SegmenterConfig):
        import transformers

        model_class, processor_class, model_types = FAMILIES[cfg.family]
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        path = resolve_model(cfg.model).path
        # A checkpoint of the other family would load with its weights left random (only a warning).
        model_type = transformers.PretrainedConfig.get_config_dict(path)[0].get("model_type")
        if model_type not in model_types:
            raise ValueError(f"segmenter.model {cfg.model!r} is a {model_type!r} checkpoint, not one of family "
                             f"{cfg.family!r} ({', '.join(sorted(model_types))}): set segmenter.family to match")
        self.processor = getattr(transformers, processor_class).from_pretrained(path)
        self.model = getattr(transformers, model_class).from_pretrained(path).to(self.device).eval()

    def segment(self, images: list[np.ndarray], boxes: Sequence[Sequence[Box]]) -> list[np.ndarray]:
        """(n_boxes, H, W) bool masks per image (RGB uint8). Images without boxes get (0, H, W)
        and cost no forward pass."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box lists")
        masks = [np.zeros((0, *im.shape[:2]), dtype=bool) for im in images]
        todo = [i for i, b in enumerate(boxes) if len(b)]
        for start in range(0, len(todo), self.cfg.batch_size):
            chunk = todo[start:start + self.cfg.batch_size]
            for i, m in zip(chunk, self._forward([images[i] for i in chunk], [list(boxes[i]) for i in chunk])):
                masks[i] = m
        return masks

    def _forward(self, images: list[np.ndarray], boxes: list[list[Box]]) -> list[np.ndarray]:
        import torch

        most = max(len(b) for b in boxes)
        padded = [[list(map(float, box)) for box in b] + [list(map(float, b[-1]))] * (most - len(b)) for b in boxes]
        inputs = self.processor(images=images, input_boxes=padded, input_data_format="channels_last", return_tensors="pt")
        original_sizes = inputs["original_sizes"]
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs, multimask_output=False)
        logits = outputs.pred_masks.float().cpu()  # (B, most, 1, h, w) low-resolution mask logits
        real = [logits[i, : len(b)] for i, b in enumerate(boxes)]  # drop the padding before upsampling
        full = self.processor.post_process_masks(real, original_sizes, mask_threshold=self.cfg.mask_threshold, binarize=True)
        return [m[:, 0].numpy() for m in full]  # (n_boxes, H, W) bool each, no copy


Sam2Segmenter = BoxSegmenter  # its name before SAM3 (bench/ still uses it)
