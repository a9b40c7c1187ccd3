"""The WebDataset shard format: which members a sample becomes and how a tar is written (`writer.py`)."""
