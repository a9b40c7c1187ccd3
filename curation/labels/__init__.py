"""Label vocabularies: edit categories across datasets (`categories.py`) and VINCIE's camera
labels (`camera.py`)."""
