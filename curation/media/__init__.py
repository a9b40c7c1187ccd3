"""Media I/O: probing (`probe`) and the one place frames are decoded (`decode`)."""

from curation.media.decode import iter_frames, read_frames
from curation.media.probe import VideoInfo, probe_video

__all__ = ["VideoInfo", "iter_frames", "probe_video", "read_frames"]
