"""The local transformers VLM backend on the tiny random Qwen2-VL: real processor, batched
generate() and xgrammar-constrained decoding against the annotation schema."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from curation.backends.models import resolve_model
from curation.backends.tiny_vlm import build_tiny_qwen2_vl
from curation.backends.vlm import VLMConfig, VLMError, VLMReply, VLMRequest, make_vlm
from curation.prompts.transition import TransitionAnnotation

from tests.fixtures.media import bundled_images


def jpegs(n: int) -> list[bytes]:
    """The bundled skimage PNG photos in name order (cycled), JPEG-encoded."""
    paths = [p for p in bundled_images("skimage") if p.suffix == ".png"]
    out = []
    for i in range(n):
        img = Image.open(paths[i % len(paths)]).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """CURATE_CACHE in a temporary directory, so `tiny:qwen2-vl` is built fresh for this module."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("curate-cache")
        mp.setenv("CURATE_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def tiny_vlm(tiny_cache):
    cfg = VLMConfig(backend="local", model="tiny:qwen2-vl", cache=False, local_batch_size=8, max_tokens=256)
    with make_vlm(cfg) as vlm:
        yield vlm


def test_every_reply_parses_against_the_annotation_schema(tiny_vlm):
    images = jpegs(4)
    requests = [
        VLMRequest("Describe the change between frame 1 and frame 2.", images[:2], TransitionAnnotation),
        VLMRequest("Describe the change, second pair.", images[2:], TransitionAnnotation),
        VLMRequest("No images in this one.", [], TransitionAnnotation),
        VLMRequest("A broken image fails only its own request.", [b"not an image"], TransitionAnnotation),
    ]
    *replies, broken = tiny_vlm.generate_many(requests)
    assert isinstance(broken, VLMError) and broken.reason.startswith("vlm_bad_image")
    for reply in replies:
        assert isinstance(reply, VLMReply), reply
        assert isinstance(reply.parsed, TransitionAnnotation), reply.error
        assert reply.error is None
        assert reply.usage.requests == 1 and reply.usage.prompt_tokens > 0
        assert 0 < reply.usage.completion_tokens < 256  # finished well within max_tokens
    assert replies[0].usage.prompt_tokens > replies[2].usage.prompt_tokens  # image tokens were counted
    assert sum(size * n for size, n in tiny_vlm.batch_size_counts.items()) == 3
    assert max(tiny_vlm.batch_size_counts) > 1  # generated together, not one by one
    assert tiny_vlm.random_weights and tiny_vlm.model_id() == "local:tiny:qwen2-vl"


def test_sampling_still_gives_complete_json_of_the_schema(tiny_cache):
    cfg = VLMConfig(backend="local", model="tiny:qwen2-vl", cache=False, temperature=1.0, max_tokens=256,
                    image_max_side=None)  # images go to the processor untouched
    with make_vlm(cfg) as vlm:
        *replies, broken = vlm.generate_many(
            [VLMRequest(f"prompt {i}", jpegs(1), TransitionAnnotation) for i in range(4)]
            + [VLMRequest("broken", [b"\xff\xd8 not a jpeg"], TransitionAnnotation)]
        )
    assert isinstance(broken, VLMError) and broken.reason.startswith("vlm_bad_image")
    for reply in replies:
        assert isinstance(reply, VLMReply)
        # The grammar guarantees complete JSON with the schema's keys (raw control characters
        # can occur: see parse_reply); entity-id keys (charN/objN) are checked by pydantic only,
        # as the JSON schema does not state them.
        assert set(json.loads(reply.raw, strict=False)) == set(TransitionAnnotation.model_fields)
        assert reply.error is None or reply.error.startswith("schema_mismatch")


def test_tiny_builder_is_deterministic_and_loads_offline(tiny_cache, tmp_path):
    built = Path(resolve_model("tiny:qwen2-vl").path)
    again = tmp_path / "again"
    again.mkdir()
    build_tiny_qwen2_vl(again)
    files = sorted(p.name for p in again.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= set(files)
    for name in files:
        assert (again / name).read_bytes() == (built / name).read_bytes(), name

    code = (
        "import sys; from transformers import AutoModelForImageTextToText, AutoProcessor; "
        "m = AutoModelForImageTextToText.from_pretrained(sys.argv[1]); p = AutoProcessor.from_pretrained(sys.argv[1]); "
        "print(type(m).__name__, type(p).__name__)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(again)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"]


def test_top_k_reaches_generate(tiny_vlm, tiny_cache):
    """Sampling hot (temperature 5) but with top_k=1 keeps only the likeliest allowed token at
    every step: the answers are the greedy ones, which they would not be if top_k were dropped."""
    requests = [VLMRequest(f"Describe pair {i}.", jpegs(2), TransitionAnnotation) for i in range(2)]
    greedy = [r.raw for r in tiny_vlm.generate_many(requests)]
    cfg = VLMConfig(backend="local", model="tiny:qwen2-vl", cache=False, local_batch_size=8, max_tokens=256,
                    temperature=5.0, top_k=1, top_p=0.5)
    with make_vlm(cfg) as vlm:
        assert [r.raw for r in vlm.generate_many(requests)] == greedy


def test_images_first_leads_the_chat_with_the_images(tiny_vlm):
    """The chat template the real processor renders puts the image placeholders before the prompt
    only for a request with images_first (EditScore's order); both still answer in schema."""
    tiny_vlm.generate_many([VLMRequest("Load the model.", jpegs(1), TransitionAnnotation)])  # loads the processor
    seen: list[str] = []
    render = tiny_vlm._processor.apply_chat_template

    def recording(messages, **kwargs):
        text = render(messages, **kwargs)
        seen.append(text)
        return text

    tiny_vlm._processor.apply_chat_template = recording
    try:
        prompt = "Describe the change, please."
        replies = tiny_vlm.generate_many([VLMRequest(prompt, jpegs(2), TransitionAnnotation),
                                          VLMRequest(prompt, jpegs(2), TransitionAnnotation, images_first=True)])
    finally:
        tiny_vlm._processor.apply_chat_template = render
    assert all(isinstance(r, VLMReply) and r.parsed is not None for r in replies)
    # The two requests may render in either order (they run concurrently): one of each layout.
    assert len(seen) == 2
    (text_first,) = [t for t in seen if t.index(prompt) < t.index("<|vision_start|>")]
    (images_first,) = [t for t in seen if t.rindex("<|vision_end|>") < t.index(prompt)]
    assert text_first is not images_first
