"""Replacing an output on S3 (moto's server, no rename) never loses data: a
failure injected at each step leaves a complete old or new copy, says where the
old one is, and never leaves `<output>` holding old and new files together."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from raycluster import environ, s3_server

from charlm import staging
from charlm.errors import CharlmError

BUCKET = "staging"
OLD = {"old-0.parquet": "old", "old-1.parquet": "old", "old-2.parquet": "old"}
NEW = {"new-0.parquet": "new", "new-1.parquet": "new"}


@pytest.fixture(scope="module")
def s3() -> Iterator[None]:
    with s3_server(BUCKET) as env, environ(env):
        yield


@pytest.fixture()
def output(s3, request) -> str:
    """An existing output holding OLD, at a path of the test's own."""
    uri = f"s3://{BUCKET}/{request.node.name.replace('[', '-').rstrip(']')}/gen"
    fs, path = pafs.FileSystem.from_uri(uri)
    write(fs, path, OLD)
    return uri


def write(fs: pafs.FileSystem, path: str, files: dict[str, str]) -> None:
    for name, value in files.items():
        pq.write_table(pa.table({"v": [value]}), f"{path}/{name}", filesystem=fs)


def contents(fs: pafs.FileSystem, path: str) -> dict[str, str]:
    """File name → its one value, for every file under `path`."""
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return {os.path.basename(i.path): pq.read_table(i.path, filesystem=fs)["v"][0].as_py()
            for i in infos if i.type == pafs.FileType.File}


def siblings(fs: pafs.FileSystem, path: str) -> dict[str, dict[str, str]]:
    """Every prefix beside `path` (itself, the staging one, the set-aside one) → contents."""
    parent = os.path.dirname(path)
    return {os.path.basename(i.path): contents(fs, i.path)
            for i in fs.get_file_info(pafs.FileSelector(parent))
            if i.type == pafs.FileType.Directory}


def assert_safe(fs: pafs.FileSystem, path: str) -> None:
    """What must hold at every moment: a complete old or new copy somewhere,
    and `<output>` never a mix."""
    beside = siblings(fs, path)
    assert OLD in beside.values() or NEW in beside.values(), beside
    here = set(beside.get("gen", {}).values())
    assert here != {"old", "new"}, beside


def replace(uri: str, fail_in_job: bool = False) -> None:
    with staging.staged_output(uri, overwrite=True) as (fs, tmp):
        write(fs, tmp, NEW)
        if fail_in_job:
            raise RuntimeError("the job failed")


def failing(original, when, output_path: str):
    """`original`, failing (after checking the invariant) on the call that `when` picks."""
    def step(fs, *paths):
        if when(*paths):
            assert_safe(fs, output_path)
            raise OSError("injected failure")
        return original(fs, *paths)
    return step


def test_replacing_succeeds_and_leaves_only_the_new_output(output: str) -> None:
    replace(output)
    fs, path = pafs.FileSystem.from_uri(output)
    assert siblings(fs, path) == {"gen": NEW}


def test_a_failed_job_leaves_the_old_output(output: str) -> None:
    with pytest.raises(RuntimeError):
        replace(output, fail_in_job=True)
    fs, path = pafs.FileSystem.from_uri(output)
    assert siblings(fs, path) == {"gen": OLD}


def test_failure_while_copying_the_old_output_aside(output: str, monkeypatch) -> None:
    fs, path = pafs.FileSystem.from_uri(output)
    monkeypatch.setattr(staging, "copy_file", failing(
        staging.copy_file, lambda src, dst: ".gen.old-" in dst and dst.endswith("old-1.parquet"),
        path))
    with pytest.raises(CharlmError, match="it is unchanged"):
        replace(output)
    assert siblings(fs, path) == {"gen": OLD}


def test_failure_while_deleting_the_old_output(output: str, monkeypatch) -> None:
    fs, path = pafs.FileSystem.from_uri(output)
    original = staging.delete

    def delete(fs_, p):
        if p == path:  # one file gone, then the failure
            fs_.delete_file(f"{p}/old-0.parquet")
            assert_safe(fs_, path)
            raise OSError("injected failure")
        original(fs_, p)

    monkeypatch.setattr(staging, "delete", delete)
    with pytest.raises(CharlmError) as failed:
        replace(output)
    aside = aside_of(fs, path)
    assert f"s3://{aside}" in str(failed.value)
    assert contents(fs, aside) == OLD
    assert set(contents(fs, path).values()) <= {"old"}


def test_failure_while_copying_the_new_output_in(output: str, monkeypatch) -> None:
    fs, path = pafs.FileSystem.from_uri(output)
    monkeypatch.setattr(staging, "copy_file", failing(
        staging.copy_file, lambda src, dst: dst == f"{path}/new-1.parquet", path))
    with pytest.raises(CharlmError) as failed:
        replace(output)
    aside = aside_of(fs, path)
    assert f"the old output is at s3://{aside}" in str(failed.value)
    assert contents(fs, aside) == OLD
    assert not staging.exists(fs, path), "no half-copied output left to be read"


def test_failure_before_the_old_copy_is_deleted(output: str, monkeypatch) -> None:
    fs, path = pafs.FileSystem.from_uri(output)
    monkeypatch.setattr(staging, "delete", failing(
        staging.delete, lambda p: ".gen.old-" in p, path))
    with pytest.raises(CharlmError) as failed:
        replace(output)
    aside = aside_of(fs, path)
    assert f"s3://{aside}" in str(failed.value) and "is written" in str(failed.value)
    assert contents(fs, path) == NEW and contents(fs, aside) == OLD


def aside_of(fs: pafs.FileSystem, path: str) -> str:
    found = [f"{os.path.dirname(path)}/{name}" for name in siblings(fs, path)
             if name.startswith(".gen.old-")]
    assert len(found) == 1, siblings(fs, path)
    return found[0]


@pytest.mark.parametrize("fail", [False, True])
def test_a_local_output_is_renamed_into_place(tmp_path, fail) -> None:
    out = tmp_path / "gen"
    out.mkdir()
    (out / "old.parquet").write_text("old")
    with pytest.raises(RuntimeError) if fail else contextlib.nullcontext():
        with staging.staged_output(str(out), overwrite=True) as (fs, tmp):
            with fs.open_output_stream(f"{tmp}/new.parquet") as f:
                f.write(b"new")
            if fail:
                raise RuntimeError("a failed job")
    assert sorted(os.listdir(tmp_path)) == ["gen"]  # the temporary directory is gone
    assert os.listdir(out) == ["old.parquet" if fail else "new.parquet"]
