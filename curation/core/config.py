"""Layered config: packaged YAML defaults, then a pipeline file, then `key=value` overrides.

Struct mode everywhere, so a typo such as `scene_split.min_clip_sec=2` is an error that names the
key instead of a silently ignored new key.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from curation.core.stage import Stage, get_stage_class, stage_names

CONFIG_DIR = Path(str(files("curation") / "config"))


class ConfigError(ValueError):
    """A bad override or an unknown key; the message names it."""


def stage_defaults(name: str) -> DictConfig:
    path = CONFIG_DIR / "stage" / f"{name}.yaml"
    if not path.exists():
        # A plugin stage may ship without a YAML file: its pydantic defaults are its config.
        return OmegaConf.create(get_stage_class(name)().model_dump(mode="json"))
    return OmegaConf.load(path)


def pipelines() -> dict[str, Path]:
    return groups("pipeline")


class AutoChoice(BaseModel):
    """A profile named `auto` that becomes another one once the run has seen the Ray cluster."""

    model_config = ConfigDict(extra="forbid")

    gpus: str  # the profile to use when the cluster has GPUs
    none: str  # ... and when it has none


class GroupSpec(BaseModel):
    """How a config group composes (groups.yaml): a run-level block, or a profile over everything."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["block", "profile"]
    default: str
    auto: AutoChoice | None = None


def group_specs() -> dict[str, GroupSpec]:
    """The config groups `<group>=<name>` selects, from groups.yaml (the code names none)."""
    return {name: GroupSpec.model_validate(spec) for name, spec in OmegaConf.to_container(
        OmegaConf.load(CONFIG_DIR / "groups.yaml")).items()}


def groups(group: str) -> dict[str, Path]:
    return {p.stem: p for p in sorted((CONFIG_DIR / group).glob("*.yaml"))}


def _load_group(group: str, name: str) -> DictConfig:
    known = groups(group)
    if name not in known:
        raise ConfigError(f"unknown {group} {name!r}; known: {', '.join(known)}")
    return OmegaConf.load(known[name])


def _unknown_key(key: str) -> str:
    """One line for a key no config holds, naming its replacement when a stage renamed it."""
    stage, _, option = key.partition(".")
    if stage in stage_names() and option in get_stage_class(stage).renamed_keys:
        return f"unknown config key: {key}: renamed, set {stage}.{get_stage_class(stage).renamed_keys[option]} instead"
    return f"unknown config key: {key}. See `curate stages` and README.md."


def compose(overrides: list[str] | tuple[str, ...] = (), gpus: bool | None = None) -> DictConfig:
    """The resolved config for `curate run` arguments such as `["pipeline=sessions", "input=x"]`.

    Layers, last wins: package defaults (run.yaml, stage/*.yaml, the default of each block group
    such as vlm/local.yaml) < profile groups (`models=tiny`) < block groups chosen on the command
    line (`vlm=openai`) < the pipeline file < `key=value`.

    A profile group chosen as `auto` (groups.yaml's `auto:`) resolves by `gpus`, whether the Ray
    cluster has GPUs: None (not connected yet) applies its `none` profile but keeps the name
    `auto`, so `needs_cluster_facts` tells the caller to connect and compose again.
    """
    specs = group_specs()
    chosen: dict[str, str] = {}
    dotlist = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        if key in specs:
            chosen[key] = value
        else:
            dotlist.append(item)
    try:
        cli = OmegaConf.from_dotlist(dotlist)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides: {e}") from e

    base = OmegaConf.load(CONFIG_DIR / "run.yaml")
    base.stages = []  # the ordered stage list; a pipeline file sets it, `stage=` makes it one long
    for group, spec in specs.items():
        # A block's default file is the key's content; a profile's key records the profile's name.
        base[group] = _load_group(group, spec.default) if spec.kind == "block" else spec.default
    for name in stage_names():
        base[name] = stage_defaults(name)
    OmegaConf.set_struct(base, True)
    for name in stage_names():  # custom resource names are the user's own: any key may be set
        if "custom_resources" in base[name].get("resources", {}):
            OmegaConf.set_struct(base[name].resources.custom_resources, False)

    layers = []
    for group, spec in specs.items():
        if spec.kind == "profile":
            profile = chosen.get(group, spec.default)
            recorded = profile
            if profile == "auto" and spec.auto is not None:
                profile = spec.auto.gpus if gpus else spec.auto.none
                recorded = "auto" if gpus is None else profile
            layers += [_load_group(group, profile), OmegaConf.create({group: recorded})]
    for group, spec in specs.items():
        if spec.kind == "block" and group in chosen:
            layers.append(OmegaConf.create({group: _load_group(group, chosen[group])}))
    pipeline = cli.get("pipeline")
    if pipeline is not None:
        known = pipelines()
        if pipeline not in known:
            raise ConfigError(f"unknown pipeline {pipeline!r}; known pipelines: {', '.join(known)}")
        layers.append(OmegaConf.load(known[pipeline]))
    layers.append(cli)
    try:
        cfg = OmegaConf.merge(base, *layers)
    except ConfigKeyError as e:
        raise ConfigError(_unknown_key(str(e.full_key or e))) from e
    except OmegaConfBaseException as e:
        raise ConfigError(str(e).splitlines()[0]) from e

    if cfg.stage is not None:
        get_stage_class(cfg.stage)  # fails early with the list of known stages
        if pipeline is not None:
            raise ConfigError("give either stage=<name> or pipeline=<name>, not both")
        cfg.stages = [cfg.stage]
    for name in cfg.stages:
        get_stage_class(name)
    return cfg


