"""curate: distributed data curation for image and video editing models.

Ray stages turn raw videos, image pairs and edit triplets into Parquet manifests (one row per
sample, with lineage, scores and drop reasons) and WebDataset training shards. The layout and what
may import what are in docs/architecture.md.
"""

__version__ = "0.2.0"
