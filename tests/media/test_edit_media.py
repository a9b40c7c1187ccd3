"""Edit media on real footage and photos: clip pairs transcoded a frame at a time to one length,
H.264 that decodes back to exactly the frames written (in PyAV and OpenCV), frame-accurate pair
reads, and images loaded upright with stable reasons for every way a file can be unusable."""

from __future__ import annotations

import io
import weakref
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from curation.core.stage import StageError
from curation.media import edit_media
from curation.media.decode import iter_frames
from curation.media.edit_media import (
    encode_h264,
    encode_jpeg,
    load_image,
    pair_frame_indices,
    read_edit_frames,
    transcode_clip_pair,
)
from curation.media.probe import probe_video

from tests.fixtures import badmedia
from tests.fixtures.media import EXAMPLES, image_path

CAR = str(EXAMPLES / "intel-sample-videos" / "car-detection.mp4")  # 377 frames, 768x432, 12.5 fps
CAR_FRAMES = 377
TARGET_FRAMES = 60
MAX_PIXELS = 1 << 27
SMALL = (192, 108)  # frames for tests that only count


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def decode_all(path: str, **kwargs) -> list[np.ndarray]:
    return [image for _, _, image in iter_frames(path, **kwargs)]


def car_frames(n: int, **kwargs) -> list[np.ndarray]:
    return [image for _, _, image in iter_frames(CAR, stop=n, **kwargs)]


@pytest.fixture(scope="module")
def triplet(tmp_path_factory) -> tuple[str, str]:
    """(source, target): the real car video, and an edit of its first 60 frames (red and blue
    swapped) encoded with encode_h264, so the target is shorter than the source."""
    target = tmp_path_factory.mktemp("triplet") / "target.mp4"
    target.write_bytes(encode_h264([f[..., ::-1] for f in car_frames(TARGET_FRAMES)], 12.5, preset="veryfast"))
    return CAR, str(target)


def photo(name: str) -> Path:
    return image_path(name)


# --------------------------------------------------------------------------------------------
# transcode_clip_pair
# --------------------------------------------------------------------------------------------


def test_transcode_clip_pair_cuts_both_videos_to_the_shorter_one(triplet, tmp_path):
    source, target = triplet
    clip = transcode_clip_pair(source, target, crf=18, preset="veryfast")  # default max_frames=81 > 60
    assert clip.frames == TARGET_FRAMES and clip.fps == pytest.approx(12.5)
    for data in (clip.source, clip.target):
        assert data.index(b"moov") < data.index(b"mdat")
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            assert stream.average_rate == Fraction(25, 2) and stream.codec_context.name == "h264"
            assert (stream.codec_context.colorspace, stream.codec_context.color_range) == (1, 1)
    src_out = decode_all(_write(clip.source, tmp_path, "src.mp4"))
    tgt_out = decode_all(_write(clip.target, tmp_path, "tgt.mp4"))
    assert len(src_out) == len(tgt_out) == TARGET_FRAMES
    # close to a sequential decode of each input, frame for frame (a shift by one would fail this)
    assert min(psnr(a, b) for a, b in zip(car_frames(TARGET_FRAMES), src_out)) > 30
    assert min(psnr(a, b) for a, b in zip(decode_all(target), tgt_out)) > 30


def test_transcode_clip_pair_caps_at_max_frames_and_stops_decoding_there(triplet, tmp_path, monkeypatch):
    pulled = []

    def counting(path, **kwargs):
        for item in iter_frames(path, **kwargs):
            pulled.append(path)
            yield item

    monkeypatch.setattr(edit_media, "iter_frames", counting)
    source, target = triplet
    clip = transcode_clip_pair(target, source, max_frames=25, preset="ultrafast")  # either side may be the longer
    assert clip.frames == 25
    assert pulled.count(source) == pulled.count(target) == 25  # nothing decoded past the cap
    assert len(decode_all(_write(clip.source, tmp_path, "src.mp4"))) == 25
    assert len(decode_all(_write(clip.target, tmp_path, "tgt.mp4"))) == 25
    with pytest.raises(ValueError):
        transcode_clip_pair(source, target, max_frames=0)


