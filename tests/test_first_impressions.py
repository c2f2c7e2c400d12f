"""What a new user sees first: the offline demo corpus reads as text, and a
training run in a terminal shows a progress bar with an ETA (redirected
output keeps plain lines: tests/test_training_features.py)."""

import fcntl
import os
import pty
import re
import struct
import sys
import termios
import threading

from charlm.data.corpus import load_corpus

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_python_docs_is_running_text_not_runs_of_spaces():
    c = load_corpus("python-docs")
    assert "  " not in c.text, "indentation and code layout became runs of spaces"
    assert "===" not in c.text and ">>> " not in c.text
    assert len(c.text) > 300_000 and c.sha256 == load_corpus("python-docs").sha256
    lines = load_corpus("python-docs", keep_newlines=True).text.split("\n")
    assert all(line and line == line.strip() for line in lines)


def test_a_terminal_shows_a_progress_bar_with_an_eta(tmp_path, ray_local, monkeypatch):
    """The job in this process, on the session's Ray, its stdout a terminal."""
    from jobs import train

    text = load_corpus("python-docs").text[:40_000]
    (tmp_path / "docs.txt").write_text(text, encoding="utf-8")
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

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    terminal = os.fdopen(follower, "w", encoding="utf-8", buffering=1)
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "160")
    try:
        train.main(["--corpus", str(tmp_path / "docs.txt"), "--objective", "all",
                    "--maxlen", "32", "--step", "32", "--batch-size", "16", "--units", "16",
                    "--epochs", "2", "--max-steps", "60", "--storage-path", str(tmp_path / "runs"),
                    "--name", "tty"])
    finally:
        terminal.close()
        reader.join(timeout=30)
        os.close(leader)
    out = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
    assert re.search(r"epoch [12]/2 .*\d+/60 steps .*ETA", out), out[-3000:]
    assert "epoch 2/2  loss" in out and "best checkpoint:" in out, out[-3000:]
