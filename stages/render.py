"""render: draw a synthetic image pair from a prompt row (ImVideoEdit §3, "Paired Image Synthesis").

Per `prompt` row: the source image is drawn from `source_prompt` by a text-to-image model
(`source`: Qwen-Image in the paper; diffusers or an image API here), seeded from the row's sample
id so a rerun draws the same image; then an image editor (`edit`: Qwen-Image-Edit in the paper; the
reference stage's API editors or diffusers editors) edits it into the target. The pair's two files
go to the run's media store and the row becomes a `pair` whose `source_uri`/`target_uri` are their
absolute paths, as every later stage (judge, dedup, shards) reads them.

Which text drives the edit (`edit_with`): `instruction` by default, since Qwen-Image-Edit and the
image APIs are instruction-following editors; `edit_prompt` describes the whole edited scene,
which the paper writes as supervision for a text-to-video backbone rather than as an editor's input.

A failed request (an API error after retries, the budget spent, an image that does not decode)
fails its own row with the reason; the usage of both calls is summed on the row (`render_usage`).
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from curation.backends.diffusers_edit import DiffusersEditConfig, DiffusersEditor
from curation.backends.image_edit import ImageEditConfig, ImageEditor, ImageEditRequest, make_image_editor
from curation.backends.models import model_ref
from curation.backends.text_to_image import (
    Rendered,
    TextToImage,
    TextToImageConfig,
    TextToImageRequest,
    encode_png,
    make_text_to_image,
)
from curation.backends.usage import VLMError, VLMUsage
from curation.core import media_store
from curation.core.stage import ModelRef, Row, StageError, failure_reason
from curation.media.jpeg import decode_image
from curation.stages.base.vlm import BudgetedStage, image_edit_check


class RenderEditConfig(BaseModel):
    """The editor that turns the source image into the target: the reference stage's two model backends."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["api", "diffusers"] = Field(description="api (OpenAI images edit / Gemini) or diffusers (local pipeline)")
    api: ImageEditConfig | None = Field(None, description="backend=api: the image-edit API (curation/backends/image_edit.py)")
    diffusers: DiffusersEditConfig | None = Field(None, description="backend=diffusers: the local pipeline (diffusers_edit.py)")

    @model_validator(mode="after")
    def _backend_configured(self) -> RenderEditConfig:
        if getattr(self, self.backend) is None:
            raise ValueError(f"render.edit.backend={self.backend} needs render.edit.{self.backend}")
        return self

    def generator(self) -> str:
        return f"{self.api.backend}:{self.api.model}" if self.backend == "api" else self.diffusers.model

    def model(self) -> ModelRef:
        if self.backend == "api":
            return model_ref(self.api.model, f"api:{self.api.backend}:{self.api.model}")
        return model_ref(self.diffusers.model)


class RenderColumns(BaseModel):
    target_uri: str | None = Field(None, description="the edited image (absolute path in the run's media store)")
    edit_kind: str | None = Field(None, description="pair: two images")
    width: int | None = Field(None, description="source image width in pixels")
    height: int | None = Field(None, description="source image height in pixels")
    target_width: int | None = Field(None, description="edited image width in pixels")
    target_height: int | None = Field(None, description="edited image height in pixels")
    render_seed: int | None = Field(None, description="the seed the source image was drawn with (render.source.seed and the sample id)")
    generator: str | None = Field(
        None, description="what made the pair: 'source: <model>; target: <model>', an API as <provider>:<model>, whose terms apply")
    render_usage: VLMUsage | None = Field(None, description="api backends: requests, cache hits and USD of both calls together")


