"""Box-prompted video object segmentation with SAM2's video model (transformers `Sam2VideoModel`).

One call tracks one object through one clip: a box on a key frame conditions SAM2, which then
propagates forward from the key frame to the clip's last frame and backward from it to the clip's
first, so every frame gets a mask however far into the clip the key frame lies. The two passes
share one inference session, so the backward pass also sees the memories the forward pass wrote
(what SAM2's own video predictor does when asked to track both ways).

How the transformers API is driven (read from transformers' `sam2_video` sources):

1. `Sam2VideoProcessor.init_video_session(video=None, ...)` makes an empty session on the chosen
   device and dtype; its `processed_frames` is then a lazy map (below) and its size the clip's.
2. `add_inputs_to_inference_session(frame_idx=key, obj_ids=1, input_boxes=[[box]])` puts the box
   on the key frame (pixel coordinates of the frame as decoded; the processor rescales them).
3. `model(inference_session, frame_idx=key)` runs the conditioned frame once, then
   `propagate_in_video_iterator(start_frame_idx=key)` and the same with `reverse=True` yield one
   `pred_masks` (1, 1, h, w) logit map per frame at the model's mask resolution.
4. `post_process_masks(..., original_sizes=[(H, W)])` upsamples each to the frame and thresholds it.

Long clips: every frame gets its mask, so nothing is subsampled. The caller decodes the clip once
as uint8 RGB at its own size and passes the list; the model's normalised input tensor (3 x S x S
floats, S = 1024 for the real checkpoints, 12 MiB a frame in float32) is made from a frame only
when the model asks for it (`_LazyFrames`), not for the whole clip up front as
`init_video_session(video=...)` would. What grows with clip length is then the uint8 frames
themselves, the boolean masks returned, and SAM2's per-frame tracking state: transformers keeps
every tracked frame's outputs, the largest being its S x S mask logits (2 MiB a frame in bfloat16
at S = 1024) beside its memory features, so about 1 GiB for a 10 s clip at 30 fps.
`offload_state_to_cpu` keeps that state in host memory instead of on the GPU. No chunking is done:
SAM2's memory bank would start afresh at each chunk boundary, which is exactly where a tracked
object is most easily lost.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.backends.models import DEVICE_PATTERN, pick_device, resolve_model
from curation.core.config_change import RUN_ONLY

OBJECT_ID = 1  # one object per session: its id in SAM2's session (any integer would do)


class VideoSegmenterConfig(BaseModel):
    """Which SAM2 video checkpoint, where it runs, and how its logits become masks."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("facebook/sam2.1-hiera-small", description="hub id, local directory or tiny:sam2-video")
    mask_threshold: float = Field(0.0, description="mask logit above which a pixel is inside (SAM2's own 0.0)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", json_schema_extra=RUN_ONLY, description="auto: bfloat16 on CUDA, float32 on the CPU")
    offload_state_to_cpu: bool = Field(False, json_schema_extra=RUN_ONLY,
                                       description="keep SAM2's per-frame tracking state in host memory (long clips on small GPUs)")
    device: str = Field("auto", pattern=DEVICE_PATTERN, json_schema_extra=RUN_ONLY,
                        description="auto (CUDA when the worker has a GPU), cpu, cuda or cuda:N")


class _LazyFrames(Mapping):
    """frame index -> the model's input tensor for that frame, made on demand from the uint8 frame.
    The session reads frames only through `[]` and `len`, so this stands in for its dict."""

    def __init__(self, frames: Sequence[np.ndarray], video_processor: Any, dtype: Any):
        self.frames = frames
        self.video_processor = video_processor
        self.dtype = dtype

    def __getitem__(self, index: int) -> Any:
        clip = self.frames[index][None]  # (1, H, W, 3): a one-frame video
        pixels = self.video_processor(videos=[clip], return_tensors="pt").pixel_values_videos  # (1, 1, 3, S, S)
        return pixels[0, 0].to(self.dtype)  # (3, S, S)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.frames)))


