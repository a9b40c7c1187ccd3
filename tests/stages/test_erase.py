"""The `erase` stage on clips written as real MP4s: the ground-truth clip of
tests/backends/test_removal.py (coffee.png behind the cat's head from chelsea.png, moving, with
sensor-like noise) encoded with the project's H.264 writer, its known masks as mask_video would
store them. Both output videos must hold exactly the clip's frames at its size, the erased one
must show the background where the cat was, and every bad row must come back with its reason
while the good rows in the same batch succeed."""

from __future__ import annotations

import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf
from pydantic import BaseModel, Field

from curation.core import media_store
from curation.core.config import CONFIG_DIR
from curation.core.schema import Png, SampleRow, arrow_schema, make_sample_id, rows_to_table
from curation.media.decode import iter_frames
from curation.media.edit_media import encode_h264
from curation.regions.roe import encode_mask_png
from curation.stages.erase import Erase
from curation.stages.scene_split import ClipColumns

from tests.backends.test_removal import psnr
from tests.fixtures.erasure_media import Clip, make_clip
from tests.fixtures.vlm_servers import image_ok, openai_server

FPS = 24.0
KEY_ENV = "CURATE_TEST_ERASE_KEY"


class MaskedClip(BaseModel):
    """What mask_video adds to a clip row (the contract erase reads)."""

    object_masks: list[Png] | None = Field(None)
    subject: str | None = Field(None)


SCHEMA = media_store.inlined_schema(arrow_schema(SampleRow, ClipColumns, MaskedClip))  # media as bytes: no run


def stage(**fields) -> Erase:
    """erase with its packaged defaults (erase.yaml), `fields` overriding them."""
    options = OmegaConf.load(CONFIG_DIR / "stage" / "erase.yaml")
    options.max_usd = None  # `${budget.max_usd}` resolves only inside a composed run config
    return Erase(**{**OmegaConf.to_container(options, resolve=True), **fields})


def decode_mp4(data: bytes, tmp_path: Path, name: str) -> list[np.ndarray]:
    path = tmp_path / name
    path.write_bytes(data)
    return [image for _, _, image in iter_frames(str(path))]


@pytest.fixture(scope="module")
def clip() -> Clip:
    return make_clip(camera=False)


