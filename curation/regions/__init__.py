"""Image regions: region-of-edit masks fused from detections (`roe.py`) and the box conventions
VLMs answer in (`boxes.py`)."""
