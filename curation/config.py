"""Layered config: packaged YAML defaults, then a pipeline file, then `key=value` overrides.

Struct mode everywhere, so a typo such as `scene_split.min_clip_sec=2` is an error that names the
key instead of a silently ignored new key.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from curation.stage import Stage, get_stage_class, stage_names

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


DEFAULT_VLM = "local"
# Config groups: `key=<name>` on the command line selects the file <group>/<name>.yaml.
GROUPS = ("vlm", "models")


def groups(group: str) -> dict[str, Path]:
    return {p.stem: p for p in sorted((CONFIG_DIR / group).glob("*.yaml"))}


def _load_group(group: str, name: str) -> DictConfig:
    known = groups(group)
    if name not in known:
        raise ConfigError(f"unknown {group} {name!r}; known: {', '.join(known)}")
    return OmegaConf.load(known[name])


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The resolved config for `curate run` arguments such as `["pipeline=sessions", "input=x"]`.

    Layers, last wins: package defaults (run.yaml, stage/*.yaml, vlm/local.yaml) < the model
    profile (`models=tiny`) < an explicit `vlm=<name>` group < the pipeline file < `key=value`.
    """
    chosen: dict[str, str] = {}
    dotlist = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        if key in GROUPS:
            chosen[key] = value
        else:
            dotlist.append(item)
    try:
        cli = OmegaConf.from_dotlist(dotlist)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides: {e}") from e

    base = OmegaConf.load(CONFIG_DIR / "run.yaml")
    base.stages = []  # the ordered stage list; a pipeline file sets it, `stage=` makes it one long
    base.vlm = _load_group("vlm", DEFAULT_VLM)
    for name in stage_names():
        base[name] = stage_defaults(name)
    OmegaConf.set_struct(base, True)
    for name in stage_names():  # custom resource names are the user's own: any key may be set
        if "custom_resources" in base[name].get("resources", {}):
            OmegaConf.set_struct(base[name].resources.custom_resources, False)

    layers = []
    profile = chosen.get("models", base.models)
    layers.append(_load_group("models", profile))
    layers.append(OmegaConf.create({"models": profile}))
    if "vlm" in chosen:
        layers.append(OmegaConf.create({"vlm": _load_group("vlm", chosen["vlm"])}))
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
        raise ConfigError(f"unknown config key: {e.full_key or e}. See `curate stages` and README.md.") from e
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


def build_stage(name: str, cfg: DictConfig | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Stage:
    """Instantiate a stage from the resolved config (tests pass `overrides` like `["scene_split.detector=adaptive"]`)."""
    if cfg is None:
        cfg = compose(list(overrides))
    options = OmegaConf.to_container(cfg[name], resolve=True)
    return get_stage_class(name)(**options)
