"""Resume that notices a changed config: each manifest part records the stage config it was made
with, and a rerun compares it with its own before it adds a single part.

Why: a rerun skips finished parts. If the stage's config changed in between (a threshold, a
model, a prompt version), skipping would silently mix rows made two ways in one manifest. So a
rerun whose stage config differs from the recorded one stops and names the keys, unless the user
chose `on_change=recompute` (the stage and every later one are redone; their old directories are
moved aside into `<run_dir>/_replaced/<time>/`, never deleted) or `on_change=keep` (keep the old
parts; the new ones record the new config).

Only what decides a stage's output is compared. Keys that say how to run it (workers, batch
sizes, devices, timeouts, rate limits, budgets, endpoints) carry `json_schema_extra=RUN_ONLY` in
their pydantic field and are left out, so retuning a run never throws finished work away.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from curation.core import layout, storage

log = logging.getLogger(__name__)

RUN_ONLY: dict[str, Any] = {"affects_output": False}  # pydantic `json_schema_extra` of a how-to-run key
PART_CONFIG_KEY = b"curate.stage_config"  # Parquet schema metadata of every part a stage writes
ON_CHANGE = ("stop", "recompute", "keep")


def output_config(model: BaseModel) -> dict[str, Any]:
    """The model's fields that decide what it outputs, as JSON values (nested models recursively)."""
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("affects_output") is False:
            continue
        value = getattr(model, name)
        out[name] = output_config(value) if isinstance(value, BaseModel) else _json(value)
    return out


def _json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return output_config(value)
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return json.loads(json.dumps(value, default=str))


def fingerprint(stage: Any) -> dict[str, Any]:
    """What a part records: the stage's name, code version and output-deciding config."""
    return {"stage": stage.name, "version": stage.version, "config": output_config(stage)}


def tag(table: pa.Table, stage: Any) -> pa.Table:
    """The table with the stage's fingerprint in its schema metadata, ready to be written as a part."""
    metadata = dict(table.schema.metadata or {})
    metadata[PART_CONFIG_KEY] = json.dumps(fingerprint(stage), sort_keys=True).encode()
    return table.replace_schema_metadata(metadata)


def recorded(part_uri: str) -> dict[str, Any] | None:
    """The fingerprint a part was written with (read from its footer); None for parts written
    before parts recorded one, which cannot be compared."""
    raw = (storage.read_schema(part_uri).metadata or {}).get(PART_CONFIG_KEY)
    return json.loads(raw) if raw else None


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for each leaf that differs, keys dotted from the stage's name."""
    name = new["stage"]
    lines = [f"{name} code version {old.get('version')} -> {new['version']}"] if old.get("version") != new["version"] else []
    before, after = _flatten(old.get("config", {}), name), _flatten(new["config"], name)
    for key in sorted(set(before) | set(after)):
        if before.get(key, "<unset>") != after.get(key, "<unset>"):
            lines.append(f"{key}: {_shown(before.get(key, '<unset>'))} -> {_shown(after.get(key, '<unset>'))}")
    return lines


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}"))
        return out
    return {prefix: value}


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) or value == "<unset>" else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class ConfigChange:
    """A stage whose finished parts were made with another config than this run's."""

    stage: str
    stage_dir: str
    parts: int  # finished parts made with another config
    changes: list[str]  # `key: old -> new`

    def describe(self) -> str:
        shown = "; ".join(self.changes[:6]) + (f"; and {len(self.changes) - 6} more" if len(self.changes) > 6 else "")
        return f"stage {self.stage} has {self.parts} finished part(s) made with another config ({shown})"


def find_changes(stages: list[Any], stage_dirs: list[str]) -> list[ConfigChange]:
    """Per stage with finished parts, whether any was made with a config other than its own now.
    Reads part footers only. Parts that record nothing (older runs) are taken as they are."""
    changes = []
    for stage, stage_dir in zip(stages, stage_dirs):
        parts = layout.manifest_parts(stage_dir)
        if not parts:
            continue
        now = fingerprint(stage)
        seen: dict[str, tuple[dict[str, Any], int]] = {}
        for part in parts:
            old = recorded(part)
            if old is None or old == now:
                continue
            key = json.dumps(old, sort_keys=True)
            seen[key] = (old, seen.get(key, (old, 0))[1] + 1)
        if seen:
            diffs = list(dict.fromkeys(line for old, _ in seen.values() for line in changed_keys(old, now)))
            changes.append(ConfigChange(stage.name, stage_dir, sum(n for _, n in seen.values()), diffs))
    return changes


def refusal(changes: list[ConfigChange], run_dir: str) -> str:
    """The one line a run that stops on a changed config prints."""
    return ("; ".join(c.describe() for c in changes)
            + f". Rerun with on_change=recompute to redo {changes[0].stage} and every later stage (their old "
            f"directories move to {storage.join(run_dir, layout.REPLACED_DIR)}/), or on_change=keep to keep the finished "
            "parts and make only the missing ones with the new config")


def move_aside(run_dir: str, first_stage_dir: str, outputs_of: Callable[[str], list[str]]) -> list[str]:
    """Move the stage directory `first_stage_dir` and every later-numbered one of the run, with
    what those stages write outside their directory (`outputs_of(stage name)`, e.g. the shards),
    into `<run_dir>/_replaced/<UTC time>/`: all of it was made with, or from, the config that
    changed. Returns where each went."""
    number = int(first_stage_dir.rstrip("/").rsplit("/", 1)[1][:2])
    target = storage.join(run_dir, layout.REPLACED_DIR, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    moved = []
    for name in layout.stage_dirs(run_dir):
        if int(name[:2]) < number:
            continue
        sources = [storage.join(run_dir, name)] + [d for d in outputs_of(layout.stage_name(name)) if storage.exists(d)]
        for src in sources:
            dst = storage.join(target, src.rstrip("/").rsplit("/", 1)[1])
            storage.move_dir(src, dst)
            log.warning("on_change=recompute: moved %s to %s", src, dst)
            moved.append(dst)
    return moved
