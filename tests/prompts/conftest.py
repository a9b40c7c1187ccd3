"""Fixtures of the prompt tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def grammars():
    """The local backend's own grammar compiler, on the tiny tokenizer (built in memory)."""
    pytest.importorskip("xgrammar")
    from curation.backends.tiny_vlm import build_tiny_tokenizer
    from curation.backends.vlm_local import _Grammars

    tokenizer = build_tiny_tokenizer()
    return _Grammars(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
