"""`curate train` config: packaged YAML defaults < group files (`model=`, `encoder=`, `mix=`, `preset=`) < `key=value`.

The same layering as `curate run`, struct mode included, so a typo is an error naming the key.
The merged tree is validated by `TrainConfig`, whose sections each belong to one module.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Literal

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from curation.train.data_config import DataConfig
from curation.train.encoders import EncoderConfig
from curation.train.flow import FlowConfig
from curation.train.model import DIT_SIZES

TRAIN_CONFIG_DIR = Path(str(files("curation") / "config" / "train"))
TRAIN_GROUPS = ("model", "encoder", "mix", "preset")


class TrainConfigError(ValueError):
    """A bad override, an unknown key or an invalid value; the message names it."""


class ModelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: str = Field("tiny", description=f"a named size: {', '.join(DIT_SIZES)}")
    patch_size: tuple[int, int, int] = Field((1, 8, 8), description="(pt, ph, pw) latent voxels per token")
    mlp_ratio: float = Field(4.0, gt=0, description="MLP width / hidden size")


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-4, gt=0, description="AdamW peak learning rate")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(100, ge=0, description="linear warmup steps, then constant")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm (0 = off)")
    ema_decay: float = Field(0.9999, ge=0, lt=1, description="EMA decay of the weights")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output: str = Field(description="run dir: checkpoint.pt, metrics.jsonl, config.yaml, previews/")
    steps: int = Field(gt=0, description="optimizer steps to reach")
    seed: int = Field(0, description="model init, noise and condition dropout")
    resume: bool = Field(True, description="continue from <output>/checkpoint.pt when it exists")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    checkpoint_every: int = Field(500, gt=0)
    log_every: int = Field(10, gt=0)
    preview_every: int = Field(500, ge=0)
    preview_count: int = Field(2, gt=0)
    log_sample_keys: bool = False
    progress: bool = True
    model: ModelOptions
    encoder: EncoderConfig
    data: DataConfig
    flow: FlowConfig
    optim: OptimConfig


def _group(group: str, name: str):
    path = TRAIN_CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (TRAIN_CONFIG_DIR / group).glob("*.yaml"))
        raise TrainConfigError(f"unknown {group} {name!r}; known: {', '.join(known)}")
    return OmegaConf.load(path)


def compose_train(overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Validated config for `curate train` arguments such as `["shards=runs/x/shards", "model=tiny"]`."""
    layers, dotlist = [], []
    for item in overrides:
        if "=" not in item:
            raise TrainConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        if key in TRAIN_GROUPS:
            layers.append(_group(key, value))
        elif key == "shards":
            dotlist.append(f"data.shards={value}")
        else:
            dotlist.append(item)
    base = OmegaConf.load(TRAIN_CONFIG_DIR / "train.yaml")
    OmegaConf.set_struct(base, True)
    try:
        merged = OmegaConf.merge(base, *layers, OmegaConf.from_dotlist(dotlist))
    except ConfigKeyError as e:
        raise TrainConfigError(f"unknown config key: {e.full_key or e} (see curation/config/train/train.yaml)") from e
    except OmegaConfBaseException as e:
        raise TrainConfigError(str(e).splitlines()[0]) from e
    values = OmegaConf.to_container(merged, resolve=True)
    if not values["data"]["shards"]:
        raise TrainConfigError("give the training data: shards=<shards dir, .tar, brace pattern or URLs>")
    values["data"]["regions"] = values["flow"]["region_weight"] != 1.0  # decode edit masks only for the masked loss
    if values["model"]["size"] not in DIT_SIZES:
        raise TrainConfigError(f"unknown model size {values['model']['size']!r}; known: {', '.join(DIT_SIZES)}")
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        raise TrainConfigError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from e
