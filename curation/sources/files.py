"""Turn an `ingest` input (directory, glob, or jsonl/csv/parquet source manifest) into source rows.

The ingest stage (a source stage) persists the listing as its input fragments on the first run, so
a resumed run sees exactly the same fragments; files that appear later are appended as new ones.
"""

from __future__ import annotations

import glob as globlib
import os
import posixpath
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from curation.core import storage
from curation.core.schema import make_sample_id
from curation.sources.licences import UNKNOWN_LICENCE, licence_id

MEDIA_EXTENSIONS = frozenset(
    "mp4 mov mkv avi webm m4v mpg mpeg ts mts flv wmv 3gp ogv gif png jpg jpeg webp bmp tif tiff".split()
)
# Column names accepted in a source manifest for the media location, in order of preference.
URI_COLUMNS = ("source_uri", "uri", "path", "video", "file", "filename")
SOURCE_MANIFEST_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class SourceError(ValueError):
    """The ingest input cannot be listed (missing, empty, or a manifest without a path column)."""


def _has_media_ext(name: str) -> bool:
    return PurePosixPath(name).suffix.lower().lstrip(".") in MEDIA_EXTENSIONS


def _read_source_manifest(uri: str) -> pa.Table:
    data = storage.read_bytes(uri)
    buf = pa.BufferReader(data)
    lower = uri.lower()
    if lower.endswith(".parquet"):
        table = pq.read_table(buf)
    elif lower.endswith(".csv"):
        table = pacsv.read_csv(buf)
    else:
        table = pajson.read_json(buf)
    column = next((c for c in URI_COLUMNS if c in table.column_names), None)
    if column is None:
        raise SourceError(f"source manifest {uri} has none of the path columns {URI_COLUMNS}")
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    uris = [_resolve_relative(u, base) for u in table.column(column).cast(pa.string()).to_pylist()]
    return table.drop_columns([column]).append_column("source_uri", pa.array(uris, pa.string()))


def _resolve_relative(uri: str, base: str) -> str:
    """Paths in a source manifest are relative to the manifest's own location."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    if "://" in base:  # object stores do not resolve `..` themselves
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, uri))}"
    return os.path.normpath(os.path.join(os.path.abspath(base), uri))


def _walk_dir(path: str) -> list[str]:
    found: list[str] = []
    for root, dirs, names in os.walk(path):
        # A directory named like a media file (x.mp4) is listed so ingest reports it, not descended into.
        for d in list(dirs):
            if _has_media_ext(d):
                found.append(os.path.join(root, d))
                dirs.remove(d)
        dirs.sort()
        found.extend(os.path.join(root, n) for n in sorted(names) if _has_media_ext(n))
    return found


def list_sources(spec: str, licence: str = UNKNOWN_LICENCE) -> pa.Table:
    """Source rows (`kind=source`) for a directory, glob or source manifest, sorted by URI.

    Each row's `licence` is the manifest's own `licence` column where it has one, else `licence`
    (what the user said, `ingest.licence`; `unknown` by default)."""
    if spec is None:
        raise SourceError("ingest needs input=<dir | glob | sources.jsonl/csv/parquet>")
    extra: pa.Table | None = None
    if spec.lower().endswith(SOURCE_MANIFEST_SUFFIXES) and storage.exists(spec):
        extra = _read_source_manifest(spec)
        uris = extra.column("source_uri").to_pylist()
    elif "://" in spec:
        import fsspec

        fs, path = fsspec.core.url_to_fs(spec)
        protocol = spec.split("://", 1)[0]
        if any(ch in path for ch in "*?["):
            paths = fs.glob(path)
        else:
            paths = [p for p in fs.find(path) if _has_media_ext(p)]
        uris = sorted(f"{protocol}://{p}" for p in paths)
    elif any(ch in spec for ch in "*?["):
        uris = sorted(os.path.abspath(p) for p in globlib.glob(spec, recursive=True))
    elif os.path.isdir(spec):
        uris = sorted(os.path.abspath(p) for p in _walk_dir(spec))
    elif os.path.exists(spec):
        uris = [os.path.abspath(spec)]
    else:
        raise SourceError(f"input {spec!r} does not exist")
    if not uris:
        raise SourceError(f"input {spec!r} lists no media files (extensions: {' '.join(sorted(MEDIA_EXTENSIONS))})")

    rows = pa.table(
        {
            "sample_id": [make_sample_id("source", u) for u in uris],
            "parent_ids": pa.array([[] for _ in uris], pa.list_(pa.string())),
            "kind": ["source"] * len(uris),
            "source_uri": uris,
            "status": ["ok"] * len(uris),
            "reason": pa.array([None] * len(uris), pa.string()),
            "stage": ["sources"] * len(uris),
            "stage_version": ["1"] * len(uris),
        }
    )
    if extra is not None:
        for name in extra.column_names:
            if name not in rows.column_names and name != "licence":
                rows = rows.append_column(name, extra.column(name))
    stated = extra.column("licence").to_pylist() if extra is not None and "licence" in extra.column_names else [None] * len(uris)
    rows = rows.append_column("licence", pa.array([licence_id(str(v)) if v else licence for v in stated], pa.string()))
    # Deduplicate (a manifest may list a file twice) and sort, so fragments are stable.
    seen: set[str] = set()
    keep = []
    for i, sid in enumerate(rows.column("sample_id").to_pylist()):
        if sid not in seen:
            seen.add(sid)
            keep.append(i)
    rows = rows.take(keep)
    return rows.sort_by("source_uri")
