"""Generation kernels: a whole batch of requests, every character of them, in
one compiled TensorFlow call.

The seed calls `model.predict` once per character (~20 characters/s). Here
the loop over characters runs inside a `tf.function` (a graph while-loop)
over a batch of rows, on an LSTM cell rebuilt from the checkpoint's weights
(the one-hot input times the kernel is a row gather).

Every row draws from its own stream of stateless uniforms, keyed by its RNG
seed, one uniform per character: a row's text never depends on which batch
it ran in (a batched `stateless_categorical` would make row i's draw depend
on the batch shape).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

PAD = -1  # left padding of short contexts: a step that leaves the state untouched


@dataclass(frozen=True)
class Weights:
    """LSTM stack and output layer as constants; gate order i, f, c, o (Keras)."""

    lstm: tuple[tuple[tf.Tensor, tf.Tensor, tf.Tensor], ...]  # (kernel, recurrent, bias)
    dense: tuple[tf.Tensor, tf.Tensor]


def weights_from_model(model: tf.keras.Model) -> Weights:
    """The weights of a charlm.model.build_model model (any number of layers)."""
    lstm = tuple(tuple(tf.constant(w) for w in layer.get_weights())
                 for layer in model.layers if isinstance(layer, tf.keras.layers.LSTM))
    dense = tuple(tf.constant(w) for w in model.get_layer("next_char").get_weights())
    return Weights(lstm=lstm, dense=dense)


def sample(logp: tf.Tensor, temperature: tf.Tensor, uniform: tf.Tensor,
           top_k: int = 0) -> tf.Tensor:
    """The seed's draw, one per row: softmax(log p / T), then one categorical
    draw, by inverting the CDF at the row's own uniform (float64, like the
    seed's numpy). T = 0 is greedy argmax; top_k > 0 keeps the k likeliest."""
    logp = tf.cast(logp, tf.float64)
    greedy = tf.argmax(logp, axis=-1, output_type=tf.int32)
    positive = temperature > 0
    scaled = logp / tf.where(positive, temperature, 1.0)[:, None]
    if 0 < top_k < logp.shape[-1]:
        kth = tf.math.top_k(scaled, top_k).values[:, -1:]
        scaled = tf.where(scaled >= kth, scaled, tf.constant(-np.inf, tf.float64))
    probs = tf.nn.softmax(scaled)
    cdf = tf.cumsum(probs, axis=-1)
    below = cdf <= uniform[:, None] * cdf[:, -1:]
    drawn = tf.minimum(tf.reduce_sum(tf.cast(below, tf.int32), axis=-1), logp.shape[-1] - 1)
    # Rounding can push the draw past the last character with any mass: take the mode.
    drawn = tf.where(tf.gather(probs, drawn, batch_dims=1) > 0, drawn, greedy)
    return tf.where(positive, drawn, greedy)


