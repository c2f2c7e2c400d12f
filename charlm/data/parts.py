"""A corpus as encoded parts in Ray's object store, read by Ray Data so that no
process holds the whole text.

A directory or bucket prefix of .txt files, or a file larger than one stretch,
is listed (names and sizes only), cut into stretches of about STRETCH_BYTES,
and read twice by Ray Data map tasks, one stretch each: a first pass
normalises and counts (characters per stretch, each character's count, a
sha256), the driver merges the counts into the vocabulary, and a second pass
encodes each stretch into parts. Small corpora (nietzsche, python-docs, a URL,
a file of one stretch) are read in the driver, into the same parts.

Held out: the last --val-frac of each file (for one file: the seed's tail).
Windows never cross a part, and parts never cross a file. A file's parts
start on its window grid and overlap by maxlen, so its windows are exactly the
seed's: `for i in range(0, len(head) - maxlen, step)` over the file's training
head, every VAL_STEP over its tail.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from charlm import internals, runtime, storage
from charlm.config import PLACEMENT_TIMEOUT_S, VAL_MAXLEN, VAL_STEP
from charlm.data.corpus import (
    BYTES_VOCAB,
    _codepoints,
    _decode,
    decode,
    encode,
    id_dtype,
    list_files,
    load_corpus,
    normalise,
)
from charlm.data.windows import holdout_start, window_count
from charlm.errors import CharlmError

STRETCH_BYTES = 8 << 20  # raw bytes per map task, which bound its memory
_SEARCH = 1 << 16  # bytes searched past a nominal cut for a space or newline
HELDOUT_CAP = 50_000  # held-out windows scored per epoch, at most (all of nietzsche's)
SEED_CANDIDATES = 1_000  # held-out seeds recorded for generation's --num-seeds
# Stretches per map-task process before it exits: a process keeps the pages
# of Ray's store it wrote (the parts) and its heap's high-water mark in its
# RSS for as long as it lives, so none lives to write the whole corpus.
MAX_CALLS = 8  # (0: no limit; tests, whose stretches are tiny)
TRAIN, HELDOUT = 0, 1


@dataclass
class Parts:
    """The encoded corpus: training and held-out parts (ObjectRefs to 1-D id
    arrays, uint8 for up to 256 symbols), what a run records, and the inputs
    of held-out scoring, all without the text."""

    name: str
    source: str
    vocab: str
    sha256: str
    chars: int
    train: list = field(repr=False)
    train_lengths: list[int] = field(repr=False)
    heldout: list = field(repr=False)
    heldout_lengths: list[int] = field(repr=False)
    files: int = 1
    keep_case: bool = False
    keep_newlines: bool = False
    seed_ids: list[int] = field(default_factory=list, repr=False)  # first maxlen training ids
    heldout_seeds: list[str] = field(default_factory=list, repr=False)
    heldout_windows: object = field(default=None, repr=False)  # ObjectRef: the scored sample

    def info(self) -> dict:
        """What a run records so its corpus can be identified and reproduced,
        and generation can draw held-out seeds without reading it again."""
        return {"name": self.name, "source": self.source, "sha256": self.sha256,
                "chars": self.chars, "files": self.files, "vocab_size": len(self.vocab),
                "keep_case": self.keep_case, "keep_newlines": self.keep_newlines,
                "seed_text": _text(self.seed_ids, self.vocab),
                "heldout_seeds": self.heldout_seeds}


def streamed(spec: str | None) -> bool:
    """Read by Ray Data (True) or in this process: named corpora, URLs and a
    file of one stretch are small."""
    if spec is None or spec in ("nietzsche", "python-docs") or \
            spec.startswith(("http://", "https://")):
        return False
    _, files = list_files(spec)
    return len(files) > 1 or files[0].type != pafs.FileType.File or \
        files[0].size > STRETCH_BYTES or files[0].path != storage.resolve(spec)[1]


def prepare(spec: str | None, *, maxlen: int, step: int, val_frac: float,
            byte_level: bool = False, keep_case: bool = False,
            keep_newlines: bool = False) -> Parts | str:
    """Before Ray starts, so bad input fails fast: a small corpus read and
    split here (its parts still arrays), a large one's files listed (its spec
    returned, to be read by Ray Data)."""
    if streamed(spec):
        return spec
    corpus = load_corpus(spec, keep_case=keep_case, keep_newlines=keep_newlines,
                         min_chars=maxlen + 1)
    vocab = BYTES_VOCAB if byte_level else _checked(corpus.vocab)
    ids = encode(corpus.text, vocab) if byte_level else corpus.ids
    found = split_stretch(ids, 0, len(ids), len(ids), maxlen=maxlen, step=step,
                          val_frac=val_frac)
    train = [p for kind, p in found if kind == TRAIN]
    held = [p for kind, p in found if kind == HELDOUT]
    return _checked_parts(Parts(
        corpus.name, corpus.source, vocab, corpus.sha256, len(ids), train,
        [len(p) for p in train], held, [len(p) for p in held], 1, keep_case, keep_newlines),
        maxlen, val_frac)


def load_parts(prepared: Parts | str, *, maxlen: int, step: int, val_frac: float,
               byte_level: bool = False, keep_case: bool = False, keep_newlines: bool = False,
               placement_timeout: float = PLACEMENT_TIMEOUT_S) -> Parts:
    """The corpus's parts in Ray's object store (Ray must be running), from what
    prepare() returned (a small corpus's parts, or a large one's spec, read
    here by Ray Data), with the held-out sample scored each epoch and the
    seeds a run records. Work that waits for a node ends at the placement
    deadline, in runtime.explain_placement_timeout's one line."""
    import ray

    args = dict(maxlen=maxlen, step=step, val_frac=val_frac)
    if isinstance(prepared, Parts):  # a small corpus's arrays: sampled here
        parts = prepared
        windows, seeds, first = _heldout_sample(parts.heldout, parts.heldout_lengths,
                                                HELDOUT_CAP, maxlen, SEED_CANDIDATES,
                                                parts.train[0])
        windows_ref = ray.put(windows)
        parts.train = [ray.put(p) for p in parts.train]
        parts.heldout = [ray.put(p) for p in parts.heldout]
    else:
        parts = _checked_parts(_read_streamed(prepared, byte_level, keep_case, keep_newlines,
                                              placement_timeout, **args), maxlen, val_frac)
        # No CPU asked for: it runs at once wherever Ray puts it (a 0-CPU head too).
        sample = _remote_fn(_heldout_sample_fn).options(num_returns=3, num_cpus=0)
        windows_ref, seeds_ref, first_ref = sample.remote(
            parts.heldout, parts.heldout_lengths, HELDOUT_CAP, maxlen, SEED_CANDIDATES,
            parts.train[0])
        seeds, first = runtime.get_within([seeds_ref, first_ref], placement_timeout,
                                          "the held-out sample's task")
    parts.heldout_windows = windows_ref
    parts.seed_ids = first.tolist()
    parts.heldout_seeds = list(dict.fromkeys(_text(s, parts.vocab) for s in seeds))
    return parts


