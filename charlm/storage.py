"""Local paths and s3:// or gs:// URIs behind one pyarrow filesystem interface."""

from __future__ import annotations

import os
import posixpath
import time
import uuid

import pyarrow.fs as pafs

from charlm.errors import CharlmError, first_line


def is_uri(path: str) -> bool:
    return "://" in path


def normalize(path: str) -> str:
    """URIs stay as they are; local paths become absolute (Ray Train needs that)."""
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    path = normalize(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), path
    try:
        return pafs.FileSystem.from_uri(path)
    except Exception as e:  # pyarrow raises several types for bad or unsupported URIs
        raise CharlmError(f"cannot open {path}: {first_line(e)}; "
                          "check the URI and credentials") from e


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else os.path.join(base, *parts)


def exists(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


TORN_READS = 5  # reads of a table that keeps coming back torn, before its error


def read_table(uri: str):
    """A small Parquet table (a pyarrow Table), read whole, then parsed: on an
    object store a table replaced (write_rows) between the requests of one
    pyarrow read comes back torn (one version's size, another's bytes), so a
    read that does not parse is made again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = resolve(uri)
    for attempt in range(1, TORN_READS + 1):
        with fs.open_input_file(path) as f:
            data = f.read()
        try:
            return pq.read_table(pa.BufferReader(data))
        except (pa.ArrowInvalid, OSError):
            if attempt == TORN_READS:
                raise
            time.sleep(0.05 * attempt)


def read_rows(uri: str) -> list[dict]:
    """The rows of a small Parquet table, as dicts (none if it does not exist)."""
    return read_table(uri).to_pylist() if exists(uri) else []


def write_rows(uri: str, rows: list[dict]) -> str:
    """A small Parquet table, replaced whole: written beside and moved over
    (a rename locally, a server-side copy on an object store), so readers see
    the old table or the new one, even if the writer dies mid-write."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = resolve(uri)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    pq.write_table(pa.Table.from_pylist(rows), tmp, filesystem=fs)
    fs.move(tmp, path)
    return uri


def check_writable(path: str, flag: str) -> None:
    """Fail before any work starts, not after hours of training. Leaves nothing
    behind: directories it had to create are removed again, so a job refused
    later (say for a local path on a multi-node cluster) has written nothing."""
    fs, p = resolve(path)
    p = p.rstrip("/")
    created = _topmost_missing(fs, p)
    probe = f"{p}/.charlm-write-probe-{uuid.uuid4().hex}"
    try:
        fs.create_dir(p, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except Exception as e:
        raise CharlmError(f"{flag} {path} cannot be written ({first_line(e)}); "
                          "choose a directory or bucket you can write to") from e
    finally:
        if created:
            try:
                fs.delete_dir(created)
            except Exception:  # nothing was created, or it is already gone
                pass


def _topmost_missing(fs: pafs.FileSystem, path: str) -> str | None:
    """The highest directory on the way to `path` that does not exist yet."""
    missing = None
    while path and path != posixpath.dirname(path):
        try:
            if fs.get_file_info(path).type != pafs.FileType.NotFound:
                break
        except Exception:  # e.g. an unreachable bucket: the probe will say why
            break
        missing, path = path, posixpath.dirname(path)
    return missing
