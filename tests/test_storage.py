"""The write check that runs before any work: it fails clearly and leaves
nothing behind; small tables read whole while they are replaced."""

import itertools
import threading

import pytest

from charlm import storage
from charlm.errors import CharlmError


def test_the_write_check_leaves_no_directory_it_created(tmp_path):
    target = tmp_path / "runs" / "deep" / "name"
    storage.check_writable(str(target), "--storage-path")
    assert list(tmp_path.iterdir()) == []


def test_the_write_check_keeps_what_existed(tmp_path):
    (tmp_path / "runs").mkdir()
    storage.check_writable(str(tmp_path / "runs"), "--storage-path")
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]
    assert list((tmp_path / "runs").iterdir()) == []


def test_an_unwritable_path_is_one_error(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(CharlmError, match="--storage-path .* cannot be written"):
        storage.check_writable(str(tmp_path / "a_file" / "runs"), "--storage-path")


def test_a_table_replaced_while_it_is_read_on_s3_is_read_whole(s3_env):
    """A run replaces its history.parquet each epoch while a sweep reads it:
    every read gives one whole version of the table, never a torn one."""
    from raycluster import BUCKET, environ

    uri = f"s3://{BUCKET}/storage/history.parquet"
    done = threading.Event()

    def rewrite() -> None:
        for n in itertools.cycle(range(1, 40)):
            if done.is_set():
                return
            storage.write_rows(uri, [{"epoch": e, "note": "x" * e} for e in range(1, n + 1)])

    with environ(s3_env):
        storage.write_rows(uri, [{"epoch": 1, "note": "x"}])
        writer = threading.Thread(target=rewrite)
        writer.start()
        try:
            reads = [storage.read_rows(uri) for _ in range(30)]
        finally:
            done.set()
            writer.join()
    assert all([r["epoch"] for r in rows] == list(range(1, len(rows) + 1)) for rows in reads)
