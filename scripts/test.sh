#!/usr/bin/env bash
# Lint (ruff) then the whole test suite (unit + end-to-end on real media through local Ray).
# Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Lint first: a violation fails the run before any test starts ([tool.ruff] in pyproject.toml).
.venv/bin/ruff check .
# tests/test_browse.py drives Debian's Chromium (/usr/bin/chromium) with Playwright, which downloads
# no browser of its own. Install it where apt-get can (root or passwordless sudo).
if [ ! -x /usr/bin/chromium ] && [ "${CURATE_SKIP_BROWSER:-0}" != 1 ]; then
  sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo -n"
  echo "test: installing Debian's chromium for the browser test (log: .venv/apt.log)" >&2
  if ! { $sudo_ apt-get install -y --no-install-recommends chromium \
         || { $sudo_ apt-get update && $sudo_ apt-get install -y --no-install-recommends chromium; }; } > .venv/apt.log 2>&1; then
    tail -n 5 .venv/apt.log >&2
    echo "test: could not install chromium (needs apt-get as root or sudo). Install it, or set CURATE_SKIP_BROWSER=1 to skip the browser test." >&2
    exit 1
  fi
fi
exec .venv/bin/python -m pytest -q -rs "$@"
