"""List edit pairs/triplets from public edit datasets through declarative adapters.

Every public edit dataset (Ditto-1M, OpenVE-3M, ReCo, Señorita-2M, NHR-Edit, GPT-Image-Edit-1.5M, …)
ships the same thing — source media, target media, an instruction, maybe a category — in its own
metadata layout. An adapter is a small YAML file (`manifests/adapters/<name>.yaml`) that says where
the metadata files are and which fields hold what, so supporting a new dataset is a YAML file, not
code. `list_edit_sources` turns a dataset root plus an adapter into `kind=source` rows for ingest.

Media files are never opened or stat'ed here: datasets hold millions of them, and ingest's probe
finds missing or broken files later and records them on the row. Media embedded in the metadata
(parquet binary columns, HF `{"bytes", "path"}` structs, WebDataset members) are written once to
the run's media store, content-addressed, and listed by that file's URI.
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
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
from curation.sources.licences import UNKNOWN_LICENCE, licence_id

log = logging.getLogger(__name__)

# The bundled adapter YAMLs: package data of `curation.adapters` (the repo's manifests/adapters/).
ADAPTERS = files("curation.adapters")
IMAGE_EXTENSIONS = frozenset("png jpg jpeg webp bmp tif tiff".split())
VIDEO_EXTENSIONS = frozenset("mp4 mov mkv avi webm m4v mpg mpeg ts mts flv wmv 3gp ogv gif".split())
PARQUET_BATCH_ROWS = 64  # ours: parquet rows decoded at once; bounds the listing's memory when rows embed videos
_FORMAT_BY_SUFFIX = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
                     ".tar": "webdataset"}


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
    captions: list[str] = Field(
        default_factory=list, description="caption/prompt fields kept as they are (`dataset_captions`), each under its own name; "
        "never read as the instruction unless also listed under `instruction`")
    reference: list[str] = Field(
        default_factory=list, description="fields holding a reference image (path or embedded bytes): the row becomes a quad")

    @field_validator("source", "target", "instruction", "category", "id", "reference", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("captions", mode="before")
    @classmethod
    def _caption_list(cls, value: Any) -> Any:
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


class SessionSpec(BaseModel):
    """Sessions (VINCIE-10M: 2-20 frames with a transition instruction between adjacent frames) listed
    as one edit pair per transition. Each pair is a record with the session's own fields plus
    `frame_before`, `frame_after`, `transition` (the instruction) and `turn_id` (`<session id>#<k>`),
    which the adapter's `columns` then name."""

    model_config = _Strict

    frames: str = Field(description="field holding the session's frames in order (paths or embedded images)")
    transitions: str = Field(description="field holding one entry per adjacent pair: a list, or a JSON string of one")
    instruction: list[str] = Field(description="key path from a transition entry to its instruction, e.g. [text, summary_change]")

    @field_validator("instruction", mode="before")
    @classmethod
    def _path(cls, value: Any) -> Any:
        return _as_list(value)