def _checked_parts(parts: Parts, maxlen: int, val_frac: float) -> Parts:
    if not parts.train or not parts.heldout:
        raise CharlmError(
            f"corpus has {parts.chars} characters: too short for {maxlen}-character training "
            f"windows and {VAL_MAXLEN}-character held-out windows with --val-frac {val_frac}; "
            "use a longer corpus or a smaller --maxlen")
    return parts


# -- one stretch -----------------------------------------------------------------

def _align(pos: int, origin: int, step: int) -> int:
    """The first window start at or after pos on the grid origin + k·step."""
    return origin + -(-max(pos - origin, 0) // step) * step


def split_stretch(ids: np.ndarray, start: int, end: int, n_file: int, *, maxlen: int,
                  step: int, val_frac: float) -> list[tuple[int, np.ndarray]]:
    """(TRAIN or HELDOUT, ids) parts of the file positions [start, end) that one
    stretch owns; `ids` holds the file from `start` on, with enough of the next
    stretch for the windows that start in this one. The part owns the window
    starts in [start, end) on its region's grid, and carries maxlen more ids."""
    cut = holdout_start(n_file, val_frac)
    out = []
    for kind, (r0, r1, m, s) in ((TRAIN, (0, cut, maxlen, step)),
                                 (HELDOUT, (cut, n_file, VAL_MAXLEN, VAL_STEP))):
        lo, hi = _align(start, r0, s), _align(end, r0, s)
        if lo >= min(hi, r1 - m):
            continue  # no window starts here
        stop = min(hi + m, r1)
        if stop - start > len(ids):
            raise AssertionError(f"stretch too short: needs {stop - start}, has {len(ids)}")
        out.append((kind, ids[lo - start:stop - start]))
    return out


def _cut(f, nominal: int, size: int) -> int:
    """The byte after the first space or newline at or past `nominal`.
    Normalising text cut there gives the same characters as normalising it
    whole: no UTF-8 sequence, \\r\\n pair or final-sigma context crosses it.
    (Without whitespace in _SEARCH bytes: the next character start.)"""
    if nominal <= 0 or nominal >= size:
        return min(max(nominal, 0), size)
    data = f.read_at(min(_SEARCH, size - nominal + 1), nominal - 1)
    hits = [i for i in (data.find(b" ", 1), data.find(b"\n", 1)) if i >= 1]
    if hits:
        return nominal + min(hits)
    i = 1
    while i < len(data) and ((data[i] & 0xC0) == 0x80 or data[i - 1] == 0x0D):
        i += 1
    return nominal - 1 + i


def _overlap_chars(maxlen: int, step: int) -> int:
    """Characters of the next stretch a stretch's last windows need."""
    return max(maxlen + step, VAL_MAXLEN + VAL_STEP)


@dataclass(frozen=True)
class _Reader:
    """Reads one stretch of a file as normalised text (and the start of the next)."""

    fs: pafs.FileSystem
    keep_case: bool
    keep_newlines: bool

    def text(self, row: dict, extra_chars: int = 0) -> tuple[str, str]:
        """(the stretch's text, up to extra_chars characters after it)."""
        with self.fs.open_input_file(row["path"]) as f:
            size = row["size"]
            a, b = _cut(f, row["lo"], size), _cut(f, row["hi"], size)
            text = self._normalised(f.read_at(b - a, a), row["name"], a)
            more = ""
            if extra_chars and b < size:
                c = _cut(f, b + 4 * extra_chars + 16, size)
                more = self._normalised(f.read_at(c - b, b), row["name"], b)[:extra_chars]
        return text, more

    def _normalised(self, data: bytes, where: str, offset: int) -> str:
        return normalise(_decode(data, where, offset), self.keep_case, self.keep_newlines)


def stretches(spec: str) -> tuple[pafs.FileSystem, list[dict]]:
    """Every stretch of the corpus, in file then position order (nominal byte
    ranges); `key`, the file's base name, is what the corpus hash records."""
    fs, files = list_files(spec)
    single = len(files) == 1 and files[0].path == storage.resolve(spec)[1]
    rows = []
    for i, info in enumerate(files):
        name = spec if single else storage.join(spec, info.base_name)
        for k in range(max(1, -(-info.size // STRETCH_BYTES))):
            rows.append({"file": i, "name": name, "key": info.base_name, "path": info.path,
                         "index": k, "lo": k * STRETCH_BYTES, "hi": (k + 1) * STRETCH_BYTES,
                         "size": info.size})
    return fs, rows


def iter_texts(spec: str, keep_case: bool = False, keep_newlines: bool = False):
    """(stretch, its normalised text), one stretch at a time, in one process:
    memory is one stretch, whatever the corpus."""
    fs, rows = stretches(spec)
    reader = _Reader(fs, keep_case, keep_newlines)
    for row in rows:
        yield row, reader.text(row)[0]


def recorded_texts(info: dict):
    """The normalised text of the corpus a run recorded (checkpoint meta
    "corpus"), one stretch at a time; CharlmError, once it has all been read,
    if it no longer matches the recorded sha256."""
    name = info.get("name")
    spec = name if name in ("nietzsche", "python-docs") else info.get("source") or name
    if not spec:
        raise CharlmError("the checkpoint records no corpus")
    flags = dict(keep_case=bool(info.get("keep_case")),
                 keep_newlines=bool(info.get("keep_newlines")))
    if spec in ("nietzsche", "python-docs") or spec.startswith(("http://", "https://")):
        corpus = load_corpus(spec, **flags)
        yield corpus.text
        sha = corpus.sha256
    else:
        hashes = []
        for row, text in iter_texts(spec, **flags):
            hashes.append((row["key"], row["index"],
                           hashlib.sha256(text.encode("utf-8")).hexdigest()))
            yield text
        sha = corpus_sha256(hashes)
    if sha != info.get("sha256"):
        raise CharlmError(f"the run's corpus {name} has changed since training (sha256 "
                          f"{sha[:12]}…, recorded {str(info.get('sha256'))[:12]}…)")


def corpus_sha256(hashes: list[tuple[str, int, str]]) -> str:
    """A hash of per-stretch hashes, so no process needs the whole text. One
    stretch: the sha256 of its normalised UTF-8 text (as a small corpus read
    whole gives it); several: the sha256 of their
    'file name<TAB>stretch<TAB>sha256' lines (file base names: the same
    corpus read from another path or bucket has the same hash)."""
    if len(hashes) == 1:
        return hashes[0][2]
    lines = "".join(f"{name}\t{index}\t{sha}\n" for name, index, sha in hashes)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


# -- the two Ray Data passes ------------------------------------------------------

class _Count:
    """Pass 1: each stretch's length (characters, or bytes at byte level), sha256
    and character counts."""

    def __init__(self, reader: _Reader, byte_level: bool):
        self.reader, self.byte_level = reader, byte_level

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list] = {k: [] for k in ("file", "index", "chars", "sha256", "codes",
                                                "counts")}
        for row in batch.to_pylist():
            text = self.reader.text(row)[0]
            data = text.encode("utf-8")
            codes = counts = np.zeros(0, np.int64)
            if self.byte_level:
                n = len(data)
            else:
                points = _codepoints(text)
                n = len(points)
                hist = np.bincount(points)
                codes = np.flatnonzero(hist)
                counts = hist[codes]
            for k, v in (("file", row["file"]), ("index", row["index"]), ("chars", n),
                         ("sha256", hashlib.sha256(data).hexdigest()),
                         ("codes", codes.astype(np.int64).tobytes()),
                         ("counts", counts.astype(np.int64).tobytes())):
                out[k].append(v)
        return pa.table(out)


class _Encode:
    """Pass 2: each stretch's training and held-out parts."""

    def __init__(self, reader: _Reader, vocab: str, maxlen: int, step: int, val_frac: float):
        self.reader, self.vocab = reader, vocab
        self.args = dict(maxlen=maxlen, step=step, val_frac=val_frac)
        self.extra = _overlap_chars(maxlen, step)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list] = {k: [] for k in ("file", "index", "kind", "ids")}
        for row in batch.to_pylist():
            text, more = self.reader.text(row, self.extra)
            ids = encode(text + more, self.vocab)
            if self.vocab == BYTES_VOCAB:  # `more` is counted in characters: cut it in bytes
                ids = ids[:row["chars"] + self.extra]
            for kind, part in split_stretch(ids, row["start"], row["start"] + row["chars"],
                                            row["file_chars"], **self.args):
                for k, v in (("file", row["file"]), ("index", row["index"]), ("kind", kind),
                             ("ids", part.tobytes())):
                    out[k].append(v)
        return pa.table(out, schema=pa.schema([("file", pa.int64()), ("index", pa.int64()),
                                               ("kind", pa.int64()), ("ids", pa.binary())]))


def _read_streamed(spec: str, byte_level: bool, keep_case: bool, keep_newlines: bool,
                   placement_timeout: float, *, maxlen: int, step: int,
                   val_frac: float) -> Parts:
    import ray
    import ray.data

    fs, rows = stretches(spec)
    reader = _Reader(fs, keep_case, keep_newlines)
    # Ray Data waits for CPUs without end; a read of a big corpus may rightly
    # take hours. So the deadline bounds placement alone: a task that asks for
    # what each map task asks for (1 CPU) must start within it.
    runtime.get_within(_remote_fn(_placed_fn).remote(), placement_timeout,
                       "the corpus's read tasks")

    def dataset(items: list[dict]) -> ray.data.Dataset:
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds.context.execution_options.preserve_order = True
        return ds

    counted = sorted(dataset(rows).map_batches(_Count(reader, byte_level), batch_size=1,
                                               batch_format="pyarrow",
                                               max_calls=MAX_CALLS or None).take_all(),
                     key=lambda r: (r["file"], r["index"]))
    if byte_level:
        vocab = BYTES_VOCAB
    else:
        merged: dict[int, int] = {}
        for r in counted:
            for c, n in zip(np.frombuffer(r["codes"], np.int64).tolist(),
                            np.frombuffer(r["counts"], np.int64).tolist(), strict=True):
                merged[c] = merged.get(c, 0) + n
        vocab = _checked("".join(map(chr, sorted(merged))))
    starts, file_chars = {}, {}
    for r in counted:
        starts[(r["file"], r["index"])] = file_chars.get(r["file"], 0)
        file_chars[r["file"]] = file_chars.get(r["file"], 0) + r["chars"]
    chars = sum(file_chars.values())
    if chars == 0:
        raise CharlmError(f"corpus {spec} is empty (0 characters, {maxlen + 1} needed); "
                          "pass a corpus that holds text")
    for row, r in zip(rows, counted, strict=True):
        row.update(chars=r["chars"], start=starts[(row["file"], row["index"])],
                   file_chars=file_chars[row["file"]])
    encoded = dataset(rows).map_batches(
        _Encode(reader, vocab, maxlen, step, val_frac), batch_size=1, batch_format="pyarrow",
        max_calls=MAX_CALLS or None)
    found: list[tuple[tuple[int, int, int], object, int]] = []
    dtype = id_dtype(len(vocab))
    for block, lo, hi in internals.block_refs(encoded):
        unpack = _remote_fn(_unpack_fn).options(num_returns=hi - lo + 1)
        refs = unpack.remote(block, lo, hi, dtype)
        keys = runtime.get_within(refs[0], placement_timeout, "the corpus's read tasks")
        for key, ref in zip(keys, refs[1:], strict=True):
            found.append((key[:3], ref, key[3]))
    found.sort(key=lambda x: x[0])
    pick = {kind: [(ref, n) for (_, _, k), ref, n in found if k == kind]
            for kind in (TRAIN, HELDOUT)}
    names = {r["file"]: r["key"] for r in rows}
    return Parts(spec, storage.normalize(spec), vocab,
                 corpus_sha256([(names[r["file"]], r["index"], r["sha256"]) for r in counted]),
                 chars, [r for r, _ in pick[TRAIN]], [n for _, n in pick[TRAIN]],
                 [r for r, _ in pick[HELDOUT]], [n for _, n in pick[HELDOUT]],
                 len(file_chars), keep_case, keep_newlines)


def _checked(vocab: str) -> str:
    if vocab == BYTES_VOCAB:
        raise CharlmError("the corpus uses exactly the 256 code points U+0000..U+00FF, which "
                          "charlm reserves for the byte vocabulary; pass --vocab bytes")
    return vocab


def _text(ids, vocab: str) -> str:
    """Ids as text; byte-level ids from their first whole character (a window
    of bytes may start inside one)."""
    ids = np.asarray(ids, dtype=np.int64)
    if vocab == BYTES_VOCAB:
        lead = (ids & 0xC0) != 0x80
        ids = ids[int(np.argmax(lead)):] if lead.any() else ids[:0]
    return decode(ids, vocab)


def _placed_fn() -> bool:
    return True


def _unpack_fn(block: pa.Table, lo: int, hi: int, dtype) -> tuple:
    """A block of pass 2's rows → (their keys, then one id array per row): one
    object per part, owned by the driver."""
    rows = block.slice(lo, hi - lo)
    keys = [(f, i, k, len(b) // np.dtype(dtype).itemsize) for f, i, k, b in zip(
        rows["file"].to_pylist(), rows["index"].to_pylist(), rows["kind"].to_pylist(),
        rows["ids"].to_pylist(), strict=True)]
    return (keys, *(np.frombuffer(b, dtype=dtype) for b in rows["ids"].to_pylist()))


def _heldout_sample(arrays: list[np.ndarray], lengths: list[int], cap: int, maxlen: int,
                    n_seeds: int, first: np.ndarray) -> tuple:
    """(held-out windows to score: all of them up to `cap`, else `cap` evenly
    spaced ones; up to n_seeds evenly spaced held-out seeds of maxlen ids; the
    first maxlen training ids, the recipe's seed)."""
    windows = _spread(arrays, lengths, VAL_MAXLEN, VAL_STEP, cap, VAL_MAXLEN + 1)
    seeds = _spread(arrays, lengths, maxlen - 1, VAL_STEP, n_seeds, maxlen)
    return windows, list(seeds), np.asarray(first[:maxlen])


def _heldout_sample_fn(parts: list, *args) -> tuple:
    """_heldout_sample of a streamed corpus's parts, where they are."""
    import ray

    return _heldout_sample(ray.get(list(parts)), *args)


def _spread(arrays: list[np.ndarray], lengths: list[int], maxlen: int, step: int, cap: int,
            width: int) -> np.ndarray:
    """Windows of `width` ids at the parts' window starts (every `step`, with
    room for maxlen + 1 ids): all of them, or `cap` evenly spaced."""
    counts = np.array([window_count(n, maxlen, step) for n in lengths], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])
    chosen = np.arange(total) if total <= cap else \
        np.unique(np.linspace(0, total - 1, cap).round().astype(np.int64))
    part = np.searchsorted(offsets, chosen, side="right") - 1
    starts = (chosen - offsets[part]) * step
    out = np.empty((len(chosen), width), dtype=arrays[0].dtype if arrays else np.uint8)
    for p in np.unique(part):
        rows = np.flatnonzero(part == p)
        out[rows] = arrays[p][starts[rows, None] + np.arange(width)]
    return out


_REMOTE: dict = {}


def _remote_fn(fn):
    """fn as a Ray remote function, made on first use (importing
    charlm.data.parts does not import Ray)."""
    import ray

    key = (fn.__name__, MAX_CALLS)
    if key not in _REMOTE:
        _REMOTE[key] = ray.remote(max_calls=MAX_CALLS)(fn)
    return _REMOTE[key]