class VideoSegmenter:
    """Loads once; `track` returns one mask per frame of a clip for a box on one of its frames."""

    def __init__(self, cfg: VideoSegmenterConfig):
        import torch
        import transformers

        self.cfg = cfg
        self.device = pick_device(cfg.device)
        path = resolve_model(cfg.model).path
        model_type = transformers.PretrainedConfig.get_config_dict(path)[0].get("model_type")
        if model_type != "sam2_video":
            raise ValueError(f"video segmenter model {cfg.model!r} is a {model_type!r} checkpoint, not sam2_video")
        name = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if self.device.startswith("cuda") else "float32")
        self.dtype = getattr(torch, name)
        self.processor = transformers.Sam2VideoProcessor.from_pretrained(path)
        self.model = transformers.Sam2VideoModel.from_pretrained(path).to(self.device, dtype=self.dtype).eval()

    def track(self, frames: Sequence[np.ndarray], key_frame: int, box: Sequence[float] | None = None,
              mask: np.ndarray | None = None) -> np.ndarray:
        """(T, H, W) bool masks, one per frame in order, for the object given on `frames[key_frame]`
        by a `box` (x0, y0, x1, y1 pixels) or by a `mask` ((H, W) bool, e.g. drawn by hand or
        from an image segmenter). Frames are RGB uint8 (H, W, 3), all the same size."""
        import torch

        if (box is None) == (mask is None):
            raise ValueError("give the object as a box or as a mask, one of the two")

        if not frames:
            raise ValueError("no frames to track through")
        if not 0 <= key_frame < len(frames):
            raise ValueError(f"key frame {key_frame} is outside the clip's {len(frames)} frames")
        height, width = frames[0].shape[:2]
        if any(f.shape[:2] != (height, width) for f in frames):
            raise ValueError("frames of one clip differ in size")
        state_device = "cpu" if self.cfg.offload_state_to_cpu else self.device
        session = self.processor.init_video_session(inference_device=self.device, inference_state_device=state_device,
                                                    video_storage_device="cpu", dtype=self.dtype)
        session.processed_frames = _LazyFrames(frames, self.processor.video_processor, self.dtype)
        session.video_height, session.video_width = height, width
        if mask is not None:
            if mask.shape != (height, width) or not mask.any():
                raise ValueError(f"the key frame's mask must be a non-empty ({height}, {width}) array, got {mask.shape}")
            prompt: dict[str, Any] = {"input_masks": np.asarray(mask, dtype=bool)}
        else:
            prompt = {"input_boxes": [[[float(v) for v in box]]]}
        self.processor.add_inputs_to_inference_session(
            inference_session=session, frame_idx=key_frame, obj_ids=OBJECT_ID, original_size=(height, width), **prompt)
        masks = np.zeros((len(frames), height, width), dtype=bool)
        done = np.zeros(len(frames), dtype=bool)
        with torch.inference_mode():
            self._store(self.model(inference_session=session, frame_idx=key_frame), masks, done, height, width)
            for reverse in (False, True):
                for out in self.model.propagate_in_video_iterator(session, start_frame_idx=key_frame, reverse=reverse):
                    self._store(out, masks, done, height, width)
        if not done.all():  # the API promises every frame between the key frame and both ends
            raise RuntimeError(f"SAM2 returned no mask for frames {np.flatnonzero(~done).tolist()[:5]}")
        return masks

    def _store(self, out: Any, masks: np.ndarray, done: np.ndarray, height: int, width: int) -> None:
        logits = out.pred_masks.float().cpu()  # (1, 1, h, w): one object, one mask, model resolution
        full = self.processor.post_process_masks([logits], original_sizes=[(height, width)],
                                                 mask_threshold=self.cfg.mask_threshold, binarize=True)[0]
        masks[out.frame_idx] = full[0, 0].numpy()  # (H, W) bool
        done[out.frame_idx] = True


def build_tiny_sam2_video(target: Any) -> None:
    """`tiny:sam2-video`: a randomly initialised Sam2VideoModel at 128 px, saved with its processor.

    Sizes follow the tiny image SAM2 (`tiny:sam2`) where they can. Two constraints of transformers'
    video code set the rest: its memory cross-attention takes 64-channel memories (hard-coded), and
    its object-pointer path only handles a hidden size larger than the memory size (it splits each
    pointer into memory-sized tokens), so the hidden size is 128 and the memory 64.
    """
    import torch
    from transformers import (
        Sam2HieraDetConfig,
        Sam2ImageProcessor,
        Sam2VideoConfig,
        Sam2VideoModel,
        Sam2VideoProcessor,
        Sam2VideoVideoProcessor,
        Sam2VisionConfig,
    )

    torch.manual_seed(0)
    hiera = Sam2HieraDetConfig(hidden_size=12, image_size=[128, 128], blocks_per_stage=[1, 1, 1, 1],
                               embed_dim_per_stage=[12, 24, 48, 96], num_attention_heads_per_stage=[1, 1, 1, 1])
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[96, 48, 24, 12],
                              backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]], fpn_hidden_size=128)
    config = Sam2VideoConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config=dict(hidden_size=128, image_size=128, patch_size=16),
        mask_decoder_config=dict(hidden_size=128, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        image_size=128, num_maskmem=3,
        memory_attention_hidden_size=128, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[8, 8],  # 128 px / patch 16
        memory_encoder_hidden_size=128, memory_encoder_output_channels=64, mask_downsampler_embed_dim=128,
        memory_fuser_num_layers=1, memory_fuser_embed_dim=128, memory_fuser_intermediate_dim=64,
    )
    model = Sam2VideoModel(config).eval()
    processor = Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(size={"height": 128, "width": 128}, mask_size={"height": 32, "width": 32}),
        video_processor=Sam2VideoVideoProcessor(size={"height": 128, "width": 128}),
    )
    model.save_pretrained(target)
    processor.save_pretrained(target)
