"""Each bad input to jobs.train: one `error:` line naming the problem and the
fix, exit 2, and nothing written under the storage path; all of them are
caught before Ray starts, so the job runs in-process."""

import pytest

import jobs.train


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
    "negative keep-checkpoints": (["--corpus", "{d}/ok.txt", "--keep-checkpoints", "-1"],
                                  "--keep-checkpoints"),
    "missing --init-from": (["--corpus", "{d}/ok.txt", "--init-from", "{d}/no-run"], "--init-from"),
    "unwritable storage": (["--corpus", "{d}/ok.txt", "--storage-path", "{d}/a_file/runs"],
                           "--storage-path"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_in_one_line(case, files, capsys):
    args, needle = CASES[case]
    args = [a.format(d=files) for a in args]
    if "--storage-path" not in args:
        args += ["--storage-path", str(files / "runs")]
    with pytest.raises(SystemExit) as exit_:
        jobs.train.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0]
    assert not (files / "runs").exists()
