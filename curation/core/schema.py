"""The manifest row schema: the columns every row has, deterministic sample ids, and the one
place where pydantic row models become Arrow schemas, so a column means the same in every manifest.

Every stage output is `<run_dir>/<NN>-<stage>/part-*.parquet` plus `_run.json` (`layout.py`);
reading and writing those files is `storage.py`'s job.
"""

from __future__ import annotations

import hashlib
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

Status = Literal["ok", "dropped", "error"]

# Columns the runner adds while a batch is in flight; never written to a manifest.
PRIVATE_PREFIX = "_"


class ArrowType:
    """Annotation marker that pins a field's Arrow type where the default mapping is not wanted."""

    def __init__(self, arrow_type: pa.DataType):
        self.arrow_type = arrow_type


class Media:
    """Annotation marker of a media column: `Annotated[bytes, Media("jpg")]`, or a list of those.

    A stage makes and reads the encoded bytes, but a manifest holds a reference to the file the
    media store wrote once (`curation.core.media_store`): the Arrow type is string (list<string>),
    and the field's metadata names the file extension, so every reader (shard, audit, show) tells
    media columns apart from the Parquet schema alone, nested ones included.
    """

    def __init__(self, ext: str):
        if not ext.isalnum():
            raise ValueError(f"media extension must be alphanumeric, got {ext!r}")
        self.ext = ext


MEDIA_KEY = b"curate.media"  # Arrow field metadata key of a media column; its value is the extension


# The media columns stages declare: `frames: list[Jpeg] | None`, `mask_tgt: Png | None`.
Jpeg = Annotated[bytes, Media("jpg")]
Png = Annotated[bytes, Media("png")]
Mp4 = Annotated[bytes, Media("mp4")]


def media_ext(field: pa.Field) -> str | None:
    """The file extension of a media column (`frames`, a mask, ...), or None for any other field."""
    value = (field.metadata or {}).get(MEDIA_KEY)
    return value.decode() if value is not None else None


class SampleRow(BaseModel):
    """Columns every manifest row has (DESIGN.md §4)."""

    model_config = ConfigDict(extra="allow")

    sample_id: str = Field(description="deterministic hash of kind, source, span and parents")
    parent_ids: list[str] = Field(default_factory=list, description="sample ids this row was made from")
    kind: str = Field(description="source | video | clip | session | pair | triplet | quad")
    source_uri: str = Field(description="the original media file or URI")
    status: Status = Field(default="ok", description="ok, dropped (with reason) or error (with reason)")
    reason: str | None = Field(default=None, description="why the row was dropped or failed")
    stage: str = Field(description="the stage that wrote this row")
    stage_version: str = Field(description="version of that stage; part of the resume key")


def make_sample_id(kind: str, source_uri: str, *parts: object) -> str:
    """Deterministic id: the same source, span and parents always give the same id, so reruns never duplicate."""
    h = hashlib.sha1()
    for piece in (kind, source_uri, *parts):
        h.update(repr(piece).encode())
        h.update(b"\x00")
    return h.hexdigest()[:20]


# --------------------------------------------------------------------------------------------
# pydantic -> Arrow
# --------------------------------------------------------------------------------------------

_SCALARS: dict[Any, pa.DataType] = {
    int: pa.int64(),
    float: pa.float64(),
    str: pa.string(),
    bool: pa.bool_(),
    bytes: pa.binary(),
}


def _arrow_type(annotation: Any) -> pa.DataType:
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *meta = get_args(annotation)
        for m in meta:
            if isinstance(m, ArrowType):
                return m.arrow_type
            if isinstance(m, Media):
                if base is not bytes:
                    raise TypeError(f"Media marks bytes, not {base!r}")
                return pa.string()  # the reference; the bytes live in the media store
        return _arrow_type(base)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"union {annotation} has no single Arrow type")
        return _arrow_type(args[0])
    if origin is Literal:
        return _arrow_type(type(get_args(annotation)[0]))
    if origin in (list, tuple, typing.Sequence):
        return pa.list_(_arrow_type(get_args(annotation)[0]))
    if origin is dict:
        key, value = get_args(annotation)
        return pa.map_(_arrow_type(key), _arrow_type(value))
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        # A nested model is a struct column (e.g. a session's per-turn annotations).
        return pa.struct(list(arrow_schema(annotation)))
    raise TypeError(f"no Arrow type for {annotation!r}")


def _media_of(annotation: Any) -> Media | None:
    """The `Media` marker of a field's annotation (through Optional and list), if any."""
    if get_origin(annotation) is Annotated:
        found = [m for m in get_args(annotation)[1:] if isinstance(m, Media)]
        return found[0] if found else _media_of(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType, list, tuple, typing.Sequence):
        return next((m for m in map(_media_of, get_args(annotation)) if m is not None), None)
    return None


def arrow_schema(*models: type[BaseModel]) -> pa.Schema:
    """Arrow schema of the union of the models' fields, in declaration order (first model wins)."""
    fields: dict[str, pa.Field] = {}
    for model in models:
        for name, info in model.model_fields.items():
            if name in fields:
                continue
            annotation = info.annotation
            if info.metadata:
                annotation = Annotated[(annotation, *info.metadata)]
            media = _media_of(annotation)
            fields[name] = pa.field(name, _arrow_type(annotation), nullable=not info.is_required(),
                                    metadata={MEDIA_KEY: media.ext.encode()} if media else None)
    return pa.schema(list(fields.values()))


def public_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f for f in schema if not f.name.startswith(PRIVATE_PREFIX)])


def merge_schemas(*schemas: pa.Schema) -> pa.Schema:
    """Union of columns; a column keeps the type of the first schema that has it ("added, never renamed")."""
    fields: dict[str, pa.Field] = {}
    for schema in schemas:
        for f in schema:
            fields.setdefault(f.name, f.with_nullable(True) if f.name not in SampleRow.model_fields else f)
    return pa.schema(list(fields.values()))


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) to a table with exactly `schema`; missing columns are null, extra keys are ignored."""
    return pa.Table.from_pylist(rows, schema=schema)


def scores_of(row: dict[str, Any]) -> dict[str, float]:
    """A row's `scores` map as a dict (Arrow maps come back from `to_pylist` as key/value pairs),
    so a stage can add its scores to the ones earlier stages wrote."""
    value = row.get("scores")
    if not value:
        return {}
    return dict(value) if isinstance(value, list) else dict(value)
