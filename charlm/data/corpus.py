"""Training text: where it comes from, how it is normalised, and its vocabulary.

The default corpus is the Keras example's nietzsche.txt, lower-cased with
newlines as spaces, as the seed reads it; python-docs (built from CPython's
own pydoc topics) is the offline stand-in when nietzsche cannot be fetched.
Text is always UTF-8; with the byte vocabulary, ids are its UTF-8 bytes and
decode back as UTF-8.
"""

from __future__ import annotations

import codecs
import hashlib
import http.client
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs

from charlm import storage
from charlm.errors import CharlmError

NIETZSCHE_URL = "https://s3.amazonaws.com/text-datasets/nietzsche.txt"
TIMEOUT = 10.0  # seconds: an offline machine should fall back quickly, not hang a job
_FETCH_ERRORS = (OSError, http.client.HTTPException, ValueError)  # urllib's failure modes
_PYARROW_ERRORS = (OSError, ValueError)  # pyarrow's IO and invalid-path errors


@dataclass(frozen=True)
class Corpus:
    name: str
    source: str
    text: str = field(repr=False)  # megabytes: keep it out of reprs and tracebacks
    vocab: str
    ids: np.ndarray = field(repr=False, compare=False)  # derived from text and vocab
    sha256: str
    keep_case: bool = False
    keep_newlines: bool = False

    def info(self) -> dict:
        """What a run records so its corpus can be identified and reproduced."""
        return {"name": self.name, "source": self.source, "sha256": self.sha256,
                "chars": len(self.text), "vocab_size": len(self.vocab),
                "keep_case": self.keep_case, "keep_newlines": self.keep_newlines}


def normalise(text: str, keep_case: bool = False, keep_newlines: bool = False) -> str:
    """The seed's normalisation by default (lower case, newlines as spaces),
    which keeps the vocabulary small; the flags keep more of the text."""
    text = text.replace("\r\n", "\n")
    if not keep_case:
        text = text.lower()
    if not keep_newlines:
        text = text.replace("\n", " ")
    return text


# The byte-level vocabulary (--vocab bytes): ids are the UTF-8 bytes of the
# normalised text, written as the 256 code points U+0000..U+00FF so that a
# checkpoint's vocabulary stays a string. No pass over the corpus is needed to
# find it, and any script fits in 256 ids.
BYTES_VOCAB = "".join(map(chr, range(256)))


def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536
                    else np.uint32)


