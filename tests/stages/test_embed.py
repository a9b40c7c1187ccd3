"""Embedding backends: tiny random CLIPs (open_clip and transformers) loaded from a local directory
through `resolve_model`, as a real checkpoint would be; the phash backend on real photos against
the bundled photos' duplicate ground truth (tests/data/ground_truth.json)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from curation.backends.embed import EmbedConfig, make_embedder, open_clip_source
from curation.backends.models import resolve_model

from tests.fixtures.media import bundled_images

DEDUP_THRESHOLD = 0.95  # the dedup stage's default cosine, chosen for CLIP
PHASH_THRESHOLD = 0.88  # pHash's <= 10 of 64 bits on the phash scale (see PerceptualEmbedder)
TINY = {"open_clip": "tiny:open-clip", "transformers": "tiny:clip"}


@pytest.fixture(scope="module", params=sorted(TINY))
def clip_cfg(request) -> EmbedConfig:
    """A tiny CLIP by local path: the same loader path as a downloaded checkpoint."""
    path = resolve_model(TINY[request.param]).path
    assert not resolve_model(path).random_weights  # a local path is taken as given
    return EmbedConfig(backend=request.param, model=path, batch_size=2, device="cpu")


@pytest.fixture(scope="module")
def clip(clip_cfg):
    return make_embedder(clip_cfg)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """Odd sizes, including one 3 pixels high that could pass for channels-first."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(480, 640), (37, 100), (3, 40), (224, 224), (900, 200)]]


def norms(vectors: np.ndarray) -> np.ndarray:
    return np.linalg.norm(vectors.astype(np.float32), axis=1)


# ---- CLIP backends -----------------------------------------------------------------------------
def test_image_embeddings_are_unit_float16_and_deterministic(clip, clip_cfg, images):
    vectors = clip.embed_images(images)
    assert vectors.dtype == np.float16 and vectors.shape == (len(images), clip.dim) == (5, 16)
    np.testing.assert_allclose(norms(vectors), 1, atol=1e-2)
    np.testing.assert_array_equal(clip.embed_images(images), vectors)
    np.testing.assert_array_equal(make_embedder(clip_cfg).embed_images(images), vectors)  # a fresh load
    assert len({row.tobytes() for row in vectors}) == len(images)


def test_batches_give_the_vectors_of_one_image_at_a_time(clip, images):
    batched = clip.embed_images(images)
    single = np.concatenate([clip.embed_images([image]) for image in images])
    np.testing.assert_allclose(batched.astype(np.float32), single.astype(np.float32), atol=2e-3)


def test_text_embeddings(clip):
    texts = ["a cat", "a photo of a dog running on the beach at sunset", "x" * 300]  # the last overflows 77 tokens
    vectors = clip.embed_texts(texts)
    assert vectors.dtype == np.float16 and vectors.shape == (3, clip.dim)
    np.testing.assert_allclose(norms(vectors), 1, atol=1e-2)
    single = np.concatenate([clip.embed_texts([text]) for text in texts])  # no padding when alone
    np.testing.assert_allclose(vectors.astype(np.float32), single.astype(np.float32), atol=2e-3)


def test_empty_inputs_and_bad_images(clip):
    assert clip.embed_images([]).shape == clip.embed_texts([]).shape == (0, clip.dim)
    with pytest.raises(ValueError, match=r"image 1: expected RGB uint8"):
        clip.embed_images([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])


def test_tiny_reference_is_tagged_as_random(clip_cfg):
    embedder = make_embedder(clip_cfg.model_copy(update={"model": TINY[clip_cfg.backend]}))
    assert embedder.model_ref().random_weights and embedder.model_ref().id == TINY[clip_cfg.backend]


def test_open_clip_pretrained_tag_only_for_builtin_names(tmp_path):
    assert open_clip_source(EmbedConfig()) == ("ViT-B-32", "laion2b_s34b_b79k")
    assert open_clip_source(EmbedConfig(model="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")) == (
        "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None)
    assert open_clip_source(EmbedConfig(model=str(tmp_path))) == (f"local-dir:{tmp_path}", None)


def test_config_is_strict():
    with pytest.raises(ValidationError):
        EmbedConfig(batch_sise=8)
    with pytest.raises(ValidationError):
        EmbedConfig(device="gpu")


# ---- phash -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phash():
    return make_embedder(EmbedConfig(backend="phash"))


def photo(name: str) -> np.ndarray:
    paths = [p for folder in ("skimage", "opencv-doc") for p in bundled_images(folder) if p.stem == name]
    assert paths, f"{name} is not a bundled photo"
    return cv2.cvtColor(cv2.imread(str(paths[0]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def cosine(phash, a: np.ndarray, b: np.ndarray) -> float:
    va, vb = phash.embed_images([a, b]).astype(np.float32)
    return float(va @ vb)


def test_phash_jpeg_reencode_and_copy_are_duplicates(phash):
    cat = photo("chelsea")
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(cat, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 75])
    assert ok
    reencoded = cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert cosine(phash, cat, reencoded) > DEDUP_THRESHOLD  # measured 0.99999
    assert cosine(phash, cat, cat.copy()) == pytest.approx(1, abs=1e-3)


@pytest.mark.parametrize("pair", [("basketball1", "basketball2"), ("rubberwhale1", "rubberwhale2")])
def test_phash_consecutive_video_frames_are_duplicates(phash, pair):
    assert cosine(phash, *map(photo, pair)) > DEDUP_THRESHOLD  # measured 0.996 and 1.000


def test_phash_unrelated_photos_are_far_below_the_threshold(phash):
    """The ground truth's singletons: measured at most 0.50 against one another."""
    names = ["astronaut", "rocket", "retina", "coins", "text", "clock_motion", "cell", "grass", "gravel", "brick"]
    vectors = phash.embed_images([photo(name) for name in names]).astype(np.float32)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -1)
    assert similarity.max() < PHASH_THRESHOLD - 0.2


@pytest.mark.parametrize("pair", [("leuvenA", "leuvenB"), ("box", "box_in_scene")])
def test_phash_hard_negatives_are_not_duplicates(phash, pair):
    """Partly overlapping panoramas, and an object vs a scene holding it: measured 0.60 and -0.14."""
    assert cosine(phash, *map(photo, pair)) < PHASH_THRESHOLD


def test_phash_flat_images_are_unit_and_duplicates_of_each_other(phash):
    black, grey = np.zeros((40, 60, 3), np.uint8), np.full((300, 200, 3), 128, np.uint8)
    vectors = phash.embed_images([black, grey]).astype(np.float32)
    np.testing.assert_allclose(norms(vectors), 1, atol=1e-3)
    assert float(vectors[0] @ vectors[1]) == pytest.approx(1, abs=1e-3)


def test_phash_embeds_no_text(phash):
    with pytest.raises(NotImplementedError, match="images only"):
        phash.embed_texts(["a cat"])
