#!/usr/bin/env bash
# The main job on the bundled example media: videos -> clips -> frame sessions -> WebDataset shards.
# Rerunning resumes (finished work is skipped). Extra arguments are passed as overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/curate run pipeline=sessions input=manifests/examples.jsonl output=runs/example "$@"
.venv/bin/curate status runs/example
echo "shards: runs/example/shards (see runs/example/shards/_dataset.json)"
