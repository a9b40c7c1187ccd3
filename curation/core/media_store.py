"""Media stored once: a stage writes each medium it makes (a frame JPEG, a mask PNG, a reference
image) as one content-addressed file, and manifests hold a reference to that file, not its bytes.

Before, every stage after `sample_frames` copied a session's frames into its own manifest (about
0.5 TB per stage at the 4.25M sessions `docs/sizing.md` plans for). Now the bytes live once in
`<stage_dir>/media/<hh>/<sha256>.<ext>`, written atomically and skipped when the file exists: the
same bytes always get the same name, so a rerun or a killed and resumed run neither rewrites nor
duplicates a file.

A reference is a path relative to the run dir (`04-sample_frames/media/ab/ab12….jpg`), so a run
dir copied elsewhere (local <-> s3) still resolves; an absolute path or URI is a reference too
(media of another run: `absolutize`). Media columns are known from their Arrow field metadata
(`schema.Media`), at any depth: a session's per-turn masks sit in a list of structs. A media
column may still hold bytes (a manifest written before this, or by a stage called outside a run),
so every function here accepts both.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from curation.core import layout, storage
from curation.core.schema import media_ext

IO_THREADS = 16  # files read or written at once: an object store answers each in tens of ms
# A file the store wrote: <stage_dir>/media/<hh>/<64 hex>.<ext>
_STORED = re.compile(rf"/{layout.MEDIA_DIR}/[0-9a-f]{{2}}/[0-9a-f]{{64}}\.\w+$")

T = TypeVar("T")
R = TypeVar("R")
MediaValue = bytes | str  # bytes in a stage's hands, a reference in a manifest


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def is_absolute(ref: str) -> bool:
    return ref.startswith("/") or "://" in ref


def resolve(ref: str, run_dir: str | None) -> str:
    """The URI a reference names: a relative one is under `run_dir`."""
    if is_absolute(ref):
        return ref
    if run_dir is None:
        raise ValueError(f"media reference {ref!r} is relative to a run dir, and none was given")
    return storage.join(run_dir, ref)


def load(ref: str, run_dir: str | None) -> bytes:
    return storage.read_bytes(resolve(ref, run_dir))


@dataclass(frozen=True)
class MediaStore:
    """Where one stage of one run writes the media it makes. Holds only two strings, so it travels
    to Ray workers with the stage."""

    run_dir: str
    stage_dir: str

    def put(self, data: bytes, ext: str) -> str:
        """Store `data` once, named by its content, and return its reference."""
        return self._put(data, ext, hashlib.sha256(data).hexdigest())

    def _put(self, data: bytes, ext: str, digest: str) -> str:
        uri = storage.join(layout.media_dir(self.stage_dir), digest[:2], f"{digest}.{ext}")
        if not storage.exists(uri):  # the same name always holds the same bytes
            storage.write_bytes_atomic(uri, data)
        prefix = self.run_dir.rstrip("/") + "/"
        return uri.removeprefix(prefix)


# --------------------------------------------------------------------------------------------
# Media columns of a schema, and their values in rows
# --------------------------------------------------------------------------------------------


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def holds_media(field: pa.Field) -> bool:
    """Whether the field is a media column or has one nested inside (a list of structs of masks)."""
    if media_ext(field) is not None:
        return True
    t = field.type
    if pa.types.is_struct(t):
        return any(holds_media(t.field(i)) for i in range(t.num_fields))
    return _is_list(t) and holds_media(t.value_field)


def media_columns(schema: pa.Schema) -> list[str]:
    """Top-level columns that are, or hold, media."""
    return [f.name for f in schema if holds_media(f)]


def _map(value: Any, field: pa.Field, fn: Callable[[MediaValue, str], Any]) -> Any:
    if value is None:
        return None
    ext = media_ext(field)
    t = field.type
    if ext is not None:
        return [None if v is None else fn(v, ext) for v in value] if _is_list(t) else fn(value, ext)
    if pa.types.is_struct(t):
        out = dict(value)  # a new container: input and output rows may share nested values
        for child in (t.field(i) for i in range(t.num_fields)):
            if out.get(child.name) is not None and holds_media(child):
                out[child.name] = _map(out[child.name], child, fn)
        return out
    if _is_list(t):
        return [_map(v, t.value_field, fn) for v in value]
    return value


def map_media(rows: list[dict[str, Any]], schema: pa.Schema, fn: Callable[[MediaValue, str], Any],
              columns: Collection[str] | None = None) -> None:
    """Replace every media value (bytes or a reference) in the media columns of `rows` (all of them,
    or those named in `columns`) by `fn(value, ext)`, in place."""
    for field in schema:
        if (columns is None or field.name in columns) and holds_media(field):
            for row in rows:
                if row.get(field.name) is not None:
                    row[field.name] = _map(row[field.name], field, fn)


def _values(rows: list[dict[str, Any]], schema: pa.Schema, kind: type | tuple[type, ...],
            columns: Collection[str] | None = None) -> list[tuple[Any, str]]:
    found: list[tuple[Any, str]] = []

    def visit(value: MediaValue, ext: str) -> MediaValue:
        if isinstance(value, kind):
            found.append((value, ext))
        return value

    map_media([dict(r) for r in rows], schema, visit, columns)
    return found


def references(rows: list[dict[str, Any]], schema: pa.Schema) -> list[str]:
    """Every media reference in `rows`, in order (bytes left out)."""
    return [ref for ref, _ in _values(rows, schema, str)]


def _parallel(fn: Callable[[T], R], items: list[T]) -> list[R]:
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(IO_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


# --------------------------------------------------------------------------------------------
# Rows: references <-> bytes
# --------------------------------------------------------------------------------------------


class Inlined:
    """What `inline` read, so `store` gives media that come back unchanged their own reference
    instead of a copy. A blob handed on as is is found by identity, with no hashing (a VLM stage
    passes hundreds of frames per batch through untouched); only when a stage returns new bytes
    are the inputs hashed, once, to catch new bytes equal to an input."""

    def __init__(self, data: dict[str, bytes]):
        self._data = data  # holds the blobs, so their ids stay theirs until `store` is done
        self.by_id = {id(blob): ref for ref, blob in data.items()}
        self._by_digest: dict[str, str] | None = None

    def by_digest(self) -> dict[str, str]:
        if self._by_digest is None:
            self._by_digest = {hashlib.sha256(blob).hexdigest(): ref for ref, blob in self._data.items()}
        return self._by_digest


def inline(rows: list[dict[str, Any]], schema: pa.Schema, run_dir: str | None,
           columns: Collection[str] | None = None) -> Inlined:
    """Replace the references in the media columns of `rows` (all, or just `columns`) by the bytes
    they name, in place, reading the files concurrently. Returns what was read, for `store`."""
    refs = list(dict.fromkeys(ref for ref, _ in _values(rows, schema, str, columns)))
    data = dict(zip(refs, _parallel(lambda ref: load(ref, run_dir), refs)))
    map_media(rows, schema, lambda value, _: data[value] if isinstance(value, str) else value, columns)
    return Inlined(data)


def inlined_rows(table: pa.Table, run_dir: str | None, columns: Collection[str] | None = None) -> list[dict[str, Any]]:
    """A manifest table's rows with the media (all, or just `columns`) as bytes: what readers
    that hand media on (shards, the browser, a held-out set) work with."""
    rows = table.to_pylist()
    inline(rows, table.schema, run_dir, columns)
    return rows


def store(rows: list[dict[str, Any]], schema: pa.Schema, media: MediaStore, known: Inlined | None = None) -> None:
    """Replace the bytes in the media columns of `rows` by references, in place: bytes `inline`
    read get their own reference back (`known`); new ones are stored once in the stage's media dir."""
    known = known or Inlined({})
    by_id = dict(known.by_id)  # id of a bytes object in rows -> its reference
    digests: dict[int, str] = {}  # id of a new bytes object -> its sha256
    new: dict[str, tuple[bytes, str]] = {}
    for value, ext in _values(rows, schema, (bytes, bytearray)):
        if id(value) in by_id or id(value) in digests:
            continue
        digests[id(value)] = digest = hashlib.sha256(value).hexdigest()
        if digest in known.by_digest():
            by_id[id(value)] = known.by_digest()[digest]
        else:
            new.setdefault(digest, (bytes(value), ext))
    stored = dict(zip(new, _parallel(lambda d: media._put(new[d][0], new[d][1], d), list(new))))
    by_id.update((key, stored[digest]) for key, digest in digests.items() if digest in stored)
    map_media(rows, schema, lambda value, _: by_id[id(value)] if isinstance(value, (bytes, bytearray)) else value)