def test_transcode_clip_pair_streams_a_frame_at_a_time(triplet, monkeypatch):
    """Each decoded frame is encoded and dropped before the next is decoded, so at most two frames a
    side are alive (the one just decoded and the one before it, still bound until replaced) however
    long the clip; reading all first, as shard writing used to, holds every frame of both."""
    alive_peak: dict[str, int] = {}

    def spying(path, **kwargs):
        refs = []
        for item in iter_frames(path, **kwargs):
            held = sum(ref() is not None for ref in refs) + 1
            alive_peak[path] = max(alive_peak.get(path, 0), held)
            refs.append(weakref.ref(item[2]))
            yield item

    monkeypatch.setattr(edit_media, "iter_frames", spying)
    source, target = triplet
    frames = list(edit_media.iter_frames(source, stop=TARGET_FRAMES))  # the spy sees frames held
    assert alive_peak[source] == TARGET_FRAMES
    del frames
    alive_peak.clear()
    clip = transcode_clip_pair(source, target, max_frames=TARGET_FRAMES, preset="ultrafast")
    assert clip.frames == TARGET_FRAMES
    assert alive_peak == {source: 2, target: 2}


def test_transcode_clip_pair_with_different_sizes_and_odd_sides(tmp_path):
    """Each side keeps its own size (taken from its first frame), odd sides cropped by one pixel."""
    odd = [f[:431, :767] for f in car_frames(12)]
    small = [f[:107, :191] for f in car_frames(9, size=SMALL)]
    source = _write_lossless(odd, tmp_path / "odd.mkv")
    target = _write_lossless(small, tmp_path / "small.mkv")
    clip = transcode_clip_pair(source, target, preset="veryfast")
    assert clip.frames == 9
    src_out = decode_all(_write(clip.source, tmp_path, "src.mp4"))
    tgt_out = decode_all(_write(clip.target, tmp_path, "tgt.mp4"))
    assert len(src_out) == len(tgt_out) == 9
    assert src_out[0].shape == (430, 766, 3) and tgt_out[0].shape == (106, 190, 3)
    assert min(psnr(a[:430, :766], b) for a, b in zip(odd, src_out)) > 30
    assert min(psnr(a[:106, :190], b) for a, b in zip(small, tgt_out)) > 30


def test_transcode_clip_pair_names_the_side_that_failed(triplet, tmp_path):
    source, _ = triplet
    with pytest.raises(StageError, match=r"^not_found: target: "):
        transcode_clip_pair(source, str(tmp_path / "missing.mp4"))
    empty = badmedia.empty_mp4(tmp_path)
    with pytest.raises(StageError, match=r"^empty_file: source: "):
        transcode_clip_pair(str(empty), source)
    with pytest.raises(StageError, match=r"^unreadable: target: "):
        transcode_clip_pair(source, str(badmedia.text_mp4(tmp_path)))
    one_row = _write_lossless([np.zeros((1, 16, 3), np.uint8)] * 2, tmp_path / "one_row.mkv")
    with pytest.raises(StageError, match=r"^encode_failed: target: 16x1 "):
        transcode_clip_pair(source, one_row)