class AdapterSpec(BaseModel):
    """A dataset layout: where its metadata is, how it is parsed, and which fields mean what."""

    model_config = _Strict

    dataset: str = Field(description="dataset name written to the `dataset` column")
    licence: str = Field(
        description="the dataset's licence from its card, as a lower-case SPDX-style id (cc-by-nc-4.0, apache-2.0); "
        f"`{UNKNOWN_LICENCE}` when the card names none: never guessed")
    edit_kind: Literal["pair", "triplet", "auto"] = Field(
        description="pair (images), triplet (videos) or auto (per row, from the source file extension)"
    )
    metadata: list[str] = Field(description="glob patterns of metadata files, relative to the dataset root")
    format: Literal["auto", "json", "jsonl", "csv", "parquet", "webdataset"] = Field(
        default="auto", description="metadata format; auto picks it from each file's extension. webdataset: tar shards, one "
        "record per sample key: its `json` member's fields plus every other member's bytes under its extension (`1.0.jpg`)"
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
    session: SessionSpec | None = Field(
        default=None, description="records are sessions (ordered frames with a transition between each adjacent pair): "
        "each is listed as one pair per transition")
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

    @field_validator("licence")
    @classmethod
    def _licence_id(cls, value: str) -> str:
        return licence_id(value)

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


class DatasetText(BaseModel):
    """One caption or prompt as the dataset ships it: a list of these keeps one schema for every
    dataset (a map keyed by field names would not), which HF `datasets` needs to read the json."""

    field: str = Field(description="the dataset's field name")
    text: str = Field(description="its text, whitespace-trimmed")


class EditSourceRow(SampleRow):
    """One edit (source, target, instruction) as ingest's input row."""

    target_uri: str = Field(description="absolute path or URI of the edited image/video")
    instruction: str = Field(description="edit instruction, whitespace-trimmed")
    category: str = Field(description="taxonomy name (curation.labels.categories)")
    category_native: str | None = Field(default=None, description="category as the dataset wrote it (its own label, kept beside "
                                                                  "the normalised `category`)")
    licence: str = Field(description="the dataset's licence as its adapter declares it (SPDX-style id), or `unknown`")
    dataset_captions: list[DatasetText] = Field(
        default_factory=list, description="every caption/prompt field the adapter keeps, under the dataset's own field names")
    dataset: str = Field(description="adapter's dataset name")
    edit_kind: Literal["pair", "triplet"] = Field(description="pair: images; triplet: videos")
    source_key: str | None = Field(default=None, description="the dataset's own id for the row")
    reference_uri: str | None = Field(default=None, description="the dataset's own reference image (Kiwi-Edit RefVIE): "
                                                                 "ingest makes the row a quad")


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
    try:
        if fmt in ("parquet", "webdataset"):
            records = _parquet_records(uri, spec) if fmt == "parquet" else _webdataset_records(uri)
            yield from ((r, None) for r in records)
            return
        data = storage.read_bytes(uri)
        if fmt == "csv":
            reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")), delimiter=spec.csv_delimiter)
            yield from ((r, None) for r in reader)
        elif fmt == "jsonl":
            for line in data.decode("utf-8-sig").splitlines():
                if line.strip():
                    yield json.loads(line), None
        else:
            yield from _json_records(json.loads(data.decode("utf-8-sig")), spec.json_records_key, uri)
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error, pa.ArrowException, tarfile.TarError) as exc:
        raise EditSourceError(f"{uri}: unreadable {fmt} metadata ({exc})") from exc


