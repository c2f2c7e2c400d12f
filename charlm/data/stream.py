"""Which training windows each worker reads at each step, and the Ray Dataset
that gathers them: exact epochs, a fresh order every epoch, independent of
scheduling, resumable at any epoch.

The corpus arrives as a list of encoded parts (id arrays, or ObjectRefs to
them: one per file or per stretch of a file); a part's windows are the seed's,
at offsets 0, step, 2·step, ... within it, and no window crosses a part. The
windows of all parts are numbered 0 .. total - 1, part by part.

Epoch e reads them in the order of a pseudo-random bijection of
[0, total) keyed by (seed, e), computed element by element (a Feistel network
with cycle walking), so nothing the size of "all windows" is ever held, and
every epoch's order is new. Global step s of an epoch is positions
[s·B, (s+1)·B) of that order (B, the global batch); worker w takes the w-th
of its W equal slices. The positions past steps·B (the remainder that makes no
full global batch) are left out of that epoch, a different set every epoch.
Everything is a function of (seed, epoch, step, worker): not of scheduling,
not of where a run was resumed, and the global batches do not depend on the
number of workers.

Each worker reads its own Ray Dataset, built inside the training loop from
the epoch it starts at: `ray.data.range` over its rows, mapped to windows in
blocks by map tasks, in order (`preserve_order`). Not Ray Train's
`streaming_split` of one dataset: it hands blocks to workers as they ask, so
which worker reads what, and where an epoch ends, would depend on timing, and
a dataset the driver builds once cannot start a replaced worker group at its
checkpoint's epoch.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from charlm.data.windows import gather, window_count

# Rows (windows) per block of a worker's dataset: large enough that a map
# task's fixed cost is small against its work.
BLOCK_ROWS = 65_536


_U64 = np.uint64


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a strong 64-bit mixer (uint64 arithmetic wraps)."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


class Permutation:
    """A pseudo-random bijection of [0, n) keyed by a tuple of ints, evaluated
    at any positions without building the whole permutation.

    A balanced Feistel network permutes the 2^(2h) integers of 2h bits
    (the smallest even bit width holding n, so fewer than 4n); values that
    land outside [0, n) are sent through it again (cycle walking) until they
    fall inside, which keeps it a bijection of [0, n). Six rounds of a
    SplitMix64 round function."""

    ROUNDS = 6

    def __init__(self, n: int, key: Sequence[int]):
        self.n = int(n)
        self.half = (max(2, (self.n - 1).bit_length()) + 1) // 2
        self.mask = _U64((1 << self.half) - 1)
        self.keys = np.random.SeedSequence([int(k) for k in key]).generate_state(
            self.ROUNDS, dtype=np.uint64)

    def _rounds(self, x: np.ndarray) -> np.ndarray:
        half = _U64(self.half)
        left, right = x >> half, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix(right ^ k) & self.mask)
        return (left << half) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        x = self._rounds(np.asarray(positions, dtype=np.uint64))
        out = np.flatnonzero(x >= self.n)
        while out.size:
            x[out] = self._rounds(x[out])
            out = out[x[out] >= self.n]
        return x.astype(np.int64)


@dataclass(frozen=True)
class Plan:
    """Who reads which windows when; identical on every worker.

    lengths: ids per part; a part's windows are maxlen + 1 ids every `step`.
    batch_size: global, a multiple of num_workers (see `round_batch`).
    steps: per epoch, at most max_steps (then an epoch is the first
    steps·batch_size positions of that epoch's order)."""

    lengths: tuple[int, ...]
    maxlen: int
    step: int
    batch_size: int
    num_workers: int
    seed: int
    max_steps: int | None = None

    def __post_init__(self):
        if self.batch_size % self.num_workers:
            raise ValueError("batch_size must be a multiple of num_workers")

    @property
    def counts(self) -> np.ndarray:
        return np.array([window_count(n, self.maxlen, self.step) for n in self.lengths],
                        dtype=np.int64)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def per_worker(self) -> int:
        return self.batch_size // self.num_workers

    @property
    def steps(self) -> int:
        full = self.total // self.batch_size
        return min(full, self.max_steps) if self.max_steps else full

    @property
    def rows_per_epoch(self) -> int:
        """Windows one worker reads per epoch."""
        return self.steps * self.per_worker

    def order(self, epoch: int) -> Permutation:
        return Permutation(self.total, (self.seed, epoch))

    def windows_of(self, rows: np.ndarray, worker: int, start_epoch: int) -> np.ndarray:
        """Global window numbers of a worker's dataset rows (row 0: the first
        window it reads in start_epoch)."""
        rows = np.asarray(rows, dtype=np.int64)
        epoch, within = np.divmod(rows, self.rows_per_epoch)
        step, k = np.divmod(within, self.per_worker)
        positions = step * self.batch_size + worker * self.per_worker + k
        out = np.empty(len(rows), dtype=np.int64)
        for e in np.unique(epoch):  # a block spans one epoch, rarely two
            sel = epoch == e
            out[sel] = self.order(start_epoch + int(e))(positions[sel])
        return out

    def starts(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(part, start offset within the part) of global window numbers."""
        bounds = np.concatenate([[0], np.cumsum(self.counts)])
        part = np.searchsorted(bounds, windows, side="right") - 1
        return part, (windows - bounds[part]) * self.step


class _Gather:
    """Ray Data UDF: a block of a worker's row numbers → their windows.

    Parts fetched from the object store are read in place (zero-copy), and a
    block's windows lie all over the corpus: every page of the store a process
    has read would stay mapped, in its RSS, while it lives, until it held the
    whole corpus. So the process drops its mappings of a part's pages as soon
    as it has read that part's windows of the block (`_unmap`): the pages stay
    in the store, and the next block maps those it reads again. A process
    holds at most about one part's pages (each fault also maps up to 64 KB
    around it), whatever the corpus size, and lives on: exiting every few
    blocks (Ray's max_calls) would bound it too, at the cost of a process
    start every few blocks."""

    def __init__(self, parts: Sequence, plan: Plan, worker: int, start_epoch: int):
        self.parts, self.plan = list(parts), plan
        self.worker, self.start_epoch = worker, start_epoch
        self.mapped: set[int] = set()  # id() of fetched parts in the store's shared mapping

    def _part(self, p: int) -> np.ndarray:
        part = self.parts[p]
        if not isinstance(part, np.ndarray):  # an ObjectRef: zero-copy from the object store
            import ray

            part = self.parts[p] = ray.get(part)
            if _in_shared_mapping(part):
                self.mapped.add(id(part))
        return part

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        windows = self.plan.windows_of(batch["id"], self.worker, self.start_epoch)
        return {"window": gather_parts(self._part, self.plan, windows, self._release)}

    def _release(self, part: np.ndarray) -> None:
        if id(part) in self.mapped:  # parts stay referenced in self.parts: ids are stable
            _unmap(part)


_PAGE = mmap.PAGESIZE


def _in_shared_mapping(a: np.ndarray) -> bool:
    """Whether an array's memory lies in a shared file mapping (the object
    store's), where dropping pages loses nothing; never true for a process's
    own memory (small objects are inlined, not in the store), where it would
    zero them. Linux only."""
    if not sys.platform.startswith("linux") or a.nbytes == 0:
        return False
    start = a.__array_interface__["data"][0]
    end = start + a.nbytes
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= start and end <= hi:
                return fields[1][3] == "s" and len(fields) > 5 and fields[5].startswith("/")
    return False


def _unmap(a: np.ndarray) -> None:
    """madvise(MADV_DONTNEED) over an array in a shared mapping: its pages
    leave this process's RSS, their contents stay in the mapped file."""
    start = a.__array_interface__["data"][0]
    lo = start - start % _PAGE
    hi = -(-(start + a.nbytes) // _PAGE) * _PAGE
    _libc().madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), mmap.MADV_DONTNEED)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def gather_parts(get_part, plan: Plan, windows: np.ndarray, release=None) -> np.ndarray:
    """Windows (maxlen + 1 ids each) by global number, from parts fetched by
    index; release(part), if given, once a part's windows are read."""
    part, start = plan.starts(windows)
    release = release or (lambda _: None)
    if len(plan.lengths) == 1:
        out = gather(get_part(0), start, plan.maxlen)
        release(get_part(0))
        return out
    out = np.empty((len(windows), plan.maxlen + 1), dtype=get_part(int(part[0])).dtype)
    by_part = np.argsort(part, kind="stable")
    edges = np.flatnonzero(np.diff(part[by_part])) + 1
    for group in np.split(by_part, edges):
        p = get_part(int(part[group[0]]))
        out[group] = gather(p, start[group], plan.maxlen)
        release(p)
    return out


def worker_stream(parts: Sequence, plan: Plan, worker: int, start_epoch: int, epochs: int):
    """A Ray Dataset of worker `worker`'s windows (column "window") for epochs
    start_epoch .. epochs (1-based), in reading order: plan.per_worker of them
    per step, plan.steps steps per epoch. `parts` are the encoded parts
    (arrays or ObjectRefs), in the order of plan.lengths."""
    import ray.data

    if len(parts) != len(plan.lengths):
        raise ValueError("one length per part")
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    rows = plan.rows_per_epoch * max(0, epochs - start_epoch + 1)
    blocks = max(1, min(-(-rows // BLOCK_ROWS), 4_000))
    return (ray.data.range(rows, override_num_blocks=blocks)
            .map_batches(_Gather(parts, plan, worker, start_epoch), batch_size=None,
                         batch_format="numpy"))


def round_batch(batch_size: int, num_workers: int) -> int:
    """The global batch rounded down to a multiple of the worker count (at
    least one window per worker): every worker takes an equal share."""
    return max(num_workers, batch_size - batch_size % num_workers)


def make_plan(lengths: list[int], config) -> Plan:
    """The data plan of a run (a charlm.config.TrainConfig), identical on every
    worker: unequal step counts hang the all-reduce. config.batch_size must
    already be a multiple of the workers (round_batch)."""
    return Plan(lengths=tuple(lengths), maxlen=config.maxlen, step=config.step,
                batch_size=config.batch_size, num_workers=config.num_workers,
                seed=config.seed, max_steps=config.max_steps)
