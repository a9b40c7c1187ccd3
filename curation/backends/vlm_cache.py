"""On-disk cache of VLM responses, so a rerun (or a resumed run) never pays twice for the same
question. Local paths and any pyarrow/fsspec URI work (`curation.core.storage` does the I/O).

Key: sha256 over everything that changes the answer: backend, model, endpoint, the rendered
prompt, each image's sha256, the output JSON schema, sampling settings (temperature, max_tokens,
and top_p / top_k / extra_body when set), image size limit and a caller's salt (e.g. the prompt
template's hash). Options that are not set add nothing to the key, so entries written before they
existed stay valid: those requests were the same. Value: the raw text and the usage of the call
that produced it. Every response that arrived is cached, including ones that then fail
validation (a validation retry uses another prompt, hence another key); transport errors never
are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from curation.core import storage

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def cache_key(
    *,
    backend: str,
    model: str,
    base_url: str | None,
    prompt: str,
    images: list[bytes],
    schema: dict[str, Any],
    temperature: float,
    max_tokens: int,
    image_max_side: int | None,
    salt: str = "",
    options: dict[str, Any] | None = None,
) -> str:
    parts = {
        "format": CACHE_FORMAT,
        "backend": backend,
        "model": model,
        "base_url": base_url,
        "prompt": prompt,
        "images": [hashlib.sha256(img).hexdigest() for img in images],
        "schema": schema,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "image_max_side": image_max_side,
        "salt": salt,
    }
    if options:  # top_p, top_k, extra_body (VLMConfig.sampling_options)
        parts["options"] = options
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class VLMCache:
    """`<root>/<key[:2]>/<key>.json`, written atomically (temp file + rename)."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")

    def path(self, key: str) -> str:
        return storage.join(self.root, key[:2], f"{key}.json")

    def get(self, key: str) -> dict[str, Any] | None:
        """`{"raw": str, "usage": dict, ...}` or None. An unreadable entry is a miss, not a failure."""
        uri = self.path(key)
        try:
            if not storage.exists(uri):
                return None
            entry = json.loads(storage.read_bytes(uri))
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable VLM cache entry %s: %s", uri, e)
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("raw"), str):
            log.warning("ignoring malformed VLM cache entry %s", uri)
            return None
        return entry

    def put(self, key: str, raw: str, usage: dict[str, Any], model_id: str) -> None:
        entry = {"raw": raw, "usage": usage, "model_id": model_id, "created": time.time(), "format": CACHE_FORMAT}
        storage.write_bytes_atomic(self.path(key), json.dumps(entry, ensure_ascii=False).encode())
