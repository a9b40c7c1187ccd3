"""Valid videos that are hard for random access, built with PyAV from real footage in a temp dir.

- `open_gop_mp4`: H.264 with open GOPs (non-IDR keyframes whose leading B-frames reference the
  previous GOP), so decoding from a seek point yields pictures that must not be trusted.
- `mpeg4_avi`: MPEG-4 part 2 with B-frames in AVI, where pts come from reordered dts.
- `mpeg2_ts`: MPEG-2 in MPEG-TS, which has no index: FFmpeg seeks by bisecting timestamps and
  lands well past the requested frame, or past the end of the stream.
"""

from __future__ import annotations

from pathlib import Path

import av

from curation.media.decode import iter_frames

SIZE = (320, 136)


def _encode(source: Path, out: Path, codec: str, rate: int, **stream_kwargs) -> Path:
    with av.open(str(out), "w", format="mpegts" if out.suffix == ".ts" else None) as container:
        stream = container.add_stream(codec, rate=rate, **stream_kwargs)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        if codec in ("mpeg4", "mpeg2video"):
            stream.codec_context.gop_size = 12
            stream.codec_context.max_b_frames = 2
        for index, _, image in iter_frames(str(source), size=SIZE):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out


def open_gop_mp4(tmp: Path, source: Path) -> Path:
    params = "keyint=24:min-keyint=24:scenecut=0:bframes=3:open-gop=1"
    return _encode(source, tmp / "open_gop.mp4", "libx264", 24, options={"x264-params": params, "preset": "ultrafast"})


def mpeg4_avi(tmp: Path, source: Path) -> Path:
    return _encode(source, tmp / "mpeg4_bframes.avi", "mpeg4", 24)


def mpeg2_ts(tmp: Path, source: Path) -> Path:
    return _encode(source, tmp / "mpeg2.ts", "mpeg2video", 24)


BUILDERS = {"open_gop_mp4": open_gop_mp4, "mpeg4_avi": mpeg4_avi, "mpeg2_ts": mpeg2_ts}
