"""Windows over the encoded corpus (the seed's offsets) and the held-out split.

Windows are never materialised as one-hot arrays, nor all at once for
training: charlm.data.stream gathers each worker's windows of maxlen + 1 ids
from the encoded corpus as they stream to it.
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


def split_xy(windows: np.ndarray, objective: str) -> tuple[np.ndarray, np.ndarray]:
    """Windows of maxlen + 1 ids → inputs and targets for the objective
    (numpy arrays, or tensors inside the training input pipeline)."""
    x = windows[:, :-1]
    y = windows[:, 1:] if objective == "all" else windows[:, -1]
    return x, y

