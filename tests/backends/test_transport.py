"""One transport config for the VLM and the image-edit backends: every transport field is declared
once (the image edit only changes four defaults, keeping each field's limits and description),
the user-facing keys `vlm.*` and `reference.api.*` compose as they always did, each kind keeps its
own response cache, and an image edit is stored under the cache key it always had."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf
from pydantic import ValidationError

from curation.backends.image_edit import EditedImage, ImageEditConfig, ImageEditReply, ImageEditRequest, make_image_editor
from curation.backends.transport import TransportConfig
from curation.backends.vlm import VLMConfig, json_schema_of
from curation.backends.vlm_cache import VLMCache, cache_key
from curation.core.config import CONFIG_DIR, build_stage, compose

from tests.fixtures.vlm_servers import image_ok, openai_server

TRANSPORT = set(TransportConfig.model_fields)
# What the image edit overrides: the default only (an edit takes tens of seconds and is billed per image).
IMAGE_EDIT_DEFAULTS = {"max_in_flight": 4, "timeout_s": 180.0, "backoff_max_s": 60.0, "image_max_side": 1536}


def test_transport_fields_are_declared_once():
    # A subclass's own annotations are what it declares; `backend` is narrowed to the APIs each speaks.
    assert TRANSPORT & set(VLMConfig.__annotations__) == {"backend"}
    assert TRANSPORT & set(ImageEditConfig.__annotations__) == {"backend", *IMAGE_EDIT_DEFAULTS}
    for name in TRANSPORT - {"backend"}:
        shared = TransportConfig.model_fields[name]
        for config in (VLMConfig, ImageEditConfig):
            field = config.model_fields[name]
            assert (field.annotation, field.description, field.metadata) == (shared.annotation, shared.description, shared.metadata), \
                (config.__name__, name)


def test_each_config_keeps_its_own_defaults_and_the_shared_limits():
    vlm = VLMConfig(backend="openai", model="m")
    edit = ImageEditConfig(backend="openai", model="m")
    for name, default in IMAGE_EDIT_DEFAULTS.items():
        assert getattr(edit, name) == default and getattr(vlm, name) == TransportConfig.model_fields[name].default
    assert {name: getattr(vlm, name) for name in IMAGE_EDIT_DEFAULTS} == {
        "max_in_flight": 8, "timeout_s": 60.0, "backoff_max_s": 30.0, "image_max_side": 1024}
    assert {name: getattr(edit, name) for name in TRANSPORT - {*IMAGE_EDIT_DEFAULTS}} == \
           {name: getattr(vlm, name) for name in TRANSPORT - {*IMAGE_EDIT_DEFAULTS}}
    with pytest.raises(ValidationError, match="greater than 0"):
        ImageEditConfig(backend="openai", model="m", timeout_s=0)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        ImageEditConfig(backend="openai", model="m", max_in_flight=0)
    with pytest.raises(ValidationError, match="greater than or equal to 16"):
        ImageEditConfig(backend="gemini", model="m", image_max_side=8)
    with pytest.raises(ValidationError, match="backend"):
        ImageEditConfig(backend="local", model="m")  # a VLM backend, not an image editor


def test_the_keys_users_set_compose_unchanged():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no key has moved
        cfg = compose(["reference.backend=api", "reference.api.backend=openai", "reference.api.model=gpt-image-1.5",
                       "reference.api.timeout_s=30", "reference.api.max_in_flight=2", "reference.api.cache_dir=/tmp/edits",
                       "vlm=openai", "vlm.timeout_s=12", "vlm.max_in_flight=3", "vlm.image_max_side=512"])
        stage = build_stage("reference", cfg)
        vlm = VLMConfig(**OmegaConf.to_container(cfg.vlm, resolve=True))
    assert (stage.api.timeout_s, stage.api.max_in_flight, stage.api.cache_dir) == (30.0, 2, "/tmp/edits")
    assert (stage.api.backoff_max_s, stage.api.image_max_side) == (60.0, 1536)  # the image edit's defaults
    assert (vlm.timeout_s, vlm.max_in_flight, vlm.image_max_side, vlm.backoff_max_s) == (12.0, 3, 512, 30.0)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIG_DIR / "vlm").glob("*.yaml")))
def test_every_packaged_vlm_file_is_a_valid_config(name):
    VLMConfig(**OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "vlm" / f"{name}.yaml"), resolve=True))


def test_each_kind_keeps_its_own_response_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path))
    assert VLMConfig(backend="openai", model="m").cache_location() == str(tmp_path / "vlm")
    assert ImageEditConfig(backend="openai", model="m").cache_location() == str(tmp_path / "image_edit")
    assert ImageEditConfig(backend="openai", model="m", cache_dir="s3://b/x").cache_location() == "s3://b/x"


def test_an_image_edit_is_stored_under_the_key_it_always_had(tmp_path):
    """The key holds the sampling settings an edit never had, at the values it was always written
    with (temperature 0, max_tokens 1024): edits paid for before the shared transport still hit."""
    ok, source = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    assert ok
    request = ImageEditRequest("Invert it.", source.tobytes(), cache_salt="template-hash")
    with openai_server(default=image_ok()) as server:
        cfg = ImageEditConfig(backend="openai", model="editor", base_url=server.url, cache_dir=str(tmp_path), size="1024x1024")
        with make_image_editor(cfg) as editor:
            (reply,) = editor.edit_many([request])
    assert isinstance(reply, ImageEditReply)
    key = cache_key(backend="openai", model="editor", base_url=server.url, prompt=request.prompt, images=[request.image],
                    schema=json_schema_of(EditedImage), temperature=0.0, max_tokens=1024, image_max_side=1536,
                    salt=json.dumps({"task": "image_edit", "size": "1024x1024", "salt": "template-hash"}, sort_keys=True))
    stored = json.loads(Path(VLMCache(str(tmp_path)).path(key)).read_text())
    assert stored["model_id"] == f"openai:editor@{server.url}" and stored["usage"]["usd"] == 0.0
