#!/usr/bin/env bash
# The main job on the bundled example media: videos -> clips -> frame sessions -> VLM transition
# annotation -> region-of-edit masks -> WebDataset shards. Offline: models=tiny uses tiny RANDOM models.
# Rerunning resumes (finished work is skipped). Extra arguments are passed as overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/curate run pipeline=sessions models=tiny input=manifests/examples.jsonl output=runs/example "$@"
.venv/bin/curate status runs/example
echo "shards: runs/example/shards (see runs/example/shards/_dataset.json)"
