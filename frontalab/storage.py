"""One way to read and write local paths and ``s3://`` URIs, and a local cache for S3 reads.

S3 goes through pyarrow's filesystem with the endpoint from the environment
(``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, as `services.client_env` sets it) and
credentials from the environment only: handing keys to a filesystem object would pickle
them into whatever serialises it (Ray task arguments, Tune state).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from frontalab.paths import cache_dir


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// URI."""
    if not is_s3(uri):
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    parsed = urlparse(uri)
    options: dict = {"region": os.environ.get("AWS_REGION", "us-east-1")}
    endpoint = s3_endpoint()
    if endpoint:
        ep = urlparse(endpoint)
        options.update(endpoint_override=ep.netloc, scheme=ep.scheme or "http")
    return pafs.S3FileSystem(**options), f"{parsed.netloc}{parsed.path}".rstrip("/")


def join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *[p.strip("/") for p in parts]])


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Readers see the whole file or none: local writes rename a temp file, S3 PUTs are atomic."""
    fs, path = filesystem(uri)
    if is_s3(uri):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    replace_durably(tmp, target)


def replace_durably(tmp: Path, target: Path) -> None:
    """Rename a fully written ``tmp`` onto ``target`` so that, also across a power cut, readers find the whole
    file or the old one: the bytes reach the disk before the rename, and the rename before this returns."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_folders(uri: str) -> list[str]:
    """The folders (S3: common prefixes) directly below ``uri``, as URIs of the same kind, sorted."""
    fs, root = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    prefix = "s3://" if is_s3(uri) else ""
    return sorted(prefix + i.path for i in infos if i.type == pafs.FileType.Directory)


def list_files(uri: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Every file below ``uri`` (recursively), as URIs of the same kind, sorted."""
    fs, root = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    prefix = "s3://" if is_s3(uri) else ""
    out = [prefix + i.path for i in infos if i.type == pafs.FileType.File
           and (not suffixes or i.path.lower().endswith(suffixes))]
    return sorted(out)


def cached(uri: str, budget_bytes: int = 0) -> Path:
    """A local path holding ``uri``'s bytes: the path itself, or a copy in the user cache.

    S3 objects are cached by URI, size and modification time, so a second read (another
    trial on this node) is local and a rewritten object is fetched again. With ``budget_bytes``,
    the least recently used copies are deleted until the cache fits it (a streaming reader's bound).
    """
    if not is_s3(uri):
        return Path(uri).expanduser()
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(uri)
    key = hashlib.sha256(f"{uri}|{info.size}|{info.mtime_ns}".encode()).hexdigest()[:24]
    local = cache_dir() / "s3" / key / Path(urlparse(uri).path).name
    try:
        os.utime(local)  # recently used: trimmed last
    except FileNotFoundError:  # not cached yet, or trimmed by another process since
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(read_bytes(uri))
        os.replace(tmp, local)
        if budget_bytes:
            trim_cache(budget_bytes, keep=local)
    return local


def trim_cache(budget_bytes: int, keep: Path) -> None:
    """Delete the least recently used S3 copies until the cache holds at most ``budget_bytes`` (never ``keep``).

    A reader that already opened a deleted copy keeps reading it (POSIX unlink semantics).
    """
    copies = []
    for f in (cache_dir() / "s3").glob("*/*"):
        try:
            st = f.stat()
        except FileNotFoundError:  # another process trimmed it first
            continue
        copies.append((st.st_mtime, st.st_size, f))
    total = sum(size for _, size, _ in copies)
    for _, size, f in sorted(copies):
        if total <= budget_bytes:
            break
        if f != keep and not f.name.startswith("."):
            f.unlink(missing_ok=True)
            total -= size