class Generator:
    """Both context modes over one set of weights.

    window: the seed's semantics: the last maxlen characters re-run from a
    zero state for every character. stateful: the state is carried forward,
    one LSTM step per character, after priming on the whole seed.
    """

    def __init__(self, weights: Weights, maxlen: int, context_mode: str = "window",
                 top_k: int = 0):
        self.weights, self.maxlen, self.top_k = weights, maxlen, top_k
        self.context_mode = context_mode
        width = maxlen if context_mode == "window" else None
        loop = {"window": self._window, "stateful": self._stateful}[context_mode]
        self._fn = tf.function(loop, input_signature=[
            tf.TensorSpec([None, width], tf.int32),
            tf.TensorSpec([None], tf.float64),
            tf.TensorSpec([None, 2], tf.int64),
            tf.TensorSpec([], tf.int32),
        ])

    def context(self, seeds: list[np.ndarray]) -> np.ndarray:
        """Seeds (ids) → one left-padded array: window mode keeps the last
        maxlen ids of each; stateful mode keeps them whole."""
        width = self.maxlen if self.context_mode == "window" else max(map(len, seeds))
        out = np.full((len(seeds), width), PAD, np.int32)
        for row, ids in enumerate(seeds):
            ids = np.asarray(ids[-width:])
            out[row, width - len(ids):] = ids
        return out

    def __call__(self, seeds: list[np.ndarray], temperature: np.ndarray,
                 rng_seeds: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids [rows, length] of the generated characters, and each row's mean
        log-probability (nats, at T = 1) of what it generated."""
        ids, mean_logp = self._fn(tf.constant(self.context(seeds)),
                                  tf.constant(temperature, tf.float64),
                                  tf.constant(split_seeds(rng_seeds)),
                                  tf.constant(length, tf.int32))
        return ids.numpy(), mean_logp.numpy()

    # -- graph pieces ------------------------------------------------------

    def _zero_state(self, rows: tf.Tensor) -> tuple[tf.Tensor, ...]:
        return tuple(tf.zeros([rows, rec.shape[0]]) for _, rec, _ in self.weights.lstm
                     for _ in range(2))

    def _step(self, ids: tf.Tensor, state: tuple[tf.Tensor, ...]) -> tuple[tf.Tensor, ...]:
        """One character through the stack; PAD rows keep their state."""
        keep = (ids == PAD)[:, None]
        x = None
        new = []
        for layer, (kernel, recurrent, bias) in enumerate(self.weights.lstm):
            h, c = state[2 * layer], state[2 * layer + 1]
            xk = tf.gather(kernel, tf.maximum(ids, 0)) if layer == 0 else x @ kernel
            i, f, g, o = tf.split(xk + h @ recurrent + bias, 4, axis=-1)
            c_new = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h_new = tf.sigmoid(o) * tf.tanh(c_new)
            h, c = tf.where(keep, h, h_new), tf.where(keep, c, c_new)
            new += [h, c]
            x = h
        return tuple(new)

    def _logp(self, state: tuple[tf.Tensor, ...]) -> tf.Tensor:
        # float64: float32 log_softmax rounds a row differently with the batch's size.
        kernel, bias = self.weights.dense
        return tf.nn.log_softmax(tf.cast(state[-2] @ kernel + bias, tf.float64))

    def _uniforms(self, seeds: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
        """[rows, length] uniforms, row r from its own seed alone."""
        return tf.map_fn(lambda s: tf.random.stateless_uniform([length], s, dtype=tf.float64),
                         seeds, fn_output_signature=tf.TensorSpec([None], tf.float64))

    def _emit(self, logp, temperature, u, t, out, total):
        nxt = sample(logp, temperature, u[:, t], self.top_k)
        return nxt, out.write(t, nxt), total + tf.gather(logp, nxt, batch_dims=1)

    def _window(self, window, temperature, seeds, length):
        rows = tf.shape(window)[0]
        u = self._uniforms(seeds, length)
        out = tf.TensorArray(tf.int32, size=length)
        total = tf.zeros([rows], tf.float64)
        for t in tf.range(length):
            state = self._zero_state(rows)
            for j in range(self.maxlen):
                state = self._step(window[:, j], state)
            nxt, out, total = self._emit(self._logp(state), temperature, u, t, out, total)
            window = tf.concat([window[:, 1:], nxt[:, None]], axis=1)
        return tf.transpose(out.stack()), total / tf.cast(length, tf.float64)

    def _stateful(self, context, temperature, seeds, length):
        rows = tf.shape(context)[0]
        u = self._uniforms(seeds, length)
        out = tf.TensorArray(tf.int32, size=length)
        total = tf.zeros([rows], tf.float64)
        state = self._zero_state(rows)
        for j in tf.range(tf.shape(context)[1]):
            state = self._step(context[:, j], state)
        for t in tf.range(length):
            nxt, out, total = self._emit(self._logp(state), temperature, u, t, out, total)
            state = self._step(nxt, state)
        return tf.transpose(out.stack()), total / tf.cast(length, tf.float64)


def split_seeds(rng_seeds: np.ndarray) -> np.ndarray:
    """63-bit seeds → the [rows, 2] int64 pairs that stateless ops take."""
    s = np.asarray(rng_seeds, np.int64)
    return np.stack([s >> 32, s & 0xFFFFFFFF], axis=-1)
