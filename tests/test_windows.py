"""Windowing is the seed's, exactly; the held-out tail never leaks into training."""

import numpy as np
import pytest

from charlm.data.corpus import encode
from charlm.data.windows import holdout_start, split, window_starts, windows
from charlm.errors import CharlmError


def seed_windows(text: str, maxlen: int, step: int):
    """The Keras example's loop, verbatim."""
    sentences, next_chars = [], []
    for i in range(0, len(text) - maxlen, step):
        sentences.append(text[i: i + maxlen])
        next_chars.append(text[i + maxlen])
    return sentences, next_chars


@pytest.mark.parametrize("n,maxlen,step", [(1000, 40, 3), (997, 40, 3), (500, 7, 5), (41, 40, 3)])
def test_windows_match_the_seed_loop(n, maxlen, step):
    rng = np.random.default_rng(n)
    text = "".join(rng.choice(list("abcdefgh ,.xyz"), size=n))
    vocab = "".join(sorted(set(text)))
    sentences, next_chars = seed_windows(text, maxlen, step)
    got = windows(encode(text, vocab), maxlen, step)
    assert got.shape == (len(sentences), maxlen + 1)
    assert ["".join(vocab[i] for i in w[:-1]) for w in got] == sentences
    assert ["".join(vocab[w[-1]]) for w in got] == next_chars


def test_split_is_contiguous_and_windows_stay_on_their_side():
    ids = np.arange(1000) % 50
    train, val = split(ids, 0.1, maxlen=40, val_maxlen=40)
    assert len(train) == holdout_start(1000, 0.1) == 900
    assert np.array_equal(np.concatenate([train, val]), ids)
    last_train_window_end = window_starts(len(train), 40, 3)[-1] + 40
    assert last_train_window_end < len(train)


def test_split_rejects_a_tail_too_short_for_one_window():
    with pytest.raises(CharlmError, match="too short"):
        split(np.zeros(300, dtype=np.uint8), 0.1, maxlen=40, val_maxlen=40)
