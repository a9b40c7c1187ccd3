#!/usr/bin/env bash
# The main job on the bundled example media: videos -> clips -> frame sessions -> VLM transition
# annotation -> region-of-edit masks -> WebDataset shards -> a few DiT training steps. Offline: models=tiny uses tiny RANDOM models.
# Rerunning resumes (finished work is skipped). Extra arguments are passed as overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/curate run pipeline=sessions models=tiny input=manifests/examples.jsonl output=runs/example "$@"
.venv/bin/curate status runs/example
# The auditors' view: a static report (funnel by reason, score histograms with thresholds, costs).
.venv/bin/curate report runs/example
echo "browse the run: .venv/bin/curate browse runs/example   (http://localhost:8765/)"
echo "shards: runs/example/shards (see runs/example/shards/_dataset.json)"
# The downstream consumer: the tiny DiT editor in pixel space streams those shards (a rerun resumes
# from runs/example/train/checkpoint.pt and does nothing once at the last step).
.venv/bin/curate train shards=runs/example/shards model=tiny steps=100 output=runs/example/train \
    data.resolution=128 data.batch_size=2 data.num_workers=1 preview_every=50 log_every=25 progress=false
echo "trainer: runs/example/train (metrics.jsonl, previews/, checkpoint.pt)"
