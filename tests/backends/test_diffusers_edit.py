"""The diffusers editing backend on tiny random pipelines built offline, saved, and loaded back
through `resolve_model` + `DiffusionPipeline.from_pretrained`: results come back at each input's
size, the same seed gives the same result whatever the batch, options the pipeline does not take
are config errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("diffusers")

from curation.backends.diffusers_edit import DiffusersEditConfig, DiffusersEditor
from curation.backends.models import resolve_model

from tests.fixtures.media import image_path

# diffusers' schedulers call np.array(tensor, copy=False), which numpy 2 warns about; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")

PIX2PIX = dict(model="tiny:instruct-pix2pix", steps=2, device="cpu", guidance_scale=7.5, image_guidance_scale=1.5,
               true_cfg_scale=None, negative_prompt=None)


def real_photo(name: str, height: int, width: int) -> np.ndarray:
    """A real photo shrunk to a small size (RGB uint8): the tiny pipelines' cost grows with pixels."""
    bgr = cv2.imread(str(image_path(name)), cv2.IMREAD_COLOR)
    return cv2.cvtColor(cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """Two photos at two sizes, neither a multiple of the pipelines' 8-pixel grid."""
    return [real_photo("skimage/chelsea.png", 70, 100), real_photo("skimage/coffee.png", 50, 90)]


@pytest.fixture(scope="module")
def pix2pix() -> DiffusersEditor:
    return DiffusersEditor(DiffusersEditConfig(**PIX2PIX, batch_size=4))


def test_tiny_pipelines_are_built_saved_and_flagged_random():
    for name, cls in [("instruct-pix2pix", "StableDiffusionInstructPix2PixPipeline"), ("qwen-image-edit", "QwenImageEditPipeline")]:
        resolved = resolve_model(f"tiny:{name}")
        assert resolved.random_weights
        index = json.loads((Path(resolved.path) / "model_index.json").read_text())
        assert index["_class_name"] == cls
        assert resolve_model(resolved.path).path == resolved.path  # reusable as a plain local path


def test_pix2pix_edits_at_each_input_size_and_repeats_per_seed(pix2pix, images):
    cat, coffee = images
    prompts = ["make the cat blue", "remove the cup", "make the cat blue"]
    first = pix2pix.edit([cat, coffee, cat], prompts)
    assert [im.shape for im in first] == [cat.shape, coffee.shape, cat.shape]
    assert all(im.dtype == np.uint8 for im in first)
    again = pix2pix.edit([cat, coffee, cat], prompts)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)  # the same call twice: bit for bit
    # Elsewhere in a batch or alone: the same per-image generator, so the same edit, up to the
    # float rounding of batched CPU kernels (at most one level on a few pixels).
    alone = pix2pix.edit([cat], ["make the cat blue"])[0]
    for other in (first[2], alone):
        assert np.abs(other.astype(int) - first[0]).max() <= 1
    assert np.abs(first[0].astype(int) - cat).mean() > 1  # the pipeline did produce a new image


def test_another_seed_gives_another_edit(images):
    cat = images[0]
    seed0 = DiffusersEditor(DiffusersEditConfig(**PIX2PIX, seed=0)).edit([cat], ["make the cat blue"])[0]
    seed1 = DiffusersEditor(DiffusersEditConfig(**PIX2PIX, seed=1)).edit([cat], ["make the cat blue"])[0]
    assert np.abs(seed0.astype(int) - seed1).mean() > 1


@pytest.mark.slow  # ~15 s of CPU: the pipeline encodes every input at ~1 MP, however small
def test_qwen_image_edit_pipeline():
    """The real target's pipeline class, batched (both images share a size, so one call), and
    repeatable per seed. `working_size: input` keeps the output, not the encoding, small."""
    cat, coffee = real_photo("skimage/chelsea.png", 60, 90), real_photo("skimage/coffee.png", 60, 90)
    editor = DiffusersEditor(DiffusersEditConfig(model="tiny:qwen-image-edit", steps=2, device="cpu", working_size="input", batch_size=2))
    assert type(editor.pipe).__name__ == "QwenImageEditPipeline"
    first = editor.edit([cat, coffee], ["make the cat blue", "remove the cup"])
    assert [im.shape for im in first] == [cat.shape, coffee.shape]
    assert np.abs(first[0].astype(int) - cat).mean() > 1
    again = editor.edit([cat], ["make the cat blue"])[0]
    assert np.abs(again.astype(int) - first[0]).max() <= 1


def test_options_the_pipeline_does_not_take_are_config_errors():
    with pytest.raises(ValueError, match="true_cfg_scale"):
        DiffusersEditor(DiffusersEditConfig(**{**PIX2PIX, "true_cfg_scale": 4.0}))


def test_config_is_strict():
    with pytest.raises(ValueError):
        DiffusersEditConfig(model="tiny:instruct-pix2pix", device="gpu")
    with pytest.raises(ValueError):
        DiffusersEditConfig(model="tiny:instruct-pix2pix", stepz=3)
    with pytest.raises(ValueError):
        DiffusersEditConfig(model="tiny:instruct-pix2pix", dtype="int8")


def test_mismatched_inputs_are_errors(pix2pix, images):
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        pix2pix.edit(images, ["one"])
    with pytest.raises(ValueError, match="uint8 RGB"):
        pix2pix.edit([images[0].astype(np.float32)], ["one"])
    assert pix2pix.edit([], []) == []
