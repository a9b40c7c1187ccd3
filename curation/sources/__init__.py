"""What ingest lists: files, globs and source manifests (`files.py`), and edit datasets through
their adapters (`edit_datasets.py`; the YAMLs ship as `curation.adapters`)."""
