"""Prompt templates (Jinja2 files, `<name>.v<N>.j2`). Each is paired with its output schema, a
pydantic model in `curation/` (see curation/prompting.py: TEMPLATES)."""
