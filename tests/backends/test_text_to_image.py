"""Text-to-image: the tiny random diffusers pipeline (built offline, saved, loaded back through
`resolve_model`) draws at the configured size and repeats per seed; the API generators ride the
image editors' machinery against loopback servers (real SDKs, real HTTP): the size and seed reach
the request and its cache key, retries end in a reason, the budget stops sending."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from curation.backends.budget import Budget
from curation.backends.image_edit import ImageEditConfig
from curation.backends.models import resolve_model
from curation.backends.text_to_image import (
    DiffusersTextToImage,
    DiffusersTextToImageConfig,
    TextToImageConfig,
    TextToImageRequest,
    make_text_to_image,
)
from curation.backends.usage import VLMUsage

from tests.fixtures.vlm_servers import http_error, image_ok, prompt_image

KEY_ENV = "CURATE_TEST_T2I_KEY"
KEY = "sk-test-T2I"

TINY_SD = dict(model="tiny:stable-diffusion", steps=2, device="cpu", guidance_scale=5.0, true_cfg_scale=None,
               negative_prompt=None)


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable image"
    return image


# ---- diffusers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd() -> DiffusersTextToImage:
    return DiffusersTextToImage(DiffusersTextToImageConfig(**TINY_SD, batch_size=4))


@pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")
def test_the_tiny_pipeline_is_built_saved_and_flagged_random():
    resolved = resolve_model("tiny:stable-diffusion")
    assert resolved.random_weights
    index = json.loads((Path(resolved.path) / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"


@pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")
def test_diffusers_draws_at_the_size_and_repeats_per_seed_whatever_the_batch(tiny_sd):
    requests = [TextToImageRequest("a red barn", 7, "48x32"), TextToImageRequest("a red barn", 8, "48x32"),
                TextToImageRequest("a red barn", 7, "48x32")]
    first = tiny_sd.render(requests)
    assert [im.shape for im in first] == [(32, 48, 3)] * 3 and all(im.dtype == np.uint8 for im in first)
    for a, b in zip(first, tiny_sd.render(requests)):
        np.testing.assert_array_equal(a, b)  # the same call twice: bit for bit
    # Elsewhere in a batch or alone: the same per-image generator, so the same image, up to the
    # float rounding of batched CPU kernels (at most a level or two on a few pixels).
    (alone,) = tiny_sd.render([requests[0]])
    for other in (first[2], alone):
        assert np.abs(other.astype(int) - first[0]).max() <= 2
    assert np.abs(first[1].astype(int) - first[0]).mean() > 5  # another seed draws another image


@pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")
def test_the_facade_returns_png_bytes_that_repeat_byte_for_byte():
    cfg = TextToImageConfig(backend="diffusers", size="32x32", diffusers=DiffusersTextToImageConfig(**TINY_SD))
    t2i = make_text_to_image(cfg)
    assert t2i.model().random_weights and t2i.generator() == "tiny:stable-diffusion"
    once, twice = (t2i.render([TextToImageRequest("a lighthouse", 3, cfg.size)])[0] for _ in range(2))
    assert once.reason is None and once.image[:8] == b"\x89PNG\r\n\x1a\n"
    assert once.image == twice.image and decode(once.image).shape == (32, 32, 3)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")
def test_an_editing_pipeline_is_refused_as_a_text_to_image_model():
    with pytest.raises(ValueError, match="takes an input image"):
        DiffusersTextToImage(DiffusersTextToImageConfig(**{**TINY_SD, "model": "tiny:instruct-pix2pix"}))


# ---- config -----------------------------------------------------------------------------------


def test_config_wants_the_chosen_backend_s_block_and_one_size():
    with pytest.raises(ValidationError, match="needs its api block"):
        TextToImageConfig(backend="api")
    with pytest.raises(ValidationError, match=r"not api\.size"):
        TextToImageConfig(backend="api", size="1024x1024", api=ImageEditConfig(backend="openai", model="m", size="auto"))
    with pytest.raises(ValidationError, match="aspect ratios"):
        TextToImageConfig(backend="api", size="1000x700", api=ImageEditConfig(backend="gemini", model="m"))
    assert TextToImageConfig(backend="api", size="1536x1024", api=ImageEditConfig(backend="gemini", model="m")).size


# ---- api --------------------------------------------------------------------------------------


def server_default():
    """What the loopback servers answer unless a test scripts otherwise (tests/backends/conftest.py)."""
    return image_ok(lambda image: image)


def api_config(server, tmp_path, size: str | None = None, **overrides) -> TextToImageConfig:
    fields = dict(backend=server.backend, model="test-t2i", base_url=server.url, api_key_env=KEY_ENV, max_retries=1,
                  backoff_initial_s=0.01, backoff_max_s=0.05, timeout_s=5.0, usd_per_image=0.04,
                  cache_dir=str(tmp_path / "cache"))
    fields.update(overrides)
    return TextToImageConfig(backend="api", size=size, api=ImageEditConfig(**fields))


def test_api_generation_sends_the_prompt_and_size_and_returns_the_image(server, tmp_path):
    size = "96x64" if server.backend == "openai" else "1536x1024"
    t2i = make_text_to_image(api_config(server, tmp_path, size))
    (out,) = t2i.render([TextToImageRequest("a quiet harbour at dawn", 11, size)])
    t2i.close()
    assert out.reason is None, out.reason
    (sent,) = server.requests
    assert server.prompt_of(sent.body) == "a quiet harbour at dawn"
    if server.backend == "openai":
        assert sent.path == "/v1/images/generations" and sent.body["size"] == "96x64" and sent.body["model"] == "test-t2i"
        assert out.image == prompt_image("a quiet harbour at dawn", "96x64")
    else:  # Gemini: no image sent; the seed and the size's aspect ratio travel in the generation config
        assert not any("inlineData" in p for p in sent.body["contents"][0]["parts"])
        generation = sent.body["generationConfig"]
        assert generation["seed"] == 11 and generation["imageConfig"]["aspectRatio"] == "3:2"
        assert out.image == prompt_image("a quiet harbour at dawn")
    assert out.usage == VLMUsage(requests=1, prompt_tokens=10, completion_tokens=5, usd=0.04)
    assert t2i.generator() == f"{server.backend}:test-t2i"


def test_api_cache_key_holds_prompt_size_and_seed(server, tmp_path):
    size = "64x64" if server.backend == "openai" else "1024x1024"
    cfg = api_config(server, tmp_path, size)
    base = TextToImageRequest("a red kite", 1, size)
    t2i = make_text_to_image(cfg)
    t2i.render([base])
    again = t2i.render([base, TextToImageRequest("a red kite", 2, size), TextToImageRequest("a blue kite", 1, size)])
    t2i.close()
    assert again[0].usage == VLMUsage(cache_hits=1)  # the same request: replayed, not sent
    assert [r.usage.requests for r in again[1:]] == [1, 1]  # another seed or prompt: sent
    assert len(server.requests) == 3
    if server.backend == "openai":  # the size is part of the key too
        (other,) = make_text_to_image(api_config(server, tmp_path, "32x32")).render([TextToImageRequest("a red kite", 1, "32x32")])
        assert other.usage.requests == 1 and len(server.requests) == 4


def test_api_http_500_after_retries_is_a_reason(server, tmp_path):
    server.set_default(http_error(500))
    (out,) = make_text_to_image(api_config(server, tmp_path)).render([TextToImageRequest("a storm", 1)])
    assert out.image is None and out.reason.startswith("vlm_http_500"), out.reason
    assert out.usage.requests == 2 and len(server.requests) == 2  # first try + max_retries=1


def test_api_budget_stops_sending(server, tmp_path):
    cfg = api_config(server, tmp_path, max_in_flight=1, cache=False)
    t2i = make_text_to_image(cfg, Budget(0.04))
    first, second = t2i.render([TextToImageRequest("one", 1), TextToImageRequest("two", 1)])
    t2i.close()
    assert first.image is not None and first.usage.usd == pytest.approx(0.04)
    assert second.image is None and second.reason.startswith("budget_exhausted"), second.reason
    assert second.usage.requests == 0 and len(server.requests) == 1
