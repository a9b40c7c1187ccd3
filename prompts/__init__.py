"""Prompt templates (Jinja2 files, `<name>.v<N>.j2`) and the answer schemas they are validated
against (`transition.py`, `judges.py`); `templates.py` pairs each template with its schema.

Shipped as `curation.prompts` from the top-level `prompts/` folder (see pyproject.toml).
"""
