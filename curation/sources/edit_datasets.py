"""List edit pairs/triplets from public edit datasets through declarative adapters.

Every public edit dataset (Ditto-1M, OpenVE-3M, ReCo, Señorita-2M, NHR-Edit, GPT-Image-Edit-1.5M, …)
ships the same thing — source media, target media, an instruction, maybe a category — in its own
metadata layout. An adapter is a small YAML file (`manifests/adapters/<name>.yaml`) that says where
the metadata files are and which fields hold what, so supporting a new dataset is a YAML file, not
code. `list_edit_sources` turns a dataset root plus an adapter into `kind=source` rows for ingest.

Media files are never opened or stat'ed here: datasets hold millions of them, and ingest's probe
finds missing or broken files later and records them on the row.
"""

from __future__ import annotations

import csv
import functools
import glob as globlib
import io
import json
import logging
import os
import posixpath
import re
from collections import Counter
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from curation.core import storage
from curation.core.schema import SampleRow, arrow_schema, make_sample_id, rows_to_table
from curation.labels.categories import OTHER, TAXONOMY, lookup_category

log = logging.getLogger(__name__)

# The bundled adapter YAMLs: package data of `curation.adapters` (the repo's manifests/adapters/).
ADAPTERS = files("curation.adapters")
IMAGE_EXTENSIONS = frozenset("png jpg jpeg webp bmp tif tiff".split())
VIDEO_EXTENSIONS = frozenset("mp4 mov mkv avi webm m4v mpg mpeg ts mts flv wmv 3gp ogv gif".split())
_FORMAT_BY_SUFFIX = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


class EditSourceError(ValueError):
    """An adapter or its metadata cannot be used; the message names the file and the fault."""


# --------------------------------------------------------------------------------------------
# Adapter spec
# --------------------------------------------------------------------------------------------

_Strict = ConfigDict(extra="forbid", populate_by_name=True)


def _as_list(value: Any) -> Any:
    """YAML convenience: a single name may be written without brackets."""
    return [value] if isinstance(value, str) else value


class ColumnSpec(BaseModel):
    """Which metadata fields hold what; each is a list of candidates and the first with a value wins."""

    model_config = _Strict

    source: list[str] = Field(description="fields holding the source image/video path")
    target: list[str] = Field(description="fields holding the edited (target) image/video path")
    instruction: list[str] = Field(description="fields holding the edit instruction")
    category: list[str] = Field(default_factory=list, description="fields holding the dataset's own category name")
    id: list[str] = Field(default_factory=list, description="fields holding the dataset's own row id")

    @field_validator("source", "target", "instruction", "category", "id", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _as_list(value)


class PathCategory(BaseModel):
    """Category taken from a path, for datasets that encode it in a directory or file name."""

    model_config = _Strict

    pattern: str = Field(description="regex (re.search) with a named group `category`")
    subject: Literal["metadata", "source", "target"] = Field(
        default="metadata",
        description="metadata: the metadata file's path relative to the root; source/target: the media path as written",
    )

    @field_validator("pattern")
    @classmethod
    def _has_category_group(cls, pattern: str) -> str:
        if "category" not in re.compile(pattern).groupindex:
            raise ValueError(f"pattern {pattern!r} has no named group (?P<category>...)")
        return pattern


class PathRewrite(BaseModel):
    """Prefix rewrite for relative media paths whose directory was renamed on upload."""

    model_config = _Strict

    from_: str = Field(alias="from", description="prefix of the relative path as written (without a leading ./)")
    to: str = Field(description="prefix it is replaced with")


class AdapterSpec(BaseModel):
    """A dataset layout: where its metadata is, how it is parsed, and which fields mean what."""

    model_config = _Strict

    dataset: str = Field(description="dataset name written to the `dataset` column")
    edit_kind: Literal["pair", "triplet", "auto"] = Field(
        description="pair (images), triplet (videos) or auto (per row, from the source file extension)"
    )
    metadata: list[str] = Field(description="glob patterns of metadata files, relative to the dataset root")
    format: Literal["auto", "json", "jsonl", "csv", "parquet"] = Field(
        default="auto", description="metadata format; auto picks it from each file's extension"
    )
    json_records_key: str | None = Field(
        default=None, description="for a JSON object holding the record list under a key; unset: list or id->record map"
    )
    csv_delimiter: str = Field(default=",", description="field delimiter of CSV metadata")
    path_base: str = Field(
        default="{root}",
        description="base that relative media paths are joined to; may use {root} and {metadata_dir}",
    )
    path_rewrites: list[PathRewrite] = Field(
        default_factory=list, description="prefix rewrites applied to relative media paths before joining"
    )
    columns: ColumnSpec = Field(description="field names for source, target, instruction, category and id")
    category_from_path: PathCategory | None = Field(
        default=None, description="fallback: take the category from a path when no category field has a value"
    )
    category_default: str | None = Field(
        default=None, description="raw category when neither a field nor a path gives one"
    )
    categories: dict[str, str] = Field(
        default_factory=dict, description="raw category -> taxonomy name; wins over the built-in synonyms"
    )

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_list(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("categories")
    @classmethod
    def _taxonomy_names(cls, mapping: dict[str, str]) -> dict[str, str]:
        bad = {k: v for k, v in mapping.items() if v not in TAXONOMY}
        if bad:
            raise ValueError(f"categories map to names outside the taxonomy {TAXONOMY}: {bad}")
        return mapping

    @field_validator("path_base")
    @classmethod
    def _known_placeholders(cls, template: str) -> str:
        try:
            template.format(root="r", metadata_dir="m")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"path_base {template!r} may only use {{root}} and {{metadata_dir}} ({exc})") from exc
        return template


def adapter_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in ADAPTERS.iterdir() if p.name.endswith(".yaml"))