def _write_lossless(frames: list[np.ndarray], path: Path) -> str:
    """FFV1 in Matroska: keeps odd sizes and every pixel, which H.264 yuv420p cannot."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=Fraction(25, 2))
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "bgr0"
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(format="bgr0")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return str(path)


# --------------------------------------------------------------------------------------------
# encode_h264
# --------------------------------------------------------------------------------------------


def test_encode_h264_decodes_back_to_the_same_frames(tmp_path):
    frames = car_frames(30)
    data = encode_h264(frames, 12.5, crf=18)
    assert data.index(b"moov") < data.index(b"mdat")  # faststart: the index comes first, it streams
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == Fraction(25, 2)
        ctx = stream.codec_context
        assert (ctx.colorspace, ctx.color_range) == (1, 1)  # AVCOL_SPC_BT709, AVCOL_RANGE_MPEG: tagged as converted
    path = _write(data, tmp_path)
    info = probe_video(path, MAX_PIXELS)
    assert info.num_frames == 30 and not info.vfr and (info.width, info.height) == (768, 432)
    decoded = decode_all(path)
    assert len(decoded) == 30
    assert all(d.shape == (432, 768, 3) for d in decoded)
    assert min(psnr(a, b) for a, b in zip(frames, decoded)) > 30


def test_encode_h264_reads_the_same_in_opencv(tmp_path):
    """Trainers decode with other libraries: OpenCV's FFmpeg must see the same frames and colours."""
    frames = car_frames(12)
    path = _write(encode_h264(frames, 12.5), tmp_path)
    capture = cv2.VideoCapture(path)
    decoded = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        decoded.append(bgr[..., ::-1])
    capture.release()
    assert len(decoded) == 12
    assert min(psnr(a, b) for a, b in zip(frames, decoded)) > 30


@pytest.mark.parametrize("count", [1, 2, 7, 81])
def test_encode_h264_keeps_the_exact_frame_count(count, tmp_path):
    frames = car_frames(count, size=SMALL)
    decoded = decode_all(_write(encode_h264(frames, 12.5, preset="veryfast"), tmp_path))
    assert len(decoded) == count
    assert min(psnr(a, b) for a, b in zip(frames, decoded)) > 30


def test_encode_h264_crops_odd_sides_by_one_pixel(tmp_path):
    frames = [f[:431, :767] for f in car_frames(5)]
    decoded = decode_all(_write(encode_h264(frames, 12.5), tmp_path))
    assert len(decoded) == 5 and decoded[0].shape == (430, 766, 3)
    # the last row and column cropped (not resized, not the first ones): kept pixels stay in place
    for a, b in zip(frames, decoded):
        cropped = psnr(a[:430, :766], b)
        assert cropped > 30
        assert cropped > psnr(cv2.resize(a, (766, 430), interpolation=cv2.INTER_AREA), b) + 2
        assert cropped > psnr(a[1:, 1:], b) + 2


def test_encode_h264_keeps_ntsc_rates_exact():
    data = encode_h264(car_frames(3, size=SMALL), 30000 / 1001)
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].average_rate == Fraction(30000, 1001)


def test_encode_h264_refuses_what_it_cannot_write():
    frame = car_frames(1)[0]
    with pytest.raises(StageError, match=r"^encode_failed: "):
        encode_h264([frame[:1]], 25)  # one row: nothing left after making the height even
    with pytest.raises(ValueError):
        encode_h264([], 25)
    with pytest.raises(ValueError):
        encode_h264([frame], 0)
    with pytest.raises(ValueError):
        encode_h264([frame, frame[:100]], 25)


def _write(data: bytes, tmp_path: Path, name: str = "clip.mp4") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# --------------------------------------------------------------------------------------------
# pair_frame_indices
# --------------------------------------------------------------------------------------------


def test_pair_frame_indices_edge_cases():
    assert pair_frame_indices(10, 10, 3) == [0, 3, 6]
    assert pair_frame_indices(377, 60, 4) == [0, 15, 30, 45]  # spread over the common 60 frames
    assert pair_frame_indices(60, 377, 4) == [0, 15, 30, 45]
    assert pair_frame_indices(5, 8, 5) == [0, 1, 2, 3, 4]  # k == n: all
    assert pair_frame_indices(5, 8, 50) == [0, 1, 2, 3, 4]  # k > n: all
    assert pair_frame_indices(1, 1, 4) == [0]  # images: one frame
    assert pair_frame_indices(100, 100, 1) == [0]
    assert pair_frame_indices(0, 10, 3) == []
    with pytest.raises(ValueError):
        pair_frame_indices(10, 10, 0)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 81, 1000])