def _parquet_records(uri: str, spec: AdapterSpec) -> Iterator[dict]:
    """Only the mapped columns, a batch at a time: parquet forms embed media bytes (a RefVIE-477K
    chunk holds whole videos), so neither the file nor its whole table is held at once."""
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        c = spec.columns
        session = [spec.session.frames, spec.session.transitions] if spec.session else []
        mapped = dict.fromkeys(c.source + c.target + c.instruction + c.category + c.id + c.captions + c.reference + session)
        wanted = [n for n in mapped if n in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
            yield from batch.to_pylist()


def _webdataset_records(uri: str) -> Iterator[dict]:
    """A WebDataset shard streamed member by member (X2Edit): one record per sample key, holding its
    `json` member's fields and every other member's bytes under its extension (`1.0.jpg`, `2.jpg`)."""
    fs, path = storage.resolve(uri)
    with fs.open_input_stream(path) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        key, record = None, {}
        for member in tar:
            if not member.isfile():
                continue
            folder, name = posixpath.split(member.name)
            stem, _, ext = name.partition(".")  # webdataset's rule: the key ends at the name's first dot
            if posixpath.join(folder, stem) != key:
                if record:
                    yield record
                key, record = posixpath.join(folder, stem), {"__key__": posixpath.join(folder, stem)}
            data = tar.extractfile(member).read()
            if ext == "json":
                record.update(json.loads(data))
            else:
                record[ext] = data
        if record:
            yield record


def _session_pairs(record: Any, key: str | None, spec: AdapterSpec) -> Iterator[tuple[Any, str | None] | str]:
    """A session record as one record per transition (frame k -> k+1), or the reason it is skipped."""
    rule = spec.session
    if rule is None or not isinstance(record, dict):
        yield record, key
        return
    frames, transitions = record.get(rule.frames), record.get(rule.transitions)
    if isinstance(transitions, str):
        try:
            transitions = json.loads(transitions)
        except json.JSONDecodeError:
            yield "session_transitions_not_json"
            return
    if not isinstance(frames, list) or not isinstance(transitions, list):
        yield "session_not_lists"
        return
    if len(transitions) != len(frames) - 1:
        yield f"session_transitions_mismatch: {len(frames)} frames, {len(transitions)} transitions"
        return
    session_id = _text(_pick(record, spec.columns.id)) or key or ""
    shared = {k: v for k, v in record.items() if k not in (rule.frames, rule.transitions)}
    for k, transition in enumerate(transitions):
        for name in rule.instruction:
            transition = transition.get(name) if isinstance(transition, dict) else None
        yield {**shared, "frame_before": frames[k], "frame_after": frames[k + 1], "transition": transition,
               "turn_id": f"{session_id}#{k}"}, key


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


def _captions(record: dict, fields: list[str]) -> list[dict[str, str]]:
    """Every listed field with text, in the adapter's order; a field holding several phrasings keeps each."""
    kept = []
    for name in fields:
        value = record.get(name)
        for item in value if isinstance(value, list) else [value]:
            text = _text(item)
            if text is not None:
                kept.append({"field": name, "text": text})
    return kept


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


# --------------------------------------------------------------------------------------------
# Embedded media: parquet forms (NHR-Edit, Kiwi-Edit RefVIE-477K) hold the bytes, not a path
# --------------------------------------------------------------------------------------------

StoreMedia = Callable[[bytes, str], str]  # (bytes, extension) -> URI of the file they were stored in, once

# Leading bytes -> extension; ISO BMFF (`ftyp` at offset 4) is mp4/mov/m4v alike to PyAV, and
# Matroska's EBML header covers webm.
_MAGIC = ((0, b"\xff\xd8\xff", "jpg"), (0, b"\x89PNG\r\n\x1a\n", "png"), (0, b"GIF8", "gif"),
          (8, b"WEBP", "webp"), (4, b"ftyp", "mp4"), (0, b"\x1aE\xdf\xa3", "mkv"))


@dataclass(frozen=True)
class Located:
    """Where one media field of a record points."""

    uri: str  # what ingest probes: the resolved path, or the file embedded bytes were stored in
    written: str  # the path as the dataset wrote it (category_from_path reads it)
    identity: str  # what the sample id hashes: the uri, or the content hash of embedded bytes (run-independent)


def sniff_ext(data: bytes, name: str | None = None) -> str | None:
    """The media extension of embedded bytes, from their leading bytes, else from the file name
    stored beside them (HF datasets' `{"bytes", "path"}`)."""
    for offset, magic, ext in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return ext
    ext = PurePosixPath(name or "").suffix.lower().lstrip(".")
    return ext if ext in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS else None


def _locate(value: Any, role: str, base: str, spec: AdapterSpec, store: StoreMedia | None) -> Located | str:
    """A media field's value (a path; bytes; an HF `{"bytes", "path"}` struct) located, or why it
    cannot be used. Embedded bytes are written once through `store` (the run's media store)."""
    name = None
    if isinstance(value, dict):
        name = value.get("path") if isinstance(value.get("path"), str) else None
        value = value.get("bytes") or name  # a struct without bytes points at a file
    if isinstance(value, str) and value.strip():
        uri = _resolve(value, base, spec.path_rewrites)
        return Located(uri=uri, written=value, identity=uri)
    if not isinstance(value, (bytes, bytearray)) or not value:
        return f"{role}_not_media: {type(value).__name__}"
    if store is None:
        return f"{role}_embedded_without_media_store"
    ext = sniff_ext(value, name)
    if ext is None:
        return f"{role}_unknown_embedded_format"
    uri = store(bytes(value), ext)
    content = PurePosixPath(uri).name  # the store names a file by its sha256
    return Located(uri=uri, written=name or content, identity=f"embedded:{content}")


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
              categorize: Callable[[str | None], str | None], store: StoreMedia | None = None) -> dict | str:
    """The output row for one record, or the reason it is skipped."""
    if not isinstance(record, dict):
        return "not_a_record"
    values = {role: _pick(record, getattr(spec.columns, role)) for role in ("source", "target", "reference")}
    for role in ("source", "target"):
        if values[role] is None:
            return f"missing_{role}"
    instruction = _text(_pick(record, spec.columns.instruction))
    if instruction is None:  # a caption says what an image shows, not how to edit it: never a stand-in
        return "missing_instruction_caption_only" if _captions(record, spec.columns.captions) else "missing_instruction"
    # Located only now, so a record skipped for its text never writes embedded media to the store.
    found: dict[str, Located] = {}
    for role, value in values.items():
        located = None if value is None else _locate(value, role, base, spec, store)  # no reference: a plain edit
        if isinstance(located, str):
            return located
        if located is not None:
            found[role] = located
    paths = {role: loc.written for role, loc in found.items()}
    source_uri, target_uri = found["source"].uri, found["target"].uri
    reference = found.get("reference")
    edit_kind = spec.edit_kind if spec.edit_kind != "auto" else _media_kind(source_uri)
    if edit_kind is None:
        return "unknown_media_type"
    raw = _raw_category(record, spec, meta_rel, paths["source"], paths["target"])
    source_key = _text(_pick(record, spec.columns.id)) or key
    return {
        # The dataset is part of the id: two datasets may hold the same files (or the same embedded
        # bytes, stored once), and each listing of them is its own sample.
        "sample_id": make_sample_id("source", found["source"].identity, found["target"].identity, instruction,
                                    spec.dataset, reference.identity if reference else None),
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
        "category_native": raw,
        "licence": spec.licence,
        "dataset_captions": _captions(record, spec.columns.captions),
        "dataset": spec.dataset,
        "edit_kind": edit_kind,
        "source_key": source_key,
        "reference_uri": reference.uri if reference else None,
    }


