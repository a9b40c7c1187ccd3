"""The `reference` stage on grounded real photos (hand-made masks): composite cutouts and inpainted
backgrounds become quads, unfit sizes and ungrounded rows are dropped or failed with a reason, the
`api` backend turns what a loopback OpenAI images-edit endpoint returns into the reference within
the stage's budget, and the `diffusers` backend a tiny random pipeline's edit, flagged as such."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from curation.backends.references.composite import background_reference, cutout_reference
from curation.core import media_store
from curation.core.config import compose
from curation.core.schema import arrow_schema, make_sample_id, rows_to_table
from curation.core.stage import ModelRef
from curation.media.jpeg import encode_jpeg
from curation.prompts.templates import load_template
from curation.regions.roe import box_mask, encode_mask_png
from curation.sources.edit_datasets import EditSourceRow
from curation.stages.ground_edit import GroundEditColumns
from curation.stages.reference import Reference

from tests.fixtures.media import EXAMPLES
from tests.fixtures.vlm_servers import http_error, image_ok, invert_image, openai_server

SCHEMA = media_store.inlined_schema(arrow_schema(EditSourceRow, GroundEditColumns))  # media as bytes: no run


def photo(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(EXAMPLES / "skimage" / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def ellipse_mask(height: int, width: int, center: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, center, axes, 0, 0, 360, 1, -1)
    return mask.astype(bool)


def grounded_row(name: str, mask: np.ndarray | None, mode: str = "object", label: str = "cat") -> dict:
    """A row as ground_edit leaves it: the target's first frame (JPEG), its mask and the mode."""
    frame = photo(name)
    uri = str(EXAMPLES / "skimage" / name)
    return dict(sample_id=make_sample_id("pair", uri, mode, label), kind="pair", source_uri=uri, target_uri=uri,
                instruction=f"Edit the {label}.", category="local_change", dataset="test", edit_kind="pair",
                stage="ground_edit", stage_version="1", edit_mode=mode,
                edit_boxes=[{"image": "edited", "label": label, "box": [0, 0, 1, 1], "answer": [0, 0, 1, 1]}],
                src_frame=encode_jpeg(frame, 95), tgt_frame=encode_jpeg(frame, 95),
                mask_tgt=None if mask is None else encode_mask_png(mask))


def stage(**fields) -> Reference:
    """reference with its packaged defaults, `fields` overriding them."""
    options = OmegaConf.to_container(compose()["reference"], resolve=True)
    return Reference(**{**options, **fields})


def run(rows: list[dict], **fields) -> list[dict]:
    return stage(**fields)(rows_to_table(rows, SCHEMA)).to_pylist()


@pytest.fixture
def cat() -> dict:
    """chelsea.png (451x300) with the cat's head masked."""
    return grounded_row("chelsea.png", ellipse_mask(300, 451, (240, 120), (110, 80)))


# ---- composite ---------------------------------------------------------------------------------


def test_object_mode_makes_a_quad_whose_reference_is_the_cutout(cat):
    (out,) = run([cat])
    assert out["status"] == "ok", out["reason"]
    assert out["kind"] == "quad" and out["stage"] == "reference" and out["reference_backend"] == "composite"
    assert out["sample_id"] != cat["sample_id"] and out["parent_ids"] == [cat["sample_id"]]
    assert out["tgt_frame"] == cat["tgt_frame"] and out["instruction"] == cat["instruction"]  # the input rides along
    frame, mask = decode(cat["tgt_frame"]), ellipse_mask(300, 451, (240, 120), (110, 80))
    expected = cutout_reference(frame, mask, background=(255, 255, 255), margin=0.05)
    reference = decode(out["reference"])
    assert out["reference"][:8] == b"\x89PNG\r\n\x1a\n" and np.array_equal(reference, expected)
    assert (out["reference_width"], out["reference_height"]) == (reference.shape[1], reference.shape[0])
    assert out["reference_usage"] is None


