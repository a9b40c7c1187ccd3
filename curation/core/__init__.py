"""The framework core: the stage contract, the manifest row schema, storage, the run-dir layout,
config composition and the runner. It names no stage and no backend (tests/core/test_layering.py
checks its imports): what is particular to a stage reaches it through the hooks of `stage.Stage`.
"""
