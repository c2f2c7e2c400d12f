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


class _Gather:
    """Ray Data UDF: window start offsets → windows (uint8/uint16 ids)."""

    def __init__(self, ids: np.ndarray, maxlen: int, step: int):
        self.ids, self.maxlen, self.step = ids, maxlen, step

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"window": gather(self.ids, batch["id"] * self.step, self.maxlen)}


def training_dataset(train_ids: np.ndarray, maxlen: int, step: int):
    """Ray Dataset of training windows, reshuffled every time it is iterated."""
    import ray.data

    return (ray.data.range(window_count(len(train_ids), maxlen, step))
            .random_shuffle()
            .map_batches(_Gather(train_ids, maxlen, step), batch_format="numpy"))