@pytest.fixture(scope="module")
def video(clip, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("erase") / "cat_over_coffee.mp4"
    path.write_bytes(encode_h264(clip.frames, FPS))
    return str(path)


def clip_row(uri: str, masks: list[np.ndarray] | None, start: int, end: int) -> dict:
    return dict(sample_id=make_sample_id("clip", uri, start, end), kind="clip", source_uri=uri, status="ok",
                stage="mask_video", stage_version="1", start_frame=start, end_frame=end, num_clip_frames=end - start,
                subject="cat", object_masks=None if masks is None else [encode_mask_png(m) for m in masks])


def run(rows: list[dict], **fields) -> list[dict]:
    return stage(**fields)(rows_to_table(rows, SCHEMA)).to_pylist()


def test_the_clip_and_its_erased_copy_hold_exactly_the_clips_frames(clip, video, tmp_path):
    start, end = 2, 22
    row = clip_row(video, clip.masks[start:end], start, end)
    (out,) = run([row])
    assert out["status"] == "ok", out["reason"]
    assert out["sample_id"] == row["sample_id"] and out["kind"] == "clip" and out["stage"] == "erase"
    assert out["removal_backend"] == "temporal" and out["removal_usage"] is None
    original = decode_mp4(out["clip_video"], tmp_path, "clip.mp4")
    erased = decode_mp4(out["erased_video"], tmp_path, "erased.mp4")
    assert len(original) == len(erased) == end - start
    assert all(f.shape == (240, 320, 3) for f in original + erased)
    masks, backgrounds = clip.masks[start:end], clip.backgrounds[start:end]
    # The original clip is the source's frames start..end-1, in order: each decoded frame is
    # nearest to the source frame at its own index (the cat's position tells them apart).
    for i, frame in enumerate(original):
        errors = [np.mean((frame.astype(float) - source) ** 2) for source in clip.frames]
        assert int(np.argmin(errors)) == start + i
    assert psnr(original, clip.frames[start:end], [np.ones_like(m) for m in masks]) > 30  # CRF 18 against the noisy frames
    # The erased clip shows the background where the cat was; the original shows the cat.
    after, before = psnr(erased, backgrounds, masks), psnr(original, backgrounds, masks)
    print(f"\nerase stage (H.264 in and out): PSNR inside the mask {after:.2f} dB, with the cat {before:.2f} dB")
    assert after > 30 and before < 15


def test_bad_rows_get_reasons_and_the_good_row_still_succeeds(clip, video, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    rows = [
        clip_row(video, clip.masks[0:19], 0, 20),  # one mask short
        clip_row(video, None, 0, 20),  # mask_video found nothing
        clip_row(video, clip.masks[0:8], 0, 8),  # shorter than min_frames
        clip_row(str(broken), clip.masks[0:20], 0, 20),  # unreadable video
        clip_row(video, [m[:, :200] for m in clip.masks[4:24]], 4, 24),  # masks at another size
        clip_row(video, clip.masks[4:24], 4, 24),  # fine
    ]
    out = run(rows)
    assert [r["sample_id"] for r in out] == [r["sample_id"] for r in rows]
    assert [r["status"] for r in out] == ["error", "error", "dropped", "error", "error", "ok"]
    reasons = [r["reason"] or "" for r in out]
    assert reasons[0] == "mask_mismatch: 19 masks for 20 frames"
    assert reasons[1].startswith("no_masks")
    assert reasons[2] == "clip_too_short: 8 < 16 frames"
    assert reasons[3].startswith("decode_failed"), reasons[3]
    assert reasons[4] == "mask_mismatch: mask 0 is 200x240, its frame 320x240"
    assert all(r["erased_video"] is None and r["clip_video"] is None for r in out[:5])
    assert len(decode_mp4(out[5]["erased_video"], tmp_path, "ok.mp4")) == 20


def test_a_clip_past_the_videos_end_is_a_decode_failure(clip, video):
    (out,) = run([clip_row(video, clip.masks[:20] * 2, 10, 50)])  # the video has 24 frames
    assert out["status"] == "error" and out["reason"].startswith("decode_failed"), out["reason"]


def green(data: bytes) -> bytes:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    ok, buf = cv2.imencode(".png", np.full(image.shape, (0, 255, 0), np.uint8))
    assert ok
    return buf.tobytes()


def green_unless_small(data: bytes) -> bytes:
    """The "API" answers the 160x120 clip's frames with bytes that are no image."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return b"not an image" if image.shape[1] == 160 else green(data)


def test_an_api_failure_on_one_clip_is_that_rows_error(clip, video, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    small = tmp_path / "small.mp4"
    small.write_bytes(encode_h264([cv2.resize(f, (160, 120), interpolation=cv2.INTER_AREA) for f in clip.frames[:16]], FPS))
    small_masks = [cv2.resize(m.view(np.uint8), (160, 120), interpolation=cv2.INTER_NEAREST) > 0 for m in clip.masks[:16]]
    rows = [clip_row(str(small), small_masks, 0, 16), clip_row(video, clip.masks[:16], 0, 16)]
    with openai_server(default=image_ok(green_unless_small)) as server:
        api = dict(backend="openai", model="editor", base_url=server.url, api_key_env=KEY_ENV, max_retries=0,
                   backoff_initial_s=0.01, backoff_max_s=0.05, timeout_s=10, usd_per_image=0.01, cache=False)
        failed, ok = run(rows, backend="api", api=api)
    assert failed["status"] == "error" and failed["reason"].startswith("image_edit_bad_output"), failed["reason"]
    assert failed["removal_backend"] == "api:openai:editor" and failed["removal_usage"]["requests"] == 16
    assert ok["status"] == "ok", ok["reason"]
    assert ok["removal_usage"]["requests"] == 16 and ok["removal_usage"]["usd"] == pytest.approx(0.16)
    erased = decode_mp4(ok["erased_video"], tmp_path, "api.mp4")
    assert len(erased) == 16
    centre = erased[0][clip.masks[0]]  # the cat's pixels are now the API's green (after H.264)
    assert centre[:, 1].mean() > 200 and centre[:, 0].mean() < 60


def test_yaml_matches_the_fields_and_the_stage_is_registered():
    path = CONFIG_DIR / "stage" / "erase.yaml"
    assert set(OmegaConf.load(path)) == set(Erase.model_fields)
    assert "ours" in path.read_text()
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["curate.stages"]["erase"] == "curation.stages.erase:Erase"
    assert "curation.backends.removal" in pyproject["tool"]["setuptools"]["packages"]
    assert stage().models() == {}