class Render(BudgetedStage):
    """Draw the source image from its prompt, edit it into the target: the row becomes a `pair`."""

    name: ClassVar[str] = "render"
    version: ClassVar[str] = "1"
    Columns: ClassVar[type[BaseModel]] = RenderColumns
    usage_column: ClassVar[str] = "render_usage"

    source: TextToImageConfig = Field(description="the text-to-image model that draws the source image")
    edit: RenderEditConfig = Field(description="the editor that makes the target from the source image")
    edit_with: Literal["instruction", "edit_prompt"] = Field(
        description="the row's text the editor is given: instruction (an editor's input) or edit_prompt (the edited scene)")

    _t2i: TextToImage | None = PrivateAttr(default=None)
    _api_editor: ImageEditor | None = PrivateAttr(default=None)
    _local_editor: DiffusersEditor | None = PrivateAttr(default=None)

    # ---- lifecycle and what _run.json records -----------------------------------------------
    def setup(self) -> None:
        if self._media is None:
            raise RuntimeError("render stores its images in the run's media store: bind_run() first")
        budget = self.budget()
        self._t2i = make_text_to_image(self.source, budget)
        self._t2i.open()
        if self.edit.backend == "api":
            self._api_editor = make_image_editor(self.edit.api, budget)
            self._api_editor.rate_ledger = self._rate_ledger_name
            self._api_editor.open()
        else:
            self._local_editor = DiffusersEditor(self.edit.diffusers)

    def uses_gpu(self) -> bool:
        return self.source.backend == "diffusers" or self.edit.backend == "diffusers"

    def usd_per_request(self, prompt_tokens: float, completion_tokens: float) -> float | None:
        """The mean price of the row's two requests (`expected.requests_per_row` is 2): each is priced per image."""
        prices = [cfg.usd_per_image if cfg is not None else 0.0
                  for cfg in (self.source.api if self.source.backend == "api" else None,
                              self.edit.api if self.edit.backend == "api" else None)]
        return sum(prices) / len(prices)

    def api_check(self) -> str | None:
        said = [image_edit_check(cfg) for cfg in (self.source.api if self.source.backend == "api" else None,
                                                  self.edit.api if self.edit.backend == "api" else None)]
        said = [s for s in said if s]
        return "; ".join(said) or None

    def models(self) -> dict[str, ModelRef]:
        return {"text_to_image": make_text_to_image(self.source).model(), "edit": self.edit.model()}

    def model_devices(self) -> dict[str, str]:
        devices = {"text_to_image": self._t2i.device if self._t2i is not None else None,
                   "edit": self._local_editor.device if self._local_editor is not None else None}
        return {role: device for role, device in devices.items() if device}

    def row_seed(self, row: Row) -> int:
        """The source image's seed: the config's base seed and the sample id, so a rerun redraws the same image."""
        digest = hashlib.sha256(f"{self.source.seed}:{row['sample_id']}".encode()).digest()
        return int.from_bytes(digest[:4], "big")  # 32 bits: every generator (torch, Gemini) takes it

    # ---- work ------------------------------------------------------------------------------
    def process_batch(self, rows: list[Row]) -> list[Row]:
        self.ensure_setup()
        out: dict[int, Row] = {}
        requests: dict[int, TextToImageRequest] = {}
        for r, row in enumerate(rows):
            problem = _missing_text(row, self.edit_with)
            if problem:
                out[r] = self.error_row(row, problem)
            else:
                requests[r] = TextToImageRequest(row["source_prompt"], self.row_seed(row), self.source.size)
        sources = dict(zip(requests, self._t2i.render(list(requests.values())), strict=True))
        drawn = [r for r, result in sources.items() if result.image is not None]
        for r, result in sources.items():
            if result.image is None:
                out[r] = self.error_row(rows[r], result.reason or "render_failed", render_usage=_dump(result.usage))
        edited = dict(zip(drawn, self._edit([sources[r].image for r in drawn], [rows[r][self.edit_with] for r in drawn]),
                          strict=True))
        for r in drawn:
            out[r] = self._pair(rows[r], requests[r].seed, sources[r], edited[r])
        return [out[r] for r in range(len(rows))]

    def _edit(self, images: list[bytes], texts: list[str]) -> list[Rendered]:
        if not images:
            return []
        if self._api_editor is not None:
            replies = self._api_editor.edit_many([ImageEditRequest(prompt=t, image=im) for im, t in zip(images, texts)])
            return [Rendered(reason=r.reason, usage=r.usage) if isinstance(r, VLMError) else Rendered(image=r.image, usage=r.usage)
                    for r in replies]
        try:
            return [Rendered(image=encode_png(im)) for im in self._local_editor.edit([decode_image(im) for im in images], texts)]
        except Exception:  # noqa: BLE001 - one by one, so one failing image does not fail the others
            return [self._edit_one(im, t) for im, t in zip(images, texts)]

    def _edit_one(self, image: bytes, text: str) -> Rendered:
        try:
            (edited,) = self._local_editor.edit([decode_image(image)], [text])
            return Rendered(image=encode_png(edited))
        except Exception as e:  # noqa: BLE001 - recorded on the sample
            return Rendered(reason=f"edit_failed: {failure_reason(e)}")

    def _pair(self, row: Row, seed: int, source: Rendered, target: Rendered) -> Row:
        usage = _dump(_sum(source.usage, target.usage))
        generator = f"source: {self._t2i.generator()}; target: {self.edit.generator()}"
        columns: dict[str, Any] = {"render_usage": usage, "render_seed": seed, "generator": generator}
        if target.image is None:
            return self.error_row(row, target.reason or "edit_failed", **columns)
        try:
            src, tgt = decode_image(source.image, "source"), decode_image(target.image, "target")
        except StageError as e:
            return self.error_row(row, e.reason, **columns)
        return self.child_row(
            row, kind="pair", span="render", source_uri=self._store(source.image), target_uri=self._store(target.image),
            edit_kind="pair", width=src.shape[1], height=src.shape[0], target_width=tgt.shape[1], target_height=tgt.shape[0],
            **columns)

    def _store(self, data: bytes) -> str:
        """The image stored once in this stage's media store, as the absolute path later stages read."""
        ext = {b"\x89PNG": "png", b"RIFF": "webp"}.get(data[:4], "jpg")
        return media_store.resolve(self._media.put(data, ext), self._media.run_dir)


def _missing_text(row: Row, edit_with: str) -> str | None:
    missing = [c for c in ("source_prompt", edit_with) if not (row.get(c) or "").strip()]
    return f"missing_prompt: the row has no {' or '.join(missing)} (run the prompts stage first)" if missing else None


def _sum(*usages: VLMUsage | None) -> VLMUsage | None:
    known = [u for u in usages if u is not None]
    return sum(known[1:], known[0]) if known else None


def _dump(usage: VLMUsage | None) -> dict[str, Any] | None:
    return usage.model_dump() if usage is not None else None