def encode(text: str, vocab: str) -> np.ndarray:
    """Vocabulary indices in the smallest unsigned dtype that holds them, so a
    corpus costs one or two bytes per character in memory and in Ray's store;
    for BYTES_VOCAB, the text's UTF-8 bytes."""
    if vocab == BYTES_VOCAB:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()
    codes, vcodes = _codepoints(text), _codepoints(vocab)
    table = np.full(int(max(codes.max(initial=0), vcodes.max(initial=0))) + 1, -1, np.int32)
    table[vcodes] = np.arange(len(vocab))
    ids = table[codes]
    if (ids < 0).any():
        unknown = sorted(set(text) - set(vocab))
        shown = ", ".join(repr(c) for c in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise CharlmError(f"{len(unknown)} character(s) not in the vocabulary ({shown}); "
                          "use only characters from the corpus the model was trained on")
    return ids.astype(id_dtype(len(vocab)))


def decode(ids, vocab: str) -> str:
    """Ids -> text. Byte ids (BYTES_VOCAB) are UTF-8: a character that the ids
    cut off at the end (partial_tail) is dropped, so a sample that ends inside
    a multi-byte character ends at the last whole one, and any other invalid
    sequence reads as U+FFFD."""
    if vocab == BYTES_VOCAB:
        data = bytes(np.asarray(ids, dtype=np.uint8).reshape(-1))
        return data[:len(data) - partial_tail(data)].decode("utf-8", "replace")
    return "".join(vocab[i] for i in np.asarray(ids).reshape(-1).tolist())


def decode_stream(ids: Iterable[int], vocab: str) -> Iterator[str]:
    """decode, one id at a time: each character as soon as its last id has
    come. The pieces join to decode(ids, vocab)."""
    if vocab != BYTES_VOCAB:
        yield from (vocab[i] for i in ids)
        return
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    for i in ids:
        text = decoder.decode(bytes((i,)))
        if text:
            yield text
    held = decoder.getstate()[0]  # bytes that may start a character: a partial tail or not
    if partial_tail(held) < len(held):
        yield decoder.decode(b"", final=True)


def partial_tail(data: bytes) -> int:
    """How many bytes (0 to 3) at the end of `data` start a UTF-8 character
    that they do not finish: a lead byte, then fewer continuation bytes than
    it needs, the first in the range that lead allows (no overlong form, no
    surrogate, nothing above U+10FFFF)."""
    for k in range(1, min(3, len(data)) + 1):
        lead = data[-k]
        if 0x80 <= lead <= 0xBF:  # a continuation byte: the lead is further back
            continue
        needs = 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else \
            4 if 0xF0 <= lead <= 0xF4 else 0
        if needs <= k:
            return 0
        if k > 1:
            low = {0xE0: 0xA0, 0xF0: 0x90}.get(lead, 0x80)
            high = {0xED: 0x9F, 0xF4: 0x8F}.get(lead, 0xBF)
            if not low <= data[-k + 1] <= high:
                return 0
        return k
    return 0


def cache_dir() -> str:
    """Where downloads are kept: $CHARLM_CACHE, else the XDG cache directory."""
    if os.environ.get("CHARLM_CACHE"):
        return os.environ["CHARLM_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "charlm")


def load_corpus(spec: str | None, *, keep_case: bool = False, keep_newlines: bool = False,
                min_chars: int = 2, cache_dir: str | None = None) -> Corpus:
    """Read, normalise and encode a corpus once, so every worker trains on the
    same ids and each run can record exactly which text it saw.

    spec: None (nietzsche, else python-docs with a warning), "nietzsche",
    "python-docs", a file, a directory of .txt files, an http(s) URL, or an
    s3:// or gs:// file or prefix of .txt files.
    """
    name, source, raw = _read(spec, cache_dir)
    text = normalise(raw, keep_case, keep_newlines)
    if not text:
        raise CharlmError(f"corpus {name} is empty (0 characters, {min_chars} needed); "
                          "pass a corpus that holds text")
    if len(text) < min_chars:
        raise CharlmError(f"corpus {name} has {len(text)} characters but {min_chars} are "
                          "needed (--maxlen + 1); use a longer corpus or a smaller --maxlen")
    vocab = "".join(sorted(set(text)))
    return Corpus(name=name, source=source, text=text, vocab=vocab, ids=encode(text, vocab),
                  sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
                  keep_case=keep_case, keep_newlines=keep_newlines)


def _read(spec: str | None, cache: str | None) -> tuple[str, str, str]:
    """(name, source, raw text) for any accepted spec."""
    if spec is None:
        try:
            return ("nietzsche", *_nietzsche(cache))
        except _Unavailable as e:
            print(f"warning: nietzsche corpus unavailable ({e}); using python-docs instead",
                  file=sys.stderr)
            return ("python-docs", *_python_docs())
    if spec == "nietzsche":
        try:
            return ("nietzsche", *_nietzsche(cache))
        except _Unavailable as e:
            raise CharlmError(f"nietzsche corpus unavailable ({e}); pass --corpus "
                              "/path/to/nietzsche.txt or --corpus python-docs") from e
    if spec == "python-docs":
        return ("python-docs", *_python_docs())
    if spec.startswith(("http://", "https://")):
        try:
            return spec, spec, _decode(_fetch(spec), spec)
        except _FETCH_ERRORS as e:
            raise CharlmError(f"cannot download corpus {spec} ({_reason(e)}); "
                              "check the URL or download it and pass the file") from e
    return (spec, storage.normalize(spec), _read_path(spec))


class _Unavailable(Exception):
    """nietzsche is neither cached nor downloadable; the message is the reason."""


def _nietzsche(cache: str | None) -> tuple[str, str]:
    """The cached copy, else a download cached for next time. The file appears
    whole or not at all (temp file + os.replace), so concurrent workers or an
    interrupted download never leave a truncated corpus behind."""
    path = os.path.join(cache or cache_dir(), "nietzsche.txt")
    try:
        with open(path, "rb") as f:
            return path, _decode(f.read(), path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise _Unavailable(f"cannot read {path}: {_reason(e)}") from e
    try:
        data = _fetch(NIETZSCHE_URL)
    except _FETCH_ERRORS as e:
        raise _Unavailable(f"not cached at {path}; download failed: {_reason(e)}") from e
    text = _decode(data, NIETZSCHE_URL)  # check before caching, so a bad file is not kept
    try:
        _write_atomically(path, data)
    except OSError:
        return NIETZSCHE_URL, text  # an unwritable cache costs a download next time, no more
    return path, text


def _write_atomically(path: str, data: bytes) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".nietzsche-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _python_docs() -> tuple[str, str]:
    """English documentation that ships with Python itself, as readable
    running text. The topics' indentation (long runs of spaces once newlines
    become spaces) is dropped, and so are the lines that are layout rather
    than prose: heading underlines, table frames and cells, and interactive
    sessions (`>>>`, `...`)."""
    from pydoc_data.topics import topics

    lines = []
    for line in "\n".join(topics[k] for k in sorted(topics)).splitlines():
        line = " ".join(line.split())
        if line and not _RULE.fullmatch(line) and not line.startswith(_LAYOUT):
            lines.append(line)
    return "pydoc_data.topics", "\n".join(lines)


_RULE = re.compile(r"([-=~^*])\1{2,}")  # a reST heading underline such as =====
_LAYOUT = (">>>", "...", "|", "+")  # sessions, tables (+---+, | cell |)


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return response.read()


def _read_path(spec: str) -> str:
    """A file, or the .txt files of a directory or bucket prefix joined in name order."""
    fs, files = list_files(spec)
    try:
        if len(files) == 1 and files[0].path == storage.resolve(spec)[1]:
            return _decode(_read_file(fs, files[0].path), spec)
        return "\n".join(_decode(_read_file(fs, i.path), storage.join(spec, i.base_name))
                         for i in files)
    except _PYARROW_ERRORS as e:
        raise CharlmError(f"cannot read corpus {spec} ({_reason(e)}); "
                          "check the path and its permissions") from e


def list_files(spec: str) -> tuple[pafs.FileSystem, list[pafs.FileInfo]]:
    """The corpus's files (names and sizes, nothing read): a file, or the .txt
    files of a directory or bucket prefix in name order."""
    fs, path = storage.resolve(spec)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise CharlmError(f"corpus {spec} does not exist; pass an existing file, directory "
                              "or URL, or 'nietzsche' or 'python-docs'")
        if info.type == pafs.FileType.File:
            return fs, [info]
        files = sorted((i for i in fs.get_file_info(pafs.FileSelector(path))
                        if i.type == pafs.FileType.File and i.base_name.endswith(".txt")),
                       key=lambda i: i.base_name)
    except _PYARROW_ERRORS as e:
        raise CharlmError(f"cannot read corpus {spec} ({_reason(e)}); "
                          "check the path and its permissions") from e
    if not files:
        raise CharlmError(f"corpus directory {spec} holds no .txt files; "
                          "add UTF-8 .txt files or pass a file")
    return fs, files


def _read_file(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _decode(data: bytes, where: str, offset: int = 0) -> str:
    """UTF-8 without a leading byte-order mark, which would otherwise enter the
    vocabulary; `offset`: where `data` starts in its file (a stretch of it)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CharlmError(f"corpus {where} is not UTF-8 (invalid byte 0x{data[e.start]:02x} "
                          f"at byte {offset + e.start}); convert it to UTF-8") from e
    return text.removeprefix("\ufeff") if offset == 0 else text


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _reason(e: BaseException) -> str:
    """A one-line cause: urllib nests the useful part in .reason."""
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason if isinstance(e.reason, BaseException) else Exception(e.reason)
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
