"""Each bad input: one `error:` line naming the problem and the fix, exit 2,
and nothing written under the storage path."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "ok.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("too short")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 " * 100)
    (tmp_path / "a_file").write_text("not a directory")
    return tmp_path


CASES = {
    "missing corpus": (["--corpus", "{d}/nope.txt"], "nope.txt"),
    "empty corpus": (["--corpus", "{d}/empty.txt"], "empty"),
    "corpus shorter than maxlen + 1": (["--corpus", "{d}/short.txt"], "characters"),
    "not UTF-8": (["--corpus", "{d}/latin1.txt"], "byte 3"),
    "no workers": (["--corpus", "{d}/ok.txt", "--num-workers", "0"], "--num-workers"),
    "batch below workers": (["--corpus", "{d}/ok.txt", "--num-workers", "4", "--batch-size", "2"],
                            "--batch-size"),
    "negative micro-batch": (["--corpus", "{d}/ok.txt", "--micro-batch", "-1"], "--micro-batch"),
    "unknown preset": (["--corpus", "{d}/ok.txt", "--preset", "turbo"], "--preset"),
    "negative patience": (["--corpus", "{d}/ok.txt", "--patience", "-1"], "--patience"),
    "missing --init-from": (["--corpus", "{d}/ok.txt", "--init-from", "{d}/no-run"], "--init-from"),
    "unwritable storage": (["--corpus", "{d}/ok.txt", "--storage-path", "{d}/a_file/runs"],
                           "--storage-path"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_in_one_line(case, files):
    args, needle = CASES[case]
    args = [a.format(d=files) for a in args]
    if "--storage-path" not in args:
        args += ["--storage-path", str(files / "runs")]
    proc = subprocess.run([sys.executable, "-m", "jobs.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert needle in lines[0]
    assert not (files / "runs").exists()
