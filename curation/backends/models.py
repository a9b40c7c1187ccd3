"""Where a model reference points: a local directory, a Hugging Face hub id, or `tiny:<name>`.

`tiny:<name>` names a tiny, randomly initialised model built from a config on first use and
saved under the cache directory, then loaded through exactly the same `from_pretrained` code path
as a real checkpoint. It exists so the whole pipeline runs offline (CI, laptops without weights);
its outputs are meaningless, and every run that uses one says so loudly (`_run.json`
`random_weights`, the end-of-stage summary).
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from curation.core.stage import ModelRef

log = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"

# name -> "module:function"; the function takes a directory and saves a model (and its
# processor) there with `save_pretrained`. Bump the `-vN` suffix when a builder changes.
TINY_BUILDERS: dict[str, str] = {
    "qwen2-vl": "curation.backends.tiny_vlm:build_tiny_qwen2_vl",
    "grounding-dino": "curation.backends.tiny_vision:build_tiny_grounding_dino",
    "sam2": "curation.backends.tiny_vision:build_tiny_sam2",
    "sam2-video": "curation.backends.video_segment:build_tiny_sam2_video",
    "qwen-image-edit": "curation.backends.diffusers_edit:build_tiny_qwen_image_edit",
    "instruct-pix2pix": "curation.backends.diffusers_edit:build_tiny_instruct_pix2pix",
    "stable-diffusion": "curation.backends.text_to_image:build_tiny_stable_diffusion",
    "clip": "curation.backends.tiny_clip:build_tiny_clip",
    "open-clip": "curation.backends.tiny_clip:build_tiny_open_clip",
}
TINY_VERSION = "v1"


def cache_root() -> Path:
    """`$CURATE_CACHE`, else `~/.cache/curate`: tiny models and the VLM response cache live here."""
    return Path(os.environ.get("CURATE_CACHE") or Path.home() / ".cache" / "curate").expanduser()


def is_random_weights(ref: str) -> bool:
    return ref.startswith(TINY_PREFIX)


def model_ref(ref: str, shown_as: str | None = None) -> ModelRef:
    """How `_run.json` names a model (`shown_as`, e.g. with its backend and endpoint; else the
    reference), with whether its weights are random carried as data."""
    return ModelRef(id=shown_as or ref, random_weights=is_random_weights(ref))


DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"  # what a `device` config option accepts


def pick_device(device: str) -> str:
    """`auto` is the worker's GPU when Ray gave it one (CUDA visible), else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@dataclass(frozen=True)
class ResolvedModel:
    ref: str  # what the config said
    path: str  # what to pass to from_pretrained: a local dir or a hub id
    random_weights: bool


def resolve_model(ref: str) -> ResolvedModel:
    """A config's model reference -> what `from_pretrained` loads. Builds `tiny:` models once
    (a file lock makes concurrent workers wait for the first builder instead of racing it)."""
    if not is_random_weights(ref):
        local = Path(ref).expanduser()
        return ResolvedModel(ref, str(local) if local.exists() else ref, False)
    name = ref[len(TINY_PREFIX):]
    if name not in TINY_BUILDERS:
        raise ValueError(f"unknown tiny model {ref!r}; known: {', '.join(TINY_PREFIX + n for n in TINY_BUILDERS)}")
    target = cache_root() / "models" / "tiny" / f"{name}-{TINY_VERSION}"
    done = target / ".complete"
    if not done.exists():
        from filelock import FileLock

        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if not done.exists():
                module, func = TINY_BUILDERS[name].split(":")
                log.warning("building tiny RANDOM-WEIGHT model %s in %s", ref, target)
                target.mkdir(parents=True, exist_ok=True)
                getattr(importlib.import_module(module), func)(target)
                done.write_text("ok\n")
    return ResolvedModel(ref, str(target), True)
