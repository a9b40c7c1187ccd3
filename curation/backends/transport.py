"""Which API and model a request goes to, and how it gets there: endpoint, key, concurrency, rate,
retries, timeouts, response cache and input image size.

Declared once, here, for every backend the request machinery (`vlm_base.VLMBackend`) drives: the
VLM config (`vlm.*`) and the image-edit config (`reference.api.*`) subclass it, keep these keys
where they always were, and each sets its own defaults where its calls differ (an image edit
takes tens of seconds) with `transport_default`, which keeps the field's description and limits.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from curation.backends.models import cache_root
from curation.core.config_change import RUN_ONLY


class TransportConfig(BaseModel):
    """Secrets are never part of it: only the *name* of the environment variable holding the key.
    Subclasses narrow `backend` to the APIs they speak and name their response cache."""

    model_config = ConfigDict(extra="forbid")

    # Where the response cache lives under <CURATE_CACHE> when `cache_dir` is None.
    cache_name: ClassVar[str]

    backend: str = Field(description="which API (each config lists the ones it speaks)")
    model: str = Field(description="the model's name at the API (e.g. gpt-4.1-mini, gpt-image-1.5); "
                                   "the local VLM: a hub id, a local path or tiny:qwen2-vl")
    base_url: str | None = Field(
        None, json_schema_extra=RUN_ONLY, description="OpenAI-compatible endpoint (e.g. http://host:8000/v1) or a Gemini base URL override")
    api_key_env: str | None = Field(
        None, json_schema_extra=RUN_ONLY, description="NAME of the env var holding the API key. Unset: openai sends 'EMPTY' (keyless "
                          "vLLM/SGLang), gemini lets the SDK read GEMINI_API_KEY/GOOGLE_API_KEY")
    max_in_flight: int = Field(8, ge=1, json_schema_extra=RUN_ONLY, description="requests in flight at once, per worker")
    requests_per_minute: float | None = Field(
        None, gt=0, json_schema_extra=RUN_ONLY, description="paced evenly; for all workers of a VLM stage together (a Ray actor holds it), "
                                "else per process; None = unlimited")
    max_retries: int = Field(4, ge=0, json_schema_extra=RUN_ONLY,
                             description="retries on 429/5xx/timeouts/connection errors/empty responses")
    timeout_s: float = Field(60.0, gt=0, json_schema_extra=RUN_ONLY, description="per HTTP request")
    backoff_initial_s: float = Field(1.0, ge=0, json_schema_extra=RUN_ONLY,
                                     description="first backoff ceiling; doubles per retry (full jitter)")
    backoff_max_s: float = Field(30.0, ge=0, json_schema_extra=RUN_ONLY,
                                 description="largest backoff ceiling (a Retry-After may ask for longer)")
    cache: bool = Field(True, json_schema_extra=RUN_ONLY,
                        description="reuse stored responses (answers, edited images) for identical requests")
    cache_dir: str | None = Field(
        None, json_schema_extra=RUN_ONLY,
        description="response cache (path or URI); None = <CURATE_CACHE>/vlm, or <CURATE_CACHE>/image_edit for image edits")
    image_max_side: int | None = Field(1024, ge=16, description="shrink larger input images (aspect kept); None = as is")

    def cache_location(self) -> str:
        """Where the response cache lives: `cache_dir`, else this kind's directory under <CURATE_CACHE>."""
        return self.cache_dir or str(cache_root() / self.cache_name)


def transport_default(name: str, default: Any) -> Any:
    """`TransportConfig.<name>` with another default, for a subclass's `name: <type> = transport_default(name, value)`.
    Pydantic builds a re-annotated field afresh, so a plain `name: float = 180.0` would drop the
    field's limits (`gt=0`) and its description; this keeps both and changes only the default."""
    return FieldInfo.merge_field_infos(TransportConfig.model_fields[name], default=default)