def load_adapter(name_or_path: str) -> AdapterSpec:
    """A bundled adapter by name (`ditto-1m`) or any adapter YAML by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise EditSourceError(f"adapter file {candidate} does not exist")
        path, text = str(candidate), candidate.read_text()
    else:
        bundled = ADAPTERS / f"{name_or_path}.yaml"
        if not bundled.is_file():
            raise EditSourceError(f"unknown adapter {name_or_path!r}; bundled: {', '.join(adapter_names())}")
        path, text = f"curation.adapters/{name_or_path}.yaml", bundled.read_text()
    try:
        return AdapterSpec.model_validate(yaml.safe_load(text))
    except (ValidationError, yaml.YAMLError) as exc:
        raise EditSourceError(f"adapter {path}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------


class EditSourceRow(SampleRow):
    """One edit (source, target, instruction) as ingest's input row."""

    target_uri: str = Field(description="absolute path or URI of the edited image/video")
    instruction: str = Field(description="edit instruction, whitespace-trimmed")
    category: str = Field(description="taxonomy name (curation.labels.categories)")
    category_raw: str | None = Field(default=None, description="category as the dataset wrote it")
    dataset: str = Field(description="adapter's dataset name")
    edit_kind: Literal["pair", "triplet"] = Field(description="pair: images; triplet: videos")
    source_key: str | None = Field(default=None, description="the dataset's own id for the row")


EDIT_SOURCE_SCHEMA = arrow_schema(EditSourceRow)


