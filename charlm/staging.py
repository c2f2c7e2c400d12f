"""Outputs written beside their destination and moved into place only when
complete, so that a failed job, or a failed move, never loses the old output
nor leaves a mix of old and new files where readers look.

Locally a move is a rename. s3:// and gs:// have no rename, so replacing an
output there is copies and deletes, in an order that keeps, at every moment, a
complete copy of the old or of the new output:

1. the new output is complete in `.<name>.tmp-<id>` (the job wrote it there);
2. the old one is copied aside to `.<name>.old-<id>`, then deleted from `<name>`;
3. the new one is copied from the staging prefix to `<name>`;
4. the staging prefix and the set-aside copy are deleted.

A failure names where the old output is (in place until step 2 is done, aside
after), and a half-copied `<name>` is deleted rather than left to be read.
"""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow.fs as pafs

from charlm import storage
from charlm.errors import CharlmError, first_line


@contextmanager
def staged_output(output: str, overwrite: bool) -> Iterator[tuple[pafs.FileSystem, str]]:
    """A temporary location beside `output` (filesystem, path), moved into place
    only if the block succeeds; on any failure in the block it is deleted and
    `output` is left as it was."""
    fs, path = storage.resolve(output)
    path = path.rstrip("/")
    if exists(fs, path) and not overwrite:
        raise CharlmError(f"--output {output} already exists; pass --overwrite to replace it "
                          "or choose another path")
    parent, name = posixpath.split(path)
    token = uuid.uuid4().hex[:12]
    tmp = posixpath.join(parent, f".{name}.tmp-{token}")
    try:
        fs.create_dir(tmp, recursive=True)
        with fs.open_output_stream(f"{tmp}/.probe") as f:
            f.write(b"ok")
        fs.delete_file(f"{tmp}/.probe")
    except Exception as e:  # pyarrow raises several types for permissions and bad URIs
        delete(fs, tmp)
        raise CharlmError(f"--output {output} cannot be written ({first_line(e)}); "
                          "choose a directory or bucket you can write to") from e
    try:
        yield fs, tmp
        if isinstance(fs, pafs.LocalFileSystem):
            _rename_into_place(fs, tmp, path)
        else:
            _copy_into_place(fs, tmp, path, posixpath.join(parent, f".{name}.old-{token}"),
                             output)
    finally:
        delete(fs, tmp)


def _rename_into_place(fs: pafs.FileSystem, tmp: str, path: str) -> None:
    """An existing output is renamed aside first, and back if the rename fails."""
    aside = f"{tmp}.old"
    replacing = exists(fs, path)
    if replacing:
        fs.move(path, aside)
    try:
        fs.move(tmp, path)
    except BaseException:
        if replacing:
            fs.move(aside, path)
        raise
    delete(fs, aside)


def _copy_into_place(fs: pafs.FileSystem, tmp: str, path: str, aside: str, output: str) -> None:
    """Steps 2-4 of the module's docstring, each failure one line saying where
    the old output is."""
    where = _scheme(output) + aside
    replacing = exists(fs, path)
    if replacing:
        try:
            copy_tree(fs, path, aside)
        except Exception as e:
            _quietly(delete, fs, aside)
            raise CharlmError(f"--output {output} was not replaced: setting the old output "
                              f"aside failed ({first_line(e)}); it is unchanged, retry the "
                              "job") from e
        try:
            delete(fs, path)
        except Exception as e:
            raise CharlmError(f"--output {output} was not replaced: deleting the old output "
                              f"failed ({first_line(e)}); its complete copy is at {where}; "
                              f"delete {output} and copy it back, or retry the job") from e
    try:
        copy_tree(fs, tmp, path)
    except Exception as e:
        _quietly(delete, fs, path)
        kept = (f"the old output is at {where}; copy it back to {output} or retry the job"
                if replacing else "retry the job")
        raise CharlmError(f"--output {output} was not written: copying the new output into "
                          f"place failed ({first_line(e)}); {kept}") from e
    if replacing:
        try:
            delete(fs, aside)
        except Exception as e:
            raise CharlmError(f"--output {output} is written, but the old output set aside at "
                              f"{where} could not be deleted ({first_line(e)}); delete it "
                              "yourself") from e


def _scheme(output: str) -> str:
    """`s3://` of `s3://bucket/key` (pyarrow's paths drop it)."""
    return output.split("://", 1)[0] + "://" if storage.is_uri(output) else ""


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def copy_tree(fs: pafs.FileSystem, source: str, destination: str) -> None:
    """Every file under `source` to the same place under `destination`, one
    server-side copy each."""
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(source, recursive=True))
             if i.type == pafs.FileType.File]
    fs.create_dir(destination, recursive=True)
    for f in sorted(files):
        copy_file(fs, f, destination + f[len(source):])


def copy_file(fs: pafs.FileSystem, source: str, destination: str) -> None:
    fs.copy_file(source, destination)


def delete(fs: pafs.FileSystem, path: str) -> None:
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def _quietly(step, *args) -> None:
    """A clean-up after a failure: its own failure must not hide the first."""
    try:
        step(*args)
    except Exception:
        pass
