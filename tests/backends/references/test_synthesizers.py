"""The three reference synthesizers through the one factory, on real photos: composite returns
exactly the composite maths' pixels, diffusers exactly what its pipeline returns for the same
mask-built inputs and prompts, api exactly what a loopback images-edit endpoint returns for the
mask-built input it was sent, with its usage and under a spend budget. Each names itself as the
`reference_backend` column and `_run.json` always have, and none raises for one bad sample."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from curation.backends.budget import Budget
from curation.backends.references import ReferenceInput, SynthesisConfig, Synthesized, make_synthesizer
from curation.backends.references.composite import background_reference, cutout_reference
from curation.backends.references.editor_input import EditorInput
from curation.backends.usage import VLMUsage
from curation.core.stage import ModelRef
from curation.media.jpeg import encode_jpeg
from curation.regions.roe import box_mask

from tests.fixtures.media import image_path
from tests.fixtures.vlm_servers import http_error, image_ok, invert_image, openai_server

# diffusers' schedulers call np.array(tensor, copy=False), which numpy 2 warns about; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")

COMPOSITE = dict(backend="composite", background="white", margin=0.05, inpaint="telea", inpaint_radius=5, dilate_px=7)
PIX2PIX = dict(model="tiny:instruct-pix2pix", steps=2, device="cpu", guidance_scale=7.5, image_guidance_scale=1.5,
               true_cfg_scale=None, negative_prompt=None)


def photo(name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """A bundled photo as RGB, shrunk to (width, height) when given."""
    bgr = cv2.imread(str(image_path(name)), cv2.IMREAD_COLOR)
    if size is not None:
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def item(frame: np.ndarray, mask: np.ndarray, mode: str = "object", prompt: str | None = "Extract the cat.") -> ReferenceInput:
    """The frame as the stage hands it over: decoded from the stored JPEG."""
    return ReferenceInput(frame=decode(encode_jpeg(frame, 95)), mask=mask, mode=mode, prompt=prompt, cache_salt="template-hash")


def synthesizer(budget: Budget | None = None, **fields):
    return make_synthesizer(SynthesisConfig(**{**COMPOSITE, **fields}), budget)


@pytest.fixture(scope="module")
def cat_and_cup() -> list[ReferenceInput]:
    """The cat's head (object mode) and the coffee cup (background mode), masked by hand."""
    cat = photo("skimage/chelsea.png")
    head = np.zeros(cat.shape[:2], np.uint8)
    cv2.ellipse(head, (240, 120), (110, 80), 0, 0, 360, 1, -1)
    coffee = photo("skimage/coffee.png")
    return [item(cat, head.astype(bool)), item(coffee, box_mask((180, 100, 430, 330), 400, 600), mode="background")]


# ---- composite ---------------------------------------------------------------------------------


def test_composite_returns_the_composite_maths_pixels(cat_and_cup):
    synth = synthesizer(background="0,128,255", margin=0.1, inpaint="ns", inpaint_radius=3, dilate_px=4)
    synth.open()
    cat, cup = synth.synthesize(cat_and_cup)
    assert cat.reason is None and cat.usage is None and cup.reason is None and cup.usage is None
    expected_cat = cutout_reference(cat_and_cup[0].frame, cat_and_cup[0].mask, background=(0, 128, 255), margin=0.1)
    expected_cup = background_reference(cat_and_cup[1].frame, cat_and_cup[1].mask, method="ns", radius=3, dilate_px=4)
    assert np.array_equal(cat.image, expected_cat) and np.array_equal(cup.image, expected_cup)


def test_composite_names_no_model_and_takes_no_prompt():
    synth = synthesizer()
    assert synth.model() is None and synth.describe() == "composite" and not synth.takes_prompt


def test_composite_failure_is_that_sample_s_reason(cat_and_cup):
    good = cat_and_cup[0]
    bad = ReferenceInput(frame=good.frame, mask=good.mask[:-1], mode="object")
    first, second = synthesizer().synthesize([bad, good])
    assert first.image is None and first.reason.startswith("ValueError: mask of shape"), first.reason
    assert second.reason is None and second.image is not None


# ---- diffusers ---------------------------------------------------------------------------------


def test_diffusers_returns_its_pipeline_s_edits_and_is_flagged_random():
    pytest.importorskip("diffusers")
    from curation.backends.diffusers_edit import DiffusersEditConfig, DiffusersEditor

    cat, coffee = photo("skimage/chelsea.png", (100, 70)), photo("skimage/coffee.png", (90, 50))
    items = [item(cat, box_mask((20, 10, 80, 60), 70, 100), prompt="make the cat blue"),
             item(coffee, box_mask((30, 10, 60, 40), 50, 90), mode="background", prompt="remove the cup")]
    synth = synthesizer(backend="diffusers", diffusers=PIX2PIX)
    with pytest.raises(RuntimeError, match="before open"):  # building it loaded nothing
        synth.synthesize(items)
    synth.open()
    made = synth.synthesize(items)
    shown = EditorInput(background=(255, 255, 255), margin=0.05, dilate_px=7)  # COMPOSITE's settings
    inputs = [shown.image(i) for i in items]
    assert inputs[0].shape == cutout_reference(items[0].frame, items[0].mask).shape != items[0].frame.shape  # the crop
    direct = DiffusersEditor(DiffusersEditConfig(**PIX2PIX)).edit(inputs, [i.prompt for i in items])
    for result, expected, given in zip(made, direct, inputs, strict=True):
        assert result.reason is None and result.usage is None
        assert result.image.shape == given.shape  # the editor's output comes back at its input's size
        np.testing.assert_array_equal(result.image, expected)
    assert synth.model() == ModelRef(id="diffusers:tiny:instruct-pix2pix", random_weights=True)
    assert synth.describe() == "diffusers:tiny:instruct-pix2pix (RANDOM WEIGHTS)"