class EditListing(BaseModel):
    """What a listing read, kept and skipped; goes into ingest's `_run.json`."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="adapter's dataset name")
    metadata_files: int = Field(description="metadata files read")
    rows_read: int = Field(description="records found in the metadata")
    rows_listed: int = Field(description="rows in the output table")
    skipped: dict[str, int] = Field(default_factory=dict, description="records not listed, by reason")
    duplicates: int = Field(default=0, description="records dropped because their sample_id was already listed")
    unknown_categories: dict[str, int] = Field(
        default_factory=dict, description="raw categories no mapping knows (listed as `other`), by count"
    )
    uncategorized: int = Field(default=0, description="listed rows with no category at all (listed as `other`)")
    by_category: dict[str, int] = Field(default_factory=dict, description="listed rows per taxonomy name")


def _is_uri(path: str) -> bool:
    return "://" in path


def _normalize(uri: str) -> str:
    if _is_uri(uri):
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.normpath(rest)}"
    return os.path.normpath(os.path.abspath(uri))


def _parent(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if _is_uri(uri) else os.path.dirname(uri)


def _metadata_files(root: str, patterns: list[str]) -> tuple[str, list[tuple[str, str]]]:
    """(effective root, [(metadata uri, path relative to root)]); a root that is a file is its own metadata."""
    if _is_uri(root):
        import fsspec

        fs, base = fsspec.core.url_to_fs(root)
        base = base.rstrip("/")
        if fs.isfile(base):
            return _parent(root.rstrip("/")), [(root.rstrip("/"), posixpath.basename(base))]
        root = root.rstrip("/")
        found = {p for pattern in patterns for p in fs.glob(f"{base}/{pattern}") if fs.isfile(p)}
        rels = sorted(p[len(base) + 1 :] for p in found)
        return root, [(f"{root}/{rel}", rel) for rel in rels]
    root = os.path.abspath(root)
    if os.path.isfile(root):
        return os.path.dirname(root), [(root, os.path.basename(root))]
    if not os.path.isdir(root):
        raise EditSourceError(f"dataset root {root!r} does not exist")
    found = {p for pattern in patterns for p in globlib.glob(os.path.join(root, pattern), recursive=True)}
    files = [(p, os.path.relpath(p, root).replace(os.sep, "/")) for p in found if os.path.isfile(p)]
    return root, sorted(files, key=lambda x: x[1])


def _read_records(uri: str, spec: AdapterSpec) -> Iterator[tuple[Any, str | None]]:
    """(record, key) pairs; `key` is the id when the JSON is an id -> record map."""
    fmt = spec.format if spec.format != "auto" else _FORMAT_BY_SUFFIX.get(PurePosixPath(uri).suffix.lower())
    if fmt is None:
        raise EditSourceError(f"{uri}: cannot tell the metadata format from the extension; set `format`")
    data = storage.read_bytes(uri)
    try:
        if fmt == "parquet":
            # Only the mapped columns: parquet forms may embed image bytes in columns we never use.
            names = pq.read_schema(pa.BufferReader(data)).names
            c = spec.columns
            wanted = [n for n in dict.fromkeys(c.source + c.target + c.instruction + c.category + c.id) if n in names]
            table = pq.read_table(pa.BufferReader(data), columns=wanted)
            yield from ((r, None) for r in table.to_pylist())
        elif fmt == "csv":
            reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")), delimiter=spec.csv_delimiter)
            yield from ((r, None) for r in reader)
        elif fmt == "jsonl":
            for line in data.decode("utf-8-sig").splitlines():
                if line.strip():
                    yield json.loads(line), None
        else:
            yield from _json_records(json.loads(data.decode("utf-8-sig")), spec.json_records_key, uri)
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error, pa.ArrowException) as exc:
        raise EditSourceError(f"{uri}: unreadable {fmt} metadata ({exc})") from exc


def _json_records(obj: Any, records_key: str | None, uri: str) -> Iterator[tuple[Any, str | None]]:
    if records_key is not None:
        if not isinstance(obj, dict) or not isinstance(obj.get(records_key), list):
            raise EditSourceError(f"{uri}: expected an object with a list under {records_key!r}")
        obj = obj[records_key]
    if isinstance(obj, list):
        yield from ((r, None) for r in obj)
    elif isinstance(obj, dict) and all(isinstance(v, dict) for v in obj.values()):
        yield from ((r, str(k)) for k, r in obj.items())
    else:
        raise EditSourceError(f"{uri}: JSON is neither a record list nor an id -> record map; set json_records_key")


def _pick(record: dict, candidates: list[str]) -> Any:
    """First candidate field with a value; empty strings count as no value."""
    for name in candidates:
        value = record.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        return value
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, list):  # some datasets keep several phrasings; the first is the canonical one
        value = next((v for v in value if isinstance(v, str) and v.strip()), None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _resolve(value: str, base: str, rewrites: list[PathRewrite]) -> str:
    """Absolute paths and URIs are kept; relative ones are rewritten, then joined to the base."""
    value = value.strip()
    if _is_uri(value) or os.path.isabs(value):
        return value
    while value.startswith("./"):
        value = value[2:]
    for rewrite in rewrites:
        if value.startswith(rewrite.from_):
            value = rewrite.to + value[len(rewrite.from_) :]
            break
    return _normalize(f"{base.rstrip('/')}/{value}" if _is_uri(base) else os.path.join(base, value))


def _media_kind(uri: str) -> str | None:
    ext = PurePosixPath(uri.split("?", 1)[0]).suffix.lower().lstrip(".")
    return "pair" if ext in IMAGE_EXTENSIONS else "triplet" if ext in VIDEO_EXTENSIONS else None


def _raw_category(record: dict, spec: AdapterSpec, meta_rel: str, source: str, target: str) -> str | None:
    raw = _text(_pick(record, spec.columns.category))
    if raw is None and spec.category_from_path is not None:
        rule = spec.category_from_path
        subject = {"metadata": meta_rel, "source": source, "target": target}[rule.subject]
        match = re.search(rule.pattern, subject)
        raw = match.group("category") if match and match.group("category") else None
    return raw if raw is not None else spec.category_default


def _edit_row(record: Any, key: str | None, spec: AdapterSpec, base: str, meta_rel: str,
              categorize: Callable[[str | None], str | None]) -> dict | str:
    """The output row for one record, or the reason it is skipped."""
    if not isinstance(record, dict):
        return "not_a_record"
    paths = {}
    for role in ("source", "target"):
        value = _pick(record, getattr(spec.columns, role))
        if value is None:
            return f"missing_{role}"
        if not isinstance(value, str):  # e.g. image bytes embedded in a parquet form
            return f"{role}_not_a_path"
        paths[role] = value
    instruction = _text(_pick(record, spec.columns.instruction))
    if instruction is None:
        return "missing_instruction"
    source_uri = _resolve(paths["source"], base, spec.path_rewrites)
    target_uri = _resolve(paths["target"], base, spec.path_rewrites)
    edit_kind = spec.edit_kind if spec.edit_kind != "auto" else _media_kind(source_uri)
    if edit_kind is None:
        return "unknown_media_type"
    raw = _raw_category(record, spec, meta_rel, paths["source"], paths["target"])
    source_key = _text(_pick(record, spec.columns.id)) or key
    return {
        "sample_id": make_sample_id("source", source_uri, target_uri, instruction),
        "parent_ids": [],
        "kind": "source",
        "source_uri": source_uri,
        "status": "ok",
        "reason": None,
        "stage": "sources",
        "stage_version": "1",
        "target_uri": target_uri,
        "instruction": instruction,
        "category": categorize(raw) or OTHER,
        "category_raw": raw,
        "dataset": spec.dataset,
        "edit_kind": edit_kind,
        "source_key": source_key,
    }


def _sorted_unique(rows: list[dict]) -> list[dict]:
    """Rows in listing order, first of each sample_id kept; ties break on every column, so it is stable."""
    rows = sorted(rows, key=lambda r: (r["source_uri"], r["target_uri"], r["instruction"], r["category"],
                                       r["category_raw"] or "", r["source_key"] or ""))
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row["sample_id"] not in seen:
            seen.add(row["sample_id"])
            unique.append(row)
    return unique


def list_edit_sources(root: str, adapter: AdapterSpec) -> tuple[pa.Table, EditListing]:
    """Source rows (`kind=source`, one per edit) for a dataset root read through an adapter.

    Sorted by (source_uri, target_uri, instruction) and deduplicated on sample_id, so the same
    dataset always lists to the same fragments and a rerun never duplicates an edit.
    """
    root, files = _metadata_files(root, adapter.metadata)
    if not files:
        raise EditSourceError(f"{adapter.dataset}: no metadata under {root} matching {adapter.metadata}")
    # Millions of rows share a handful of raw names: look each up once.
    categorize = functools.lru_cache(maxsize=None)(lambda raw: lookup_category(raw, adapter.categories))
    rows: list[dict] = []
    skipped: Counter[str] = Counter()
    read = 0
    for uri, rel in files:
        base = _normalize(adapter.path_base.format(root=root, metadata_dir=_parent(uri)))
        for record, key in _read_records(uri, adapter):
            read += 1
            row = _edit_row(record, key, adapter, base, rel, categorize)
            if isinstance(row, str):
                skipped[row] += 1
            else:
                rows.append(row)
    unique = _sorted_unique(rows)
    raws = (r["category_raw"] for r in unique if r["category_raw"] is not None)
    unknown = Counter(raw for raw in raws if categorize(raw) is None)
    listing = EditListing(
        dataset=adapter.dataset,
        metadata_files=len(files),
        rows_read=read,
        rows_listed=len(unique),
        skipped=dict(sorted(skipped.items())),
        duplicates=len(rows) - len(unique),
        unknown_categories=dict(sorted(unknown.items())),
        uncategorized=sum(r["category_raw"] is None for r in unique),
        by_category=dict(sorted(Counter(r["category"] for r in unique).items())),
    )
    if unknown:
        log.warning("%s: %d rows have categories no mapping knows, listed as `other`: %s",
                    adapter.dataset, sum(unknown.values()), dict(unknown))
    return rows_to_table(unique, EDIT_SOURCE_SCHEMA), listing
