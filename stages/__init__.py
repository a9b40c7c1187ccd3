"""The stages, one module each, registered under the `curate.stages` entry-point group.

Shipped as `curation.stages` (the repo keeps them in the top-level `stages/` folder; see
pyproject.toml). `base/` holds what several stages share: the VLM and embedding stage bases.
"""
