"""charlm.corpus without network: local files, a local HTTP server, a closed port."""

from __future__ import annotations

import functools
import http.server
import json
import socket
import threading

import numpy as np
import pytest

from charlm.data import corpus
from charlm.data.corpus import decode, encode, load_corpus, normalise
from charlm.errors import CharlmError


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nietzsche.txt"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No test may reach the real cache or the internet."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CHARLM_CACHE", str(cache))
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(corpus, "NIETZSCHE_URL", _closed_port_url())
    return cache


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep stderr clean: one test counts its lines
        pass

    def do_GET(self):
        if self.path == "/truncated.txt":  # promises more bytes than it sends
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"only a little")
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_encode_decode_round_trip_small_vocab_is_uint8():
    vocab = "".join(sorted(set("hello world")))
    ids = encode("hello world", vocab)
    assert ids.dtype == np.uint8
    assert decode(ids, vocab) == "hello world"
    assert decode(list(ids), vocab) == "hello world"
    assert encode("", vocab).size == 0


def test_large_vocab_is_uint16():
    vocab = "".join(chr(0x100 + i) for i in range(300))
    text = vocab[::-1] + vocab
    ids = encode(text, vocab)
    assert ids.dtype == np.uint16
    assert int(ids[0]) == 299
    assert decode(ids, vocab) == text


def test_encode_names_unknown_characters():
    with pytest.raises(CharlmError, match="'x'.*'z'"):
        encode("xyz", "y")


@pytest.mark.parametrize("keep_case, keep_newlines, expected", [
    (False, False, "ab cd ef"),
    (True, False, "Ab CD ef"),
    (False, True, "ab\ncd\nef"),
    (True, True, "Ab\nCD\nef"),
])
def test_normalise(keep_case, keep_newlines, expected):
    assert normalise("Ab\r\nCD\nef", keep_case, keep_newlines) == expected


def test_file_corpus_and_info(tmp_path):
    path = _write(tmp_path / "t.txt", "Hello\nWorld")
    c = load_corpus(path, keep_newlines=True)
    assert (c.name, c.source, c.text, c.vocab) == (path, path, "hello\nworld", "\ndehlorw")
    assert decode(c.ids, c.vocab) == c.text
    info = json.loads(json.dumps(c.info()))
    assert info == {"name": path, "source": path, "sha256": c.sha256, "chars": 11,
                    "vocab_size": 8, "keep_case": False, "keep_newlines": True}
    assert c == load_corpus(path, keep_newlines=True)  # equality and repr skip the arrays
    assert "hello" not in repr(c)


def test_bom_dropped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfabc")
    assert load_corpus(str(path)).text == "abc"


def test_directory_of_txt_files_in_name_order(tmp_path):
    d = tmp_path / "texts"
    d.mkdir()
    _write(d / "b.txt", "second")
    _write(d / "a.txt", "\ufefffirst")
    _write(d / "notes.md", "ignored")
    assert load_corpus(str(d)).text == "first second"
    assert load_corpus(f"file://{d}").text == "first second"  # the URI (s3, gs) path


def test_python_docs_is_running_text_not_runs_of_spaces():
    """The offline demo corpus, a new user's first: prose, not code layout."""
    c = load_corpus("python-docs")
    assert (c.name, c.source) == ("python-docs", "pydoc_data.topics")
    assert len(c.text) > 300_000 and c.text == c.text.lower() and "\n" not in c.text
    assert "  " not in c.text, "indentation and code layout became runs of spaces"
    assert "===" not in c.text and ">>> " not in c.text
    assert c.sha256 == load_corpus("python-docs").sha256
    lines = load_corpus("python-docs", keep_newlines=True).text.split("\n")
    assert all(line and line == line.strip() for line in lines)


def test_http_url(server):
    root, base = server
    _write(root / "small.txt", "Served Text")
    c = load_corpus(f"{base}/small.txt")
    assert (c.name, c.source, c.text) == (f"{base}/small.txt", f"{base}/small.txt", "served text")


def test_http_url_failure_names_it(server):
    _, base = server
    with pytest.raises(CharlmError, match=f"{base}/missing.txt .*404"):
        load_corpus(f"{base}/missing.txt")


def test_nietzsche_from_cache_without_network(offline):
    offline.mkdir()
    _write(offline / "nietzsche.txt", "PREFACE\n\nSupposing that Truth is a woman")
    c = load_corpus("nietzsche")
    assert (c.name, c.source) == ("nietzsche", str(offline / "nietzsche.txt"))
    assert c.text == "preface  supposing that truth is a woman"


def test_nietzsche_downloaded_once_into_cache(offline, server, monkeypatch, capsys):
    root, base = server
    _write(root / "nietzsche.txt", "Supposing that Truth is a woman")
    monkeypatch.setattr(corpus, "NIETZSCHE_URL", f"{base}/nietzsche.txt")
    assert load_corpus(None).name == "nietzsche"
    assert [p.name for p in offline.iterdir()] == ["nietzsche.txt"]
    monkeypatch.setattr(corpus, "NIETZSCHE_URL", _closed_port_url())
    c = load_corpus(None, cache_dir=str(offline))
    assert (c.source, c.text) == (str(offline / "nietzsche.txt"), "supposing that truth is a woman")
    assert capsys.readouterr().err == ""


def test_default_falls_back_to_python_docs_with_one_warning(offline, capsys):
    c = load_corpus(None)
    assert c.name == "python-docs"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: nietzsche corpus unavailable")
    assert not offline.exists() or not list(offline.iterdir())


def test_explicit_nietzsche_unavailable(offline):
    with pytest.raises(CharlmError, match="--corpus python-docs"):
        load_corpus("nietzsche")
    assert not offline.exists() or not list(offline.iterdir())


def test_truncated_download_leaves_no_file(offline, server, monkeypatch):
    _, base = server
    monkeypatch.setattr(corpus, "NIETZSCHE_URL", f"{base}/truncated.txt")
    with pytest.raises(CharlmError, match="nietzsche corpus unavailable"):
        load_corpus("nietzsche")
    assert not offline.exists() or not list(offline.iterdir())


def test_missing_path(tmp_path):
    with pytest.raises(CharlmError, match="nope.txt does not exist"):
        load_corpus(str(tmp_path / "nope.txt"))


def test_empty_corpus(tmp_path):
    with pytest.raises(CharlmError, match="is empty"):
        load_corpus(_write(tmp_path / "empty.txt", "\ufeff"))


def test_too_short(tmp_path):
    with pytest.raises(CharlmError, match="has 5 characters but 41 are needed"):
        load_corpus(_write(tmp_path / "short.txt", "abcde"), min_chars=41)


def test_not_utf8_names_file_and_offset(tmp_path):
    d = tmp_path / "latin"
    d.mkdir()
    (d / "x.txt").write_bytes(b"a" * 1234 + b"\xff rest")
    message = r"x\.txt is not UTF-8 \(invalid byte 0xff at byte 1234\)"
    with pytest.raises(CharlmError, match=message):
        load_corpus(str(d))


def test_directory_without_txt(tmp_path):
    _write(tmp_path / "a.md", "text")
    with pytest.raises(CharlmError, match="no .txt files"):
        load_corpus(str(tmp_path))
