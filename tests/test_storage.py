"""The write check that runs before any work: it fails clearly and leaves nothing behind."""

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
