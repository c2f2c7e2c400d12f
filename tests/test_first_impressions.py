"""What a new user sees first: the offline demo corpus reads as text, and a
training run in a terminal shows a progress bar with an ETA (redirected
output keeps plain lines: tests/test_training_features.py)."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

from charlm.data.corpus import load_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_python_docs_is_running_text_not_runs_of_spaces():
    c = load_corpus("python-docs")
    assert "  " not in c.text, "indentation and code layout became runs of spaces"
    assert "===" not in c.text and ">>> " not in c.text
    assert len(c.text) > 300_000 and c.sha256 == load_corpus("python-docs").sha256
    lines = load_corpus("python-docs", keep_newlines=True).text.split("\n")
    assert all(line and line == line.strip() for line in lines)


def test_a_terminal_shows_a_progress_bar_with_an_eta(tmp_path):
    text = load_corpus("python-docs").text[:40_000]
    (tmp_path / "docs.txt").write_text(text, encoding="utf-8")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.train", "--corpus", str(tmp_path / "docs.txt"),
         "--objective", "all", "--maxlen", "32", "--step", "32", "--batch-size", "16",
         "--units", "16", "--epochs", "2", "--max-steps", "60",
         "--storage-path", str(tmp_path / "runs"), "--name", "tty"],
        cwd=ROOT, stdin=follower, stdout=follower, stderr=follower,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "160"}, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=600) == 0
    out = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
    assert re.search(r"epoch [12]/2 .*\d+/60 steps .*ETA", out), out[-3000:]
    assert "epoch 2/2  loss" in out and "best checkpoint:" in out, out[-3000:]