def _sorted_unique(rows: list[dict]) -> list[dict]:
    """Rows in listing order, first of each sample_id kept; ties break on every column, so it is stable."""
    rows = sorted(rows, key=lambda r: (r["source_uri"], r["target_uri"], r["instruction"], r["category"],
                                       r["category_native"] or "", r["source_key"] or ""))
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row["sample_id"] not in seen:
            seen.add(row["sample_id"])
            unique.append(row)
    return unique


def list_edit_sources(root: str, adapter: AdapterSpec, store: StoreMedia | None = None) -> tuple[pa.Table, EditListing]:
    """Source rows (`kind=source`, one per edit) for a dataset root read through an adapter.

    Sorted by (source_uri, target_uri, instruction) and deduplicated on sample_id, so the same
    dataset always lists to the same fragments and a rerun never duplicates an edit. Media
    embedded in the metadata are written through `store`; without one such rows are skipped.
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
        for session, session_key in _read_records(uri, adapter):
            read += 1
            for found in _session_pairs(session, session_key, adapter):
                row = found if isinstance(found, str) else _edit_row(*found, adapter, base, rel, categorize, store)
                if isinstance(row, str):
                    skipped[row] += 1
                else:
                    rows.append(row)
    unique = _sorted_unique(rows)
    raws = (r["category_native"] for r in unique if r["category_native"] is not None)
    unknown = Counter(raw for raw in raws if categorize(raw) is None)
    listing = EditListing(
        dataset=adapter.dataset,
        metadata_files=len(files),
        rows_read=read,
        rows_listed=len(unique),
        skipped=dict(sorted(skipped.items())),
        duplicates=len(rows) - len(unique),
        unknown_categories=dict(sorted(unknown.items())),
        uncategorized=sum(r["category_native"] is None for r in unique),
        by_category=dict(sorted(Counter(r["category"] for r in unique).items())),
    )
    if unknown:
        log.warning("%s: %d rows have categories no mapping knows, listed as `other`: %s",
                    adapter.dataset, sum(unknown.values()), dict(unknown))
    return rows_to_table(unique, EDIT_SOURCE_SCHEMA), listing