def test_diffusers_a_sample_whose_input_cannot_be_built_fails_alone():
    pytest.importorskip("diffusers")
    synth = synthesizer(backend="diffusers", diffusers=PIX2PIX)
    synth.open()
    frame = photo("skimage/chelsea.png", (100, 70))
    good = item(frame, np.ones((70, 100), bool), prompt="a")
    unreadable = ReferenceInput(frame=frame.astype(np.float32), mask=good.mask, mode="object", prompt="b")
    empty = ReferenceInput(frame=frame, mask=np.zeros((70, 100), bool), mode="background", prompt="c")
    made = synth.synthesize([good, unreadable, empty])
    assert made[0].reason is None and made[0].image.shape == frame.shape
    assert made[1].image is None and made[1].reason.startswith("ValueError: expected an (H, W, 3) uint8"), made[1].reason
    assert made[2].image is None and made[2].reason.startswith("ValueError: empty mask"), made[2].reason


# ---- api ---------------------------------------------------------------------------------------


def api(server, tmp_path, **overrides) -> dict:
    return dict(backend="openai", model="editor", base_url=server.url, max_retries=1, backoff_initial_s=0.01,
                backoff_max_s=0.05, timeout_s=10, usd_per_image=0.04, cache_dir=str(tmp_path / "image-cache"), **overrides)


def test_api_returns_the_edited_image_with_its_usage(cat_and_cup, tmp_path):
    with openai_server(default=image_ok()) as server:  # the "edit" inverts the image
        synth = synthesizer(backend="api", api=api(server, tmp_path))
        synth.open()
        (made,) = synth.synthesize(cat_and_cup[:1])
        synth.close()
        (sent,) = server.requests
    uploaded = server.image_of(sent.body)
    cutout = cutout_reference(cat_and_cup[0].frame, cat_and_cup[0].mask, background=(255, 255, 255), margin=0.05)
    assert uploaded[:8] == b"\x89PNG\r\n\x1a\n" and np.array_equal(decode(uploaded), cutout)  # the mask cutout, lossless
    assert server.prompt_of(sent.body) == "Extract the cat."
    assert made.reason is None and np.array_equal(made.image, decode(invert_image(uploaded)))
    assert made.usage.model_dump() == VLMUsage(requests=1, prompt_tokens=10, completion_tokens=5, usd=0.04).model_dump()
    assert synth.model() == ModelRef(id="api:openai:editor") and synth.describe() == "api:openai:editor"


def test_api_background_mode_uploads_the_frame_with_its_foreground_blanked(cat_and_cup, tmp_path):
    cup = cat_and_cup[1]
    with openai_server(default=image_ok()) as server:
        synth = synthesizer(backend="api", api=api(server, tmp_path), background="gray", dilate_px=3)
        synth.open()
        (made,) = synth.synthesize([cup])
        synth.close()
        uploaded = decode(server.image_of(server.requests[0].body))
    assert made.reason is None and uploaded.shape == cup.frame.shape
    assert (uploaded[cup.mask] == 128).all()  # the cup, painted plain gray
    far = ~cv2.dilate(cup.mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)  # beyond the 3 px growth
    assert np.array_equal(uploaded[far], cup.frame[far])  # the scene around it untouched


def test_api_failures_keep_their_reason_and_usage(cat_and_cup, tmp_path):
    with openai_server(default=http_error(500)) as server:
        synth = synthesizer(backend="api", api=api(server, tmp_path))
        synth.open()
        (failed,) = synth.synthesize(cat_and_cup[:1])
        server.reset(default=image_ok(lambda _: b"\x89PNG\r\n\x1a\n-not-really"))
        (bad,) = synth.synthesize(cat_and_cup[1:])
        synth.close()
    assert failed.image is None and failed.reason.startswith("vlm_http_500") and failed.usage.requests == 2
    assert bad.image is None and bad.reason.startswith("image_edit_bad_output") and bad.usage.requests == 2


def test_api_spends_within_the_budget(cat_and_cup, tmp_path):
    budget = Budget(max_usd=0.04)
    with openai_server(default=image_ok()) as server:
        synth = synthesizer(budget, backend="api", api=api(server, tmp_path, max_in_flight=1, cache=False))
        synth.open()
        first, second = synth.synthesize(cat_and_cup)
        synth.close()
        assert len(server.requests) == 1
    assert first.reason is None and budget.spent() == pytest.approx(0.04)
    assert second.image is None and second.reason.startswith("budget_exhausted: spent $0.0400 of $0.0400"), second.reason


# ---- config ------------------------------------------------------------------------------------


def test_config_names_what_a_backend_is_missing_and_checks_the_colour():
    with pytest.raises(ValidationError, match=r"reference\.backend=api needs reference\.api"):
        SynthesisConfig(**{**COMPOSITE, "backend": "api"})
    with pytest.raises(ValidationError, match=r"reference\.backend=diffusers needs reference\.diffusers\.model"):
        SynthesisConfig(**{**COMPOSITE, "backend": "diffusers"})
    with pytest.raises(ValidationError, match="background 'teal'"):
        SynthesisConfig(**{**COMPOSITE, "background": "teal"})


def test_an_outcome_is_an_image_or_a_reason():
    with pytest.raises(ValueError):
        Synthesized()
    with pytest.raises(ValueError):
        Synthesized(image=np.zeros((2, 2, 3), np.uint8), reason="both")
