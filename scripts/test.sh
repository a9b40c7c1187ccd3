#!/usr/bin/env bash
# The whole test suite (unit + end-to-end on real media through local Ray). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -rs "$@"