@pytest.mark.parametrize("k", [1, 2, 3, 6, 80])
def test_pair_frame_indices_are_distinct_sorted_and_in_range(n, k):
    picks = pair_frame_indices(n, n + 5, k)
    assert picks[0] == 0 and len(picks) == min(n, k)
    assert picks == sorted(set(picks)) and picks[-1] < n
    assert picks == pair_frame_indices(n, n + 5, k)  # deterministic
    gaps = np.diff(picks)
    assert len(gaps) == 0 or gaps.max() - gaps.min() <= 1  # evenly spread


# --------------------------------------------------------------------------------------------
# read_edit_frames
# --------------------------------------------------------------------------------------------


def test_read_edit_frames_on_videos_equal_sequential_decode(triplet):
    source, target = triplet
    indices = pair_frame_indices(CAR_FRAMES, TARGET_FRAMES, 5) + [59, 0]  # last common frame, a repeat
    pairs = read_edit_frames(source, target, indices, is_video=True, max_pixels=MAX_PIXELS)
    src_all, tgt_all = decode_all(source, stop=TARGET_FRAMES), decode_all(target)
    assert len(pairs) == len(indices)
    for index, (src, tgt) in zip(indices, pairs):
        assert np.array_equal(src, src_all[index]) and np.array_equal(tgt, tgt_all[index]), index


def test_read_edit_frames_reasons_for_videos(triplet):
    source, target = triplet
    with pytest.raises(StageError, match=r"^decode_failed: target: frame 60 "):
        read_edit_frames(source, target, [0, 60], is_video=True, max_pixels=MAX_PIXELS)
    with pytest.raises(StageError, match=r"^too_large: source: 768x432 "):
        read_edit_frames(source, target, [0], is_video=True, max_pixels=100_000)


def test_read_edit_frames_with_different_sizes(triplet, tmp_path):
    source, _ = triplet
    small = tmp_path / "small.mp4"
    small.write_bytes(encode_h264(car_frames(10, size=SMALL), 12.5))
    pairs = read_edit_frames(source, str(small), [0, 9], is_video=True, max_pixels=MAX_PIXELS)
    assert [(s.shape, t.shape) for s, t in pairs] == [((432, 768, 3), (108, 192, 3))] * 2


def test_read_edit_frames_on_images_is_frame_zero():
    source, target = photo("opencv-doc/box.png"), photo("opencv-doc/box_in_scene.png")  # different sizes
    pairs = read_edit_frames(str(source), str(target), [0], is_video=False, max_pixels=MAX_PIXELS)
    assert len(pairs) == 1
    assert np.array_equal(pairs[0][0], load_image(str(source), MAX_PIXELS))
    assert np.array_equal(pairs[0][1], load_image(str(target), MAX_PIXELS))
    assert pairs[0][0].shape != pairs[0][1].shape
    with pytest.raises(ValueError):
        read_edit_frames(str(source), str(target), [0, 1], is_video=False, max_pixels=MAX_PIXELS)
    with pytest.raises(StageError, match=r"^not_found: target: "):
        read_edit_frames(str(source), str(target) + ".missing", [0], is_video=False, max_pixels=MAX_PIXELS)


