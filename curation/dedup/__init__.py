"""Near-duplicate search over embeddings (`search.py`) and held-out reference sets for leakage checks (`reference_set.py`)."""
