"""The thin trainer: streams WebDataset shards (DESIGN.md §5-6) and trains a small DiT editor with
rectified flow. It depends only on the shard contract, never on the curation stages."""
