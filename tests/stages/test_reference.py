"""The `reference` stage on grounded real photos (hand-made masks): composite cutouts and inpainted
backgrounds become quads, unfit sizes and ungrounded rows are dropped or failed with a reason, the
`api` backend sends a loopback OpenAI images-edit endpoint the mask-built input and turns what it
returns into the reference within the stage's budget, and the `diffusers` backend a tiny random
pipeline's edit of the mask-built input, flagged as such."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from curation.backends.references import ReferenceInput
from curation.backends.references.composite import background_reference, cutout_reference
from curation.backends.references.editor_input import EditorInput
from curation.core import media_store
from curation.core.config import compose
from curation.core.schema import arrow_schema, make_sample_id, rows_to_table
from curation.core.stage import ModelRef
from curation.media.jpeg import encode_jpeg
from curation.prompts.templates import load_template
from curation.regions.roe import box_mask, encode_mask_png
from curation.shards.writer import sample_members, write_tar
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


def test_only_categories_passes_the_other_rows_on_unchanged(cat):
    # pipeline=erasure: only the add direction gets a reference; a remove triplet has no grounding
    # and must reach the shards as it came, not as a not_grounded error.
    add = dict(cat, category="local_add", status="ok")
    remove = dict(grounded_row("chelsea.png", None), sample_id="remove-1", category="local_remove", status="ok")
    quad, passed = run([add, remove], only_categories=["local_add"])
    assert quad["status"] == "ok" and quad["kind"] == "quad", quad["reason"]
    assert passed["sample_id"] == "remove-1" and passed["status"] == "ok" and passed["kind"] == remove["kind"]
    assert passed["reference"] is None and passed["stage"] == remove["stage"]
    (unscoped,) = run([remove])  # without the scope the same row is the stage's to ground
    assert unscoped["status"] == "error" and unscoped["reason"].startswith("not_grounded")


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


def test_a_reference_above_max_side_is_dropped_as_too_large():
    row = grounded_row("chelsea.png", box_mask((10, 10, 440, 290), 300, 451))  # the cutout: 451 x 300 px
    (out,) = run([row], max_side=400)
    assert out["status"] == "dropped" and out["reason"] == "reference_too_large: 451 > 400", out["reason"]
    assert out["reference"] is None and (out["reference_width"], out["reference_height"]) == (451, 300)
    (kept,) = run([row], max_side=None)
    assert kept["status"] == "ok", kept["reason"]


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
    assert sent.path == "/v1/images/edits"
    uploaded = server.image_of(sent.body)  # the editor is shown the mask cutout, not the frame
    cutout = cutout_reference(decode(cat["tgt_frame"]), ellipse_mask(300, 451, (240, 120), (110, 80)), margin=0.05)
    assert uploaded[:8] == b"\x89PNG\r\n\x1a\n" and np.array_equal(decode(uploaded), cutout)
    assert "shows a cat cut out" in server.prompt_of(sent.body)  # the grounded label names the object
    assert out["status"] == "ok" and out["kind"] == "quad", out["reason"]
    assert np.array_equal(decode(out["reference"]), decode(invert_image(uploaded)))
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
def test_diffusers_the_pipeline_edits_the_mask_cutout_and_is_flagged_random(cat):
    """Object mode: the pipeline is given the cat's mask cutout (cropped to its box plus the margin,
    white outside the mask), so the reference is its edit, at the cutout's size, not the frame's."""
    pytest.importorskip("diffusers")
    from curation.backends.diffusers_edit import DiffusersEditConfig, DiffusersEditor

    reference = stage(backend="diffusers", diffusers=PIX2PIX)
    assert reference.models() == {"reference": ModelRef(id="diffusers:tiny:instruct-pix2pix", random_weights=True)}
    (out,) = reference(rows_to_table([cat], SCHEMA)).to_pylist()
    assert out["status"] == "ok" and out["kind"] == "quad", out["reason"]
    assert out["reference_backend"] == "diffusers:tiny:instruct-pix2pix (RANDOM WEIGHTS)" and out["reference_usage"] is None
    assert out["generator"] == "tiny:instruct-pix2pix"  # the model id
    frame, mask = decode(cat["tgt_frame"]), ellipse_mask(300, 451, (240, 120), (110, 80))
    cutout = cutout_reference(frame, mask, background=(255, 255, 255), margin=0.05)
    assert cutout.shape[:2] != frame.shape[:2]
    assert (out["reference_height"], out["reference_width"]) == cutout.shape[:2]
    prompt = load_template("reference_edit").render(mode="object", label="cat", background="white")
    (expected,) = DiffusersEditor(DiffusersEditConfig(**PIX2PIX)).edit([cutout], [prompt])
    assert np.array_equal(decode(out["reference"]), expected)  # PNG: lossless


@pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")
def test_diffusers_background_mode_edits_the_frame_with_the_foreground_blanked():
    pytest.importorskip("diffusers")
    from curation.backends.diffusers_edit import DiffusersEditConfig, DiffusersEditor

    small = cv2.resize(photo("coffee.png"), (150, 100), interpolation=cv2.INTER_AREA)
    mask = box_mask((45, 25, 108, 83), 100, 150)  # the cup
    row = dict(grounded_row("coffee.png", mask, mode="background", label="cup"), tgt_frame=encode_jpeg(small, 95))
    (out,) = run([row], backend="diffusers", diffusers=PIX2PIX, min_side=16, background="gray")
    assert out["status"] == "ok" and out["kind"] == "quad", out["reason"]
    frame = decode(row["tgt_frame"])
    shown = EditorInput(background=(128, 128, 128), margin=0.05, dilate_px=7).image(
        ReferenceInput(frame=frame, mask=mask, mode="background"))
    assert (shown[mask] == 128).all() and np.array_equal(shown[:10], frame[:10])  # the cup blanked, the rest as is
    prompt = load_template("reference_edit").render(mode="background", label="cup", background="gray")
    (expected,) = DiffusersEditor(DiffusersEditConfig(**PIX2PIX)).edit([shown], [prompt])
    assert np.array_equal(decode(out["reference"]), expected)
    (unblanked,) = DiffusersEditor(DiffusersEditConfig(**PIX2PIX)).edit([frame], [prompt])
    assert not np.array_equal(expected, unblanked)  # what the pipeline was given shows in what it made


# ---- the shard json ----------------------------------------------------------------------------


def shard_json(quad: dict, tmp_path) -> dict:
    """The `json` member of `quad` as a written shard holds it, read back with webdataset."""
    import webdataset as wds

    height, width = decode(quad["tgt_frame"]).shape[:2]  # the sizes ingest records (source and target are one photo here)
    quad = dict(quad, width=width, height=height, target_width=width, target_height=height)
    tar = str(tmp_path / "train-000000.tar")
    write_tar(tar, [(quad["sample_id"], sample_members(quad))])
    (sample,) = list(wds.WebDataset(tar, shardshuffle=False).decode())
    assert sample["__key__"] == quad["sample_id"] and "ref.png" in sample
    return sample["json"]


def test_a_composite_quad_is_marked_a_cutout_in_the_shard_json(cat, tmp_path):
    """Its reference is the target's own pixels: a trainer must be able to tell, since a model can learn to copy it."""
    obj, background = run([cat, grounded_row("coffee.png", box_mask((180, 100, 430, 330), 400, 600), mode="background")])
    for quad in (obj, background):
        assert quad["status"] == "ok" and quad["reference_is_cutout"] is True, quad["reason"]
        (tmp_path / quad["edit_mode"]).mkdir()
        meta = shard_json(quad, tmp_path / quad["edit_mode"])
        assert meta["kind"] == "quad" and meta["reference_is_cutout"] is True and meta["reference_backend"] == "composite"
        assert meta["generator"] == "composite"


def test_an_editor_s_quad_is_not_marked_a_cutout(cat, tmp_path):
    with openai_server(default=image_ok()) as server:
        (quad,) = run([cat], backend="api", api=api(server, tmp_path))
    assert quad["status"] == "ok", quad["reason"]
    meta = shard_json(quad, tmp_path)
    assert meta["reference_is_cutout"] is False
    assert meta["generator"] == "openai:editor"  # the provider first: an auditor finds what its terms cover


def test_models_name_the_backend_as_run_json_records_it(tmp_path):
    assert stage().models() == {}
    editor = dict(backend="gemini", model="gemini-2.5-flash-image")
    assert stage(backend="api", api=editor).models() == {"reference": ModelRef(id="api:gemini:gemini-2.5-flash-image")}
