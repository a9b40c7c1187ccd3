"""Files on any filesystem pyarrow or fsspec reaches (local paths, s3://, gs://, ...), written
atomically: a reader, or a resumed run, never sees a half-written manifest part or JSON file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

# --------------------------------------------------------------------------------------------


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or any URI pyarrow.fs or fsspec understands."""
    if "://" not in uri:
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


def move_dir(src: str, dst: str) -> None:
    """Move a directory tree. Object stores have no directories to rename, so there every file
    is copied, then the source removed: a move killed half way leaves both copies, never neither."""
    fs, src_path = resolve(src)
    _, dst_path = resolve(dst)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(dst_path.rpartition("/")[0], recursive=True)
        fs.move(src_path, dst_path)
        return
    for info in fs.get_file_info(pafs.FileSelector(src_path, recursive=True)):
        if info.type == pafs.FileType.File:
            target = dst_path + info.path[len(src_path):]
            fs.create_dir(target.rpartition("/")[0], recursive=True)
            fs.copy_file(info.path, target)
    fs.delete_dir(src_path)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_table(uri: str, columns: list[str] | None = None, filter: Any = None) -> pa.Table:
    """One Parquet file or a whole manifest directory, through pyarrow datasets."""
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
