"""Parquet manifests: row models, their Arrow schemas, and atomic reads/writes on any filesystem.

Every stage output is `<run_dir>/<NN>-<stage>/part-*.parquet` plus `_run.json`. Row models are
pydantic; `arrow_schema` is the one place where they become Arrow types, so a column means the
same thing in every manifest.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
import uuid
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

Status = Literal["ok", "dropped", "error"]

# Columns the runner adds while a batch is in flight; never written to a manifest.
PRIVATE_PREFIX = "_"


class ArrowType:
    """Annotation marker that pins a field's Arrow type where the default mapping is not wanted."""

    def __init__(self, arrow_type: pa.DataType):
        self.arrow_type = arrow_type


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
        return pa.struct([pa.field(f.name, f.type, f.nullable) for f in arrow_schema(annotation)])
    raise TypeError(f"no Arrow type for {annotation!r}")


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
            fields[name] = pa.field(name, _arrow_type(annotation), nullable=not info.is_required())
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


# --------------------------------------------------------------------------------------------
# Filesystems and atomic I/O
# --------------------------------------------------------------------------------------------


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or any URI pyarrow.fs or fsspec understands."""
    if "://" not in uri:
        import os

        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, ValueError):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def list_files(dir_uri: str, prefix: str = "", suffix: str = "") -> list[str]:
    """Sorted file URIs directly under a directory (empty if it does not exist)."""
    fs, path = resolve(dir_uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.File and i.base_name.startswith(prefix) and i.base_name.endswith(suffix)
    )
    return [join(dir_uri, n) for n in names]


def list_dirs(dir_uri: str) -> list[str]:
    fs, path = resolve(dir_uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def _atomic_target(uri: str) -> tuple[pafs.FileSystem, str, str]:
    fs, path = resolve(uri)
    parent, _, base = path.rpartition("/")
    fs.create_dir(parent, recursive=True)
    return fs, path, f"{parent}/.tmp-{uuid.uuid4().hex}-{base}"


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write then rename, so a reader (or a resumed run) never sees a half-written file."""
    fs, path, tmp = _atomic_target(uri)
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)


def write_table_atomic(table: pa.Table, uri: str) -> None:
    fs, path, tmp = _atomic_target(uri)
    pq.write_table(table, tmp, filesystem=fs, compression="zstd")
    fs.move(tmp, path)


def upload_file(local_path: str, uri: str, attempts: int = 4, backoff_s: float = 1.0) -> None:
    """Copy a finished local file to `uri` (an object store), retrying transient failures with
    exponential backoff. A streamed upload only becomes visible when it completes, so a failed
    attempt leaves nothing behind and the next one starts over."""
    import shutil
    import time

    fs, path = resolve(uri)
    for attempt in range(1, attempts + 1):
        try:
            with open(local_path, "rb") as f, fs.open_output_stream(path) as out:
                shutil.copyfileobj(f, out, length=16 << 20)
            return
        except OSError as e:
            if attempt == attempts:
                raise OSError(f"upload of {local_path} to {uri} failed {attempts} times: {e}") from e
            time.sleep(backoff_s * 2 ** (attempt - 1))


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_table(uri: str, columns: list[str] | None = None, filter: Any = None) -> pa.Table:
    """One Parquet file or a whole manifest directory, through pyarrow datasets."""
    import pyarrow.dataset as ds

    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        files = [resolve(f)[1] for f in list_files(uri, prefix="part-", suffix=".parquet")]
        if not files:
            return pa.table({})
        dataset = ds.dataset(files, filesystem=fs, format="parquet")
    else:
        dataset = ds.dataset(path, filesystem=fs, format="parquet")
    if columns is not None:
        columns = [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=columns, filter=filter)


def read_schema(uri: str) -> pa.Schema:
    """A Parquet file's schema from its footer, without reading any rows."""
    fs, path = resolve(uri)
    return pq.read_schema(path, filesystem=fs)


def write_json_atomic(uri: str, obj: Any) -> None:
    write_bytes_atomic(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))



def scores_of(row: dict[str, Any]) -> dict[str, float]:
    """A row's `scores` map as a dict (Arrow maps come back from `to_pylist` as key/value pairs),
    so a stage can add its scores to the ones earlier stages wrote."""
    value = row.get("scores")
    if not value:
        return {}
    return dict(value) if isinstance(value, list) else dict(value)