def absolutize(table: pa.Table, run_dir: str) -> pa.Table:
    """`table` (read from a manifest of `run_dir`) with its relative references made absolute, so
    they still resolve once its rows are written into another run's manifests."""
    for i, field in enumerate(table.schema):
        if holds_media(field):
            rows = [{field.name: v} for v in table.column(i).to_pylist()]
            map_media(rows, pa.schema([field]), lambda value, _: resolve(value, run_dir) if isinstance(value, str) else value)
            table = table.set_column(i, field, pa.array([r[field.name] for r in rows], field.type))
    return table


def _inlined_field(field: pa.Field) -> pa.Field:
    t = field.type
    if media_ext(field) is not None:
        return field.with_type(pa.list_(pa.binary()) if _is_list(t) else pa.binary())
    if pa.types.is_struct(t):
        return field.with_type(pa.struct([_inlined_field(t.field(i)) for i in range(t.num_fields)]))
    if _is_list(t) and holds_media(t.value_field):
        return field.with_type(pa.list_(_inlined_field(t.value_field)))
    return field


def inlined_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with its media columns holding the bytes themselves (binary), as manifests did
    before references: what a stage outside a run returns, and what the bench weighs as 'before'."""
    return pa.schema([_inlined_field(f) for f in schema], metadata=schema.metadata)


# --------------------------------------------------------------------------------------------
# Sizes without reading
# --------------------------------------------------------------------------------------------


def sizes(refs: Collection[str], run_dir: str | None) -> dict[str, int]:
    """Bytes of each referenced file that exists (missing ones are left out), without reading them:
    one recursive listing per stage's media dir for what the store wrote, a stat for anything else."""
    uris = {ref: resolve(ref, run_dir) for ref in set(refs)}
    found: dict[str, int] = {}
    roots = {uri.rsplit("/", 2)[0] for uri in uris.values() if _STORED.search(uri)}
    for root in roots:
        fs, path = storage.resolve(root)
        for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
            if info.type == pafs.FileType.File:
                found[root + info.path[len(path):]] = info.size
    for uri in {u for u in uris.values() if u not in found and not _STORED.search(u)}:
        fs, path = storage.resolve(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            found[uri] = info.size
    return {ref: found[uri] for ref, uri in uris.items() if uri in found}