def test_the_quad_id_is_deterministic(cat):
    assert run([cat])[0]["sample_id"] == run([cat])[0]["sample_id"]


def test_background_mode_inpaints_the_foreground_out_of_the_full_frame():
    mask = box_mask((180, 100, 430, 330), 400, 600)  # the coffee cup
    row = grounded_row("coffee.png", mask, mode="background", label="cup")
    (out,) = run([row])
    assert out["status"] == "ok" and out["kind"] == "quad", out["reason"]
    frame, reference = decode(row["tgt_frame"]), decode(out["reference"])
    assert reference.shape == frame.shape
    assert np.array_equal(reference, background_reference(frame, mask, method="telea", radius=5, dilate_px=7))
    assert not np.array_equal(reference[mask], frame[mask])  # the cup is gone


def test_a_sliver_reference_is_dropped_for_its_aspect():
    sliver = box_mask((20, 140, 430, 150), 300, 451)  # 410 x 10 px
    row = grounded_row("chelsea.png", sliver)
    (out,) = run([row], min_side=16)
    assert out["status"] == "dropped" and out["reason"].startswith("reference_aspect"), out["reason"]
    assert out["sample_id"] == row["sample_id"] and out["kind"] == "pair" and out["reference"] is None
    assert out["reference_width"] / out["reference_height"] > 3


def test_a_small_reference_is_dropped_as_too_small():
    row = grounded_row("chelsea.png", box_mask((200, 100, 230, 130), 300, 451))  # 30 x 30 px
    (out,) = run([row])
    assert out["status"] == "dropped" and out["reason"].startswith("reference_too_small"), out["reason"]
    assert out["reference"] is None and max(out["reference_width"], out["reference_height"]) < 128


def test_a_row_without_a_mask_is_an_error_and_does_not_stop_the_batch(cat):
    ungrounded = grounded_row("coffee.png", None)
    out = run([ungrounded, cat])
    assert out[0]["status"] == "error" and out[0]["reason"].startswith("not_grounded"), out[0]["reason"]
    assert out[0]["sample_id"] == ungrounded["sample_id"] and out[0]["reference"] is None
    assert out[1]["status"] == "ok"


@pytest.mark.parametrize("mask_png, reason", [
    (encode_mask_png(np.zeros((300, 451), bool)), "empty_mask"),
    (encode_jpeg(np.zeros((300, 451, 3), np.uint8), 90), "decode_failed: mask_tgt"),  # not a mask PNG
])
def test_an_unusable_mask_fails_with_a_stable_reason(cat, mask_png, reason):
    (out,) = run([dict(cat, mask_tgt=mask_png)])
    assert out["status"] == "error" and out["reason"].startswith(reason), out["reason"]


# ---- api ---------------------------------------------------------------------------------------


def api(server, tmp_path, **overrides) -> dict:
    return dict(backend="openai", model="editor", base_url=server.url, max_retries=1, backoff_initial_s=0.01,
                backoff_max_s=0.05, timeout_s=10, usd_per_image=0.04, cache_dir=str(tmp_path / "image-cache"),
                **overrides)


def test_api_the_returned_image_becomes_the_reference(cat, tmp_path):
    with openai_server(default=image_ok()) as server:  # the "edit" inverts the image
        (out,) = run([cat], backend="api", api=api(server, tmp_path))
        (sent,) = server.requests
    assert sent.path == "/v1/images/edits" and server.image_of(sent.body) == cat["tgt_frame"]
    assert "Extract the cat" in server.prompt_of(sent.body)  # the grounded label names the object
    assert out["status"] == "ok" and out["kind"] == "quad", out["reason"]
    assert np.array_equal(decode(out["reference"]), decode(invert_image(cat["tgt_frame"])))
    assert out["reference_backend"] == "api:openai:editor"
    usage = out["reference_usage"]
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (1, 10, 5)
    assert usage["usd"] == pytest.approx(0.04)


