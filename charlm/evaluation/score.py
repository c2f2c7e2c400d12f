"""A checkpoint's loss on text: the characters after windows of VAL_MAXLEN,
one window every `stride` characters, each from a zero state (at stride 3,
training's val_loss exactly); or, at stride 1, every character with the LSTM
state carried through the whole text, as language-model benchmarks score.

Text is the checkpoint's own kind of ids: characters of its vocabulary
(those outside it are dropped, and counted), or UTF-8 bytes for a byte-level
checkpoint. The held-out split is the last val_frac of a file's ids, cut
where training cut it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from charlm.config import VAL_MAXLEN
from charlm.data.corpus import BYTES_VOCAB
from charlm.data.windows import gather, holdout_start, window_starts
from charlm.model.network import SCORE_BATCH, held_out_scorer

CHUNK_WINDOWS = 64 * SCORE_BATCH  # windows gathered at a time: whole scoring batches
CHUNK_CHARS = 4096  # characters per call of the stateful scorer


def ids_of(text: str, vocab: str) -> np.ndarray:
    """The text's ids: vocabulary indices (-1 outside it), or UTF-8 bytes."""
    if vocab == BYTES_VOCAB:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    codes = np.frombuffer(text.encode("utf-32-le"), "<u4")
    known = np.frombuffer(vocab.encode("utf-32-le"), "<u4")
    table = np.full(int(max(codes.max(initial=0), known.max(initial=0))) + 1, -1, np.int32)
    table[known] = np.arange(len(vocab), dtype=np.int32)
    return table[codes]


def split(ids: np.ndarray, which: str, val_frac: float) -> tuple[np.ndarray, int]:
    """The part scored (`heldout`: the tail training held out; `all`) with
    the characters outside the vocabulary dropped, and how many were."""
    part = ids[holdout_start(len(ids), val_frac):] if which == "heldout" else ids
    known = part >= 0
    return part[known], int((~known).sum())


class Scorer:
    """Both ways of scoring, over one model built by charlm.model.checkpoint.load_model."""

    def __init__(self, model: tf.keras.Model):
        self.windows = held_out_scorer(model)
        self.one_hot, self.dense = model.get_layer("one_hot"), model.get_layer("next_char")
        # The model's own LSTM cells, run so that their state comes out.
        self.rnns = [tf.keras.layers.RNN(layer.cell, return_sequences=True, return_state=True)
                     for layer in model.layers if isinstance(layer, tf.keras.layers.LSTM)]
        self.units = [rnn.cell.units for rnn in self.rnns]
        self._chunk = tf.function(self._chunk_nats, reduce_retracing=True)

    def __call__(self, ids: np.ndarray, stride: int) -> float:
        """Summed loss (nats) of the characters the stride scores."""
        return self.stateful(ids) if stride == 1 else self.windowed(ids, stride)

    @staticmethod
    def count(ids: np.ndarray, stride: int) -> int:
        if stride == 1:
            return max(len(ids) - 1, 0)
        return len(window_starts(len(ids), VAL_MAXLEN, stride))

    def windowed(self, ids: np.ndarray, stride: int) -> float:
        starts = window_starts(len(ids), VAL_MAXLEN, stride)
        total = 0.0
        for lo in range(0, len(starts), CHUNK_WINDOWS):
            chunk = gather(ids, starts[lo:lo + CHUNK_WINDOWS], VAL_MAXLEN)
            total += self.windows(chunk) * len(chunk)
        return total

    def stateful(self, ids: np.ndarray, chunk: int = CHUNK_CHARS) -> float:
        state = [tf.zeros([1, u]) for u in self.units for _ in range(2)]
        total = 0.0
        for lo in range(0, len(ids) - 1, chunk):
            x, y = ids[lo:lo + chunk], ids[lo + 1:lo + chunk + 1]
            nats, state = self._chunk(tf.constant(x[:len(y)][None], tf.int32),
                                      tf.constant(y[None], tf.int32), state)
            total += float(nats)
        return total

    def _chunk_nats(self, x, y, state):
        h = self.one_hot(x)
        carried = []
        for i, rnn in enumerate(self.rnns):
            h, *layer_state = rnn(h, initial_state=state[2 * i:2 * i + 2])
            carried += layer_state
        p = tf.gather(self.dense(h), y, batch_dims=2)
        # The floor held_out_scorer puts under a probability, so that both agree.
        return -tf.reduce_sum(tf.math.log(tf.maximum(p, 1e-7))), carried
