"""Windows over the encoded corpus, the held-out split, and the Ray Dataset
that shards training windows across workers.

Windows are never materialised as one-hot arrays, nor all at once: the Ray
Dataset holds window start offsets, and each block gathers its windows of
maxlen + 1 ids from the encoded corpus (put in the object store once) as it
streams to the workers.
"""

from __future__ import annotations

import numpy as np

from charlm.errors import CharlmError


def holdout_start(n_chars: int, val_frac: float) -> int:
    """Index where the held-out tail starts; no window crosses it."""
    return int(n_chars * (1 - val_frac))


def window_count(n_chars: int, maxlen: int, step: int) -> int:
    return len(range(0, max(n_chars - maxlen, 0), step))


def window_starts(n_chars: int, maxlen: int, step: int) -> np.ndarray:
    """The seed's loop: `for i in range(0, len(text) - maxlen, step)`."""
    return np.arange(0, max(n_chars - maxlen, 0), step, dtype=np.int64)


def gather(ids: np.ndarray, starts: np.ndarray, maxlen: int) -> np.ndarray:
    """Windows of maxlen + 1 ids: the input and the character(s) to predict."""
    return ids[starts[:, None] + np.arange(maxlen + 1)]


def windows(ids: np.ndarray, maxlen: int, step: int) -> np.ndarray:
    return gather(ids, window_starts(len(ids), maxlen, step), maxlen)


def split(ids: np.ndarray, val_frac: float, maxlen: int,
          val_maxlen: int) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous training head and held-out tail, each long enough for one window."""
    cut = holdout_start(len(ids), val_frac)
    train, val = ids[:cut], ids[cut:]
    if len(train) <= maxlen or len(val) <= val_maxlen:
        raise CharlmError(
            f"corpus has {len(ids)} characters: too short for {maxlen}-character training "
            f"windows and {val_maxlen}-character held-out windows with --val-frac {val_frac}; "
            "use a longer corpus or a smaller --maxlen")
    return train, val


# A prime stride that scatters consecutive row numbers over the whole text, so
# that every block of rows (and so every batch) samples the whole corpus.
_STRIDE = 1_000_003


class _Gather:
    """Ray Data UDF: a block of row numbers → its windows. Row r belongs to
    epoch r // count; each epoch visits every window once, through its own
    random rotation of a strided order, shuffled again within each block.

    MERGE(bigcorpus → data): `ids` is one id array, or the corpus's parts (id
    arrays or ObjectRefs to them, charlm.parts) with their `lengths`; window w
    of the epoch is window w - offset[p] of part p, never crossing a part. The
    data branch's stream takes parts natively and replaces this."""

    def __init__(self, ids, maxlen: int, step: int, count: int, seed: int,
                 lengths: list[int] | None = None):
        self.parts = ids if isinstance(ids, list) else [ids]
        self.maxlen, self.step, self.count, self.seed = maxlen, step, count, seed
        lengths = lengths if lengths is not None else [len(p) for p in self.parts]
        self.offsets = np.cumsum([0] + [window_count(n, maxlen, step) for n in lengths])
        self.stride = _STRIDE if count % _STRIDE else _STRIDE + 2  # coprime to count

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.random.default_rng([self.seed, int(batch["id"][0])]).permutation(batch["id"])
        epoch, local = rows // self.count, rows % self.count
        rotations = np.random.default_rng(self.seed).integers(self.count, size=epoch.max() + 1)
        order = (local * self.stride + rotations[epoch]) % self.count
        if len(self.parts) == 1 and not _is_ref(self.parts[0]):
            return {"window": gather(self.parts[0], order * self.step, self.maxlen)}
        part = np.searchsorted(self.offsets, order, side="right") - 1
        starts = (order - self.offsets[part]) * self.step
        arrays = _resolve(self.parts)
        out = np.empty((len(order), self.maxlen + 1), dtype=arrays[0].dtype)
        for p in np.unique(part):
            at = np.flatnonzero(part == p)
            out[at] = gather(arrays[p], starts[at], self.maxlen)
        return {"window": out}


def _is_ref(part) -> bool:
    return not isinstance(part, np.ndarray)


def _resolve(parts: list) -> list[np.ndarray]:
    """Arrays of the parts; ObjectRefs are read from Ray's store without a copy."""
    refs = [p for p in parts if _is_ref(p)]
    if not refs:
        return parts
    import ray

    got = iter(ray.get(refs))
    return [next(got) if _is_ref(p) else p for p in parts]


def training_stream(train_ids, maxlen: int, step: int, epochs: int, seed: int = 0,
                    lengths: list[int] | None = None):
    """One Ray Dataset holding every epoch's windows, read once per run.

    `train_ids`: one id array, or a list of parts with their `lengths` (see _Gather).
    Re-executing a dataset per epoch makes every worker wait at the split's
    epoch barrier while the next execution starts; one stream does not, and
    needs no all-to-all shuffle (whose tasks would take CPU from training)."""
    import ray.data

    if lengths is None:
        lengths = [len(p) for p in (train_ids if isinstance(train_ids, list) else [train_ids])]
    count = sum(window_count(n, maxlen, step) for n in lengths)
    udf = _Gather(train_ids, maxlen, step, count, seed, lengths)
    rows = count * epochs
    return (ray.data.range(rows, override_num_blocks=max(4, min(rows // 65_536, 4_000)))
            .map_batches(udf, batch_size=None, batch_format="numpy"))
