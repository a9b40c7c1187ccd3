"""Bases shared by several stages: paying for VLM calls (`vlm.py`) and embedding images (`embedding.py`)."""