def needs_cluster_facts(cfg: DictConfig) -> bool:
    """Whether a profile group is still `auto`: compose again with `gpus=` once Ray is connected."""
    return any(spec.auto is not None and cfg.get(group) == "auto" for group, spec in group_specs().items())


def build_stage(name: str, cfg: DictConfig | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Stage:
    """Instantiate a stage from the resolved config (tests pass `overrides` like `["scene_split.detector=adaptive"]`)."""
    if cfg is None:
        cfg = compose(list(overrides))
    options = OmegaConf.to_container(cfg[name], resolve=True)
    return get_stage_class(name)(**options)


# --------------------------------------------------------------------------------------------
# Validation: every value of a run checked before anything runs
# --------------------------------------------------------------------------------------------


class _Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_usd: float | None = Field(None, ge=0)


class _Cluster(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    num_cpus: int | None = Field(None, gt=0)
    namespace: str
    dashboard: StrictBool = False


class RunKeys(BaseModel):
    """The run-level keys of run.yaml, typed. Booleans are strict: `retry_errors=maybe` is a
    mistake to name, not a truthy string."""

    model_config = ConfigDict(extra="ignore")  # stage blocks and groups are validated by their own models

    retry_errors: StrictBool
    on_change: Literal["stop", "recompute", "keep"]
    stream: StrictBool
    progress: StrictBool
    budget: _Budget
    cluster: _Cluster


def _one_line(prefix: str, error: ValidationError) -> str:
    """A pydantic error as one line per key: `key='value': what it should be`."""
    lines = []
    for item in error.errors():
        key = ".".join([prefix, *map(str, item["loc"])]) if prefix else ".".join(map(str, item["loc"]))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] in ("bool_type", "bool_parsing"):
            message += " (true or false)"
        shown = item.get("input")
        value = f"={shown!r}" if isinstance(shown, str | int | float | bool) and item["loc"] else ""
        lines.append(f"{key}{value}: {message}" if key else message)
    return "; ".join(lines)


def validate(cfg: DictConfig) -> list[Stage]:
    """Check the run-level keys and build every stage of the run (types, ranges, choices), so a
    bad value fails before any stage runs, naming its key. Returns the built stages, in order."""
    errors = []  # every bad value at once, so one rerun fixes them all
    try:
        RunKeys.model_validate(OmegaConf.to_container(cfg, resolve=True))
    except ValidationError as e:
        errors.append(_one_line("", e))
    except OmegaConfBaseException as e:  # an interpolation that points nowhere
        raise ConfigError(str(e).splitlines()[0]) from None
    stages = []
    for name in cfg.stages:
        try:
            stages.append(build_stage(name, cfg))
        except ValidationError as e:
            errors.append(_one_line(name, e))
        except OmegaConfBaseException as e:
            errors.append(f"{name}: {str(e).splitlines()[0]}")
    if errors:
        raise ConfigError("; ".join(errors))
    return stages