# --------------------------------------------------------------------------------------------
# load_image / encode_jpeg
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["skimage/astronaut.png", "skimage/camera.png", "opencv-doc/aloeL.jpg", "skimage/rocket.jpg"])
def test_load_image_matches_pillow(name):
    path = photo(name)
    image = load_image(str(path), MAX_PIXELS)
    expected = np.asarray(Image.open(path).convert("RGB"))
    assert image.dtype == np.uint8 and image.shape == expected.shape  # grey comes out as RGB too
    assert psnr(image, expected) > 45  # both libjpeg(-turbo); PNG is exact


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_load_image_applies_exif_orientation(orientation, fmt, tmp_path):
    """A phone photo stores pixels sideways plus an EXIF tag; OpenCV's IMREAD_COLOR turns it upright."""
    original = Image.open(photo("skimage/chelsea.png")).convert("RGB")  # 451x300, not square
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"rotated.{fmt.lower()}"
    original.save(path, fmt, exif=exif.tobytes(), quality=95)
    image = load_image(str(path), MAX_PIXELS)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert image.shape == expected.shape
    assert image.shape[:2] == ((300, 451) if orientation == 3 else (451, 300))
    assert psnr(image, expected) > 45


def test_load_image_reasons(tmp_path):
    real = photo("opencv-doc/aloeL.jpg")
    with pytest.raises(StageError, match=r"^not_found: "):
        load_image(str(tmp_path / "missing.jpg"), MAX_PIXELS)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(StageError, match=r"^empty_file: "):
        load_image(str(tmp_path / "empty.jpg"), MAX_PIXELS)
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(StageError, match=r"^not_a_file: "):
        load_image(str(tmp_path / "dir.jpg"), MAX_PIXELS)
    data = real.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(StageError, match=r"^decode_failed: "):
        load_image(str(tmp_path / "truncated.jpg"), MAX_PIXELS)
    (tmp_path / "random.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(StageError, match=r"^decode_failed: "):
        load_image(str(tmp_path / "random.jpg"), MAX_PIXELS)
    width, height = Image.open(real).size
    with pytest.raises(StageError, match=rf"^too_large: {width}x{height} "):
        load_image(str(real), width * height - 1)
    assert load_image(str(real), width * height).shape == (height, width, 3)


def test_load_image_refuses_a_png_bomb_from_its_header(tmp_path):
    bomb = badmedia.png_bomb(tmp_path)  # 30000x30000 claimed in ~0.1 MB
    with pytest.raises(StageError, match=r"^too_large: 30000x30000 "):
        load_image(str(bomb), MAX_PIXELS)


def test_load_image_reads_uris():
    real = photo("skimage/astronaut.png")
    assert np.array_equal(load_image(real.as_uri(), MAX_PIXELS), load_image(str(real), MAX_PIXELS))


def test_encode_jpeg_round_trips():
    image = car_frames(1)[0]
    data = encode_jpeg(image)
    assert data[:3] == b"\xff\xd8\xff"
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert psnr(image, decoded) > 35
    assert len(encode_jpeg(image, 50)) < len(data)


def test_image_file_as_is_sends_complete_upright_files_and_decodes_the_rest(tmp_path):
    from curation.media.edit_media import image_file_as_is

    jpeg = image_path("opencv-doc/aloeL.jpg")
    width, height = Image.open(jpeg).size
    assert image_file_as_is(str(jpeg), max(width, height), 1 << 26) == jpeg.read_bytes()
    assert image_file_as_is(str(jpeg), None, 1 << 26) == jpeg.read_bytes()
    assert image_file_as_is(str(jpeg), max(width, height) - 1, 1 << 26) is None  # the client would shrink it
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpeg.read_bytes()[:-200])  # truncated: decoded, so its error reads as before
    assert image_file_as_is(str(cut), None, 1 << 26) is None
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(jpeg).save(rotated, exif=exif)
    assert image_file_as_is(str(rotated), None, 1 << 26) is None  # EXIF orientation is applied by decoding
    png = image_path("opencv-doc/box.png")  # greyscale PNG
    assert image_file_as_is(str(png), None, 1 << 26) == png.read_bytes()
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(jpeg).convert("CMYK").save(cmyk)
    assert image_file_as_is(str(cmyk), None, 1 << 26) is None
    with pytest.raises(StageError, match="too_large"):
        image_file_as_is(str(jpeg), None, 100)
