"""`_run.json`: what ran, on what, with which config and code, and what came out (DESIGN.md §3)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from omegaconf import DictConfig, OmegaConf

from curation.core import config_change, layout, storage
from curation.core.stage import Stage


def git_sha() -> str | None:
    """The curate checkout's commit (with `-dirty` when it has local changes); in an installed copy
    (the Docker image has no .git) the commit it was built from, `$CURATE_GIT_SHA`; else None."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return os.environ.get("CURATE_GIT_SHA") or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("CURATE_GIT_SHA") or None


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_spend(run_dir: str) -> dict[str, Any] | None:
    """What a run's paid API calls cost so far, over every stage and attempt, as the spend ledger
    (curation/backends/budget.py) last wrote it: `spent_usd`, `by_stage`, `updated_at`. None:
    nothing recorded."""
    path = storage.join(run_dir, layout.SPEND_JSON)
    return storage.read_json(path) if storage.exists(path) else None


def reason_key(reason: str | None) -> str:
    """Group reasons by their stable prefix (`decode_failed: moov atom not found` -> `decode_failed`)."""
    if not reason:
        return "unspecified"
    return reason.split(":", 1)[0].strip()


def count_outcomes(stage_dir: str) -> dict[str, Any]:
    """Counts by status, and dropped/error counts by reason, over the stage's whole manifest."""
    table = storage.read_table(stage_dir, columns=["status", "reason", "kind"])
    if table.num_rows == 0:
        return {"total": 0, "ok": 0, "dropped": {}, "error": {}, "by_kind": {}}
    status = table.column("status").to_pylist()
    reasons = table.column("reason").to_pylist()
    dropped = Counter(reason_key(r) for s, r in zip(status, reasons) if s == "dropped")
    errors = Counter(reason_key(r) for s, r in zip(status, reasons) if s == "error")
    ok_kinds = table.filter(pc.equal(table.column("status"), "ok")).column("kind").to_pylist()
    return {
        "total": len(status),
        "ok": status.count("ok"),
        "dropped": dict(sorted(dropped.items())),
        "error": dict(sorted(errors.items())),
        "by_kind": dict(sorted(Counter(ok_kinds).items())),
    }


@dataclass
class RunRecord:
    stage_dir: str
    record: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0

    @classmethod
    def start(cls, cfg: DictConfig, stage: Stage, input_uri: str | None, stage_dir: str) -> RunRecord:
        config = OmegaConf.to_container(cfg, resolve=True)
        models = stage.models()
        record = {
            "stage": stage.name,
            "stage_version": stage.version,
            "config": config,
            "config_hash": config_hash(config),
            "stage_config": stage.model_dump(mode="json"),
            # What each part of this attempt records (config_change.py): code version and output-deciding keys.
            "stage_config_hash": config_hash(config_change.fingerprint(stage)),
            "model_ids": {role: ref.display for role, ref in models.items()},
            # Loud on purpose: outputs of tiny random models (`models=tiny`) are meaningless.
            "random_weights": sorted(role for role, ref in models.items() if ref.random_weights),
            # The cuts the stage applies, for the report's histograms.
            "thresholds": [t.model_dump() for t in stage.thresholds()],
            "input": input_uri,
            "output": stage_dir,
            "git_sha": git_sha(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return cls(stage_dir=stage_dir, record=record, started=time.time())

    def finish(self, *, counts: dict[str, Any], processed: int, wall_s: float, skipped_fragments: int,
               done_fragments: int, extra: dict[str, Any]) -> None:
        """Write `_run.json`. A resumed run appends an attempt, so the first run's throughput is kept."""
        path = layout.run_json(self.stage_dir)
        attempts = storage.read_json(path).get("attempts", []) if storage.exists(path) else []
        extra = dict(extra)
        nodes = extra.pop("worker_nodes", None)
        attempts.append({
            "started_at": self.record["started_at"],
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "git_sha": self.record["git_sha"],
            "config_hash": self.record["config_hash"],
            "stage_config_hash": self.record["stage_config_hash"],
            "processed": processed,
            "wall_s": round(wall_s, 3),
            "fragments": {"done": done_fragments, "skipped_complete": skipped_fragments},
            **({"worker_nodes": nodes} if nodes is not None else {}),
        })
        working = [a for a in attempts if a["processed"]]
        total_processed = sum(a["processed"] for a in working)
        total_wall = sum(a["wall_s"] for a in working)
        self.record.update(
            finished_at=attempts[-1]["finished_at"],
            counts=counts,
            processed_this_run=processed,
            processed_total=total_processed,
            wall_s=round(total_wall, 3),
            samples_per_s=round(total_processed / total_wall, 3) if total_wall > 0 else None,
            fragments={"done_this_run": done_fragments, "skipped_complete": skipped_fragments},
            attempts=attempts,
            **extra,
        )
        if nodes is not None:  # over every attempt: a resumed run keeps where the first one ran
            merged: Counter = Counter()
            for attempt in attempts:
                merged.update(attempt.get("worker_nodes") or {})
            self.record["worker_nodes"] = dict(sorted(merged.items()))
        storage.write_json_atomic(path, self.record)