def test_api_http_500_after_retries_is_an_error(cat, tmp_path):
    with openai_server(default=http_error(500)) as server:
        (out,) = run([cat], backend="api", api=api(server, tmp_path))
        assert len(server.requests) == 2  # first try + max_retries=1
    assert out["status"] == "error" and out["reason"].startswith("vlm_http_500"), out["reason"]
    assert out["sample_id"] == cat["sample_id"] and out["reference"] is None
    assert out["reference_usage"]["requests"] == 2


def test_api_spend_is_capped_by_the_stage_budget(cat, tmp_path):
    """`max_usd` (top-level `budget.max_usd`) covers the api synthesizer: the second edit is not sent."""
    other = grounded_row("coffee.png", box_mask((180, 100, 430, 330), 400, 600), label="cup")
    with openai_server(default=image_ok()) as server:
        first, second = run([cat, other], backend="api", max_usd=0.04, api=api(server, tmp_path, max_in_flight=1, cache=False))
        assert len(server.requests) == 1
    assert first["status"] == "ok" and first["reference_usage"]["usd"] == pytest.approx(0.04)
    assert second["status"] == "error" and second["reason"].startswith("budget_exhausted"), second["reason"]
    assert second["reference_usage"]["requests"] == 0


def test_an_unknown_mode_fails_its_row_for_a_model_backend_and_is_a_cutout_for_composite(cat, tmp_path):
    """The `reference_edit` prompt exists for object and background edits only; composite takes no prompt."""
    odd = dict(cat, edit_mode="global")
    with openai_server(default=image_ok()) as server:
        failed, ok = run([odd, cat], backend="api", api=api(server, tmp_path))
        assert len(server.requests) == 1  # only the known mode was sent
    assert failed["status"] == "error" and "mode_must_be_object_or_background" in failed["reason"], failed["reason"]
    assert ok["status"] == "ok"
    (composite,) = run([odd])
    assert composite["status"] == "ok" and composite["reference_backend"] == "composite"


# ---- diffusers ---------------------------------------------------------------------------------

PIX2PIX = dict(model="tiny:instruct-pix2pix", steps=2, device="cpu", guidance_scale=7.5, image_guidance_scale=1.5,
               true_cfg_scale=None, negative_prompt=None)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")
def test_diffusers_the_pipeline_s_edit_becomes_the_reference_flagged_random():
    pytest.importorskip("diffusers")
    from curation.backends.diffusers_edit import DiffusersEditConfig, DiffusersEditor

    small = cv2.resize(photo("chelsea.png"), (100, 70), interpolation=cv2.INTER_AREA)
    mask = ellipse_mask(70, 100, (50, 30), (25, 18))
    row = dict(grounded_row("chelsea.png", mask), tgt_frame=encode_jpeg(small, 95))
    reference = stage(backend="diffusers", diffusers=PIX2PIX, min_side=16)
    assert reference.models() == {"reference": ModelRef(id="diffusers:tiny:instruct-pix2pix", random_weights=True)}
    (out,) = reference(rows_to_table([row], SCHEMA)).to_pylist()
    assert out["status"] == "ok" and out["kind"] == "quad", out["reason"]
    assert out["reference_backend"] == "diffusers:tiny:instruct-pix2pix (RANDOM WEIGHTS)" and out["reference_usage"] is None
    prompt = load_template("reference_edit").render(mode="object", label="cat", background="white")
    (expected,) = DiffusersEditor(DiffusersEditConfig(**PIX2PIX)).edit([decode(row["tgt_frame"])], [prompt])
    assert np.array_equal(decode(out["reference"]), expected)  # PNG: lossless


def test_models_name_the_backend_as_run_json_records_it(tmp_path):
    assert stage().models() == {}
    editor = dict(backend="gemini", model="gemini-2.5-flash-image")
    assert stage(backend="api", api=editor).models() == {"reference": ModelRef(id="api:gemini:gemini-2.5-flash-image")}
