"""What a new user sees first: the offline demo corpus reads as text, and a
training run in a terminal shows a progress bar with an ETA, and stops at a
checkpoint on Ctrl-C, saying how to resume (redirected output keeps plain
lines: tests/test_training_features.py)."""

import fcntl
import os
import pty
import re
import signal
import struct
import sys
import termios
import threading
import time

import pytest

from charlm.data.corpus import load_corpus
from charlm.model import checkpoint

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_python_docs_is_running_text_not_runs_of_spaces():
    c = load_corpus("python-docs")
    assert "  " not in c.text, "indentation and code layout became runs of spaces"
    assert "===" not in c.text and ">>> " not in c.text
    assert len(c.text) > 300_000 and c.sha256 == load_corpus("python-docs").sha256
    lines = load_corpus("python-docs", keep_newlines=True).text.split("\n")
    assert all(line and line == line.strip() for line in lines)


def test_a_terminal_shows_a_progress_bar_and_ctrl_c_stops_at_a_checkpoint(
        tmp_path, ray_local, monkeypatch, capsys):
    """The job in this process, on the session's Ray, its stdout a terminal:
    a progress bar with an ETA. Then Ctrl-C (SIGINT to this process, as a
    terminal sends it) once a checkpoint is kept: Ray Train aborts the run,
    and the job says so and how to resume, "interrupted", exit 130, its
    checkpoints kept and Ray Train's SIGINT handler not left behind."""
    from jobs import train

    text = load_corpus("python-docs").text[:40_000]
    (tmp_path / "docs.txt").write_text(text, encoding="utf-8")
    run = tmp_path / "runs" / "tty"
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    chunks: list[bytes] = []

    def read() -> None:  # drain the terminal as the job writes, or its writes block
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's last writer closed it
                return
            if not data:
                return
            chunks.append(data)

    def interrupt() -> None:
        deadline = time.monotonic() + 120
        while not list(run.glob("checkpoint_epoch_*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    terminal = os.fdopen(follower, "w", encoding="utf-8", buffering=1)
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "160")
    handler = signal.getsignal(signal.SIGINT)
    threading.Thread(target=interrupt, daemon=True).start()
    try:
        with pytest.raises(SystemExit) as exit_:
            train.main(["--corpus", str(tmp_path / "docs.txt"), "--objective", "all",
                        "--maxlen", "32", "--step", "32", "--batch-size", "16", "--units", "16",
                        "--epochs", "500", "--max-steps", "60",
                        "--storage-path", str(tmp_path / "runs"), "--name", "tty"])
    finally:
        terminal.close()
        reader.join(timeout=30)
        os.close(leader)
    out = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
    err = capsys.readouterr().err
    assert re.search(r"epoch \d+/500 .*\d+/60 steps .*ETA", out), out[-3000:]
    assert "epoch 1/500  loss" in out, out[-3000:]
    assert exit_.value.code == 130 and err.strip().splitlines()[-1] == "interrupted", err
    assert out.strip().splitlines()[-1] == (f"run {run} stopped at its latest checkpoint; rerun "
                                            "the same command to resume it"), out[-3000:]
    assert checkpoint.in_run(str(run)) and signal.getsignal(signal.SIGINT) is handler
