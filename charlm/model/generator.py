"""Generation kernels: a whole batch of requests, every character of them, in
one compiled TensorFlow call.

The seed calls `model.predict` once per character. Here the loop over
characters runs inside a `tf.function` (a graph while-loop) over a batch of
rows, on an LSTM cell rebuilt from the checkpoint's weights (the one-hot
input times the kernel is a row gather).

Every row draws from its own stream of stateless uniforms, keyed by its RNG
seed, one uniform per character: a row's text never depends on which batch
it ran in (a batched `stateless_categorical` would make row i's draw depend
on the batch shape).

A precision (config.PRECISIONS) sets the dtype of the LSTM stack's matmuls,
gates and state, as training's policy does; the output layer runs in
float32, the log-softmax and the draw in float64 whatever the precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from charlm.config import COMPUTE_DTYPES, TrainConfig

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


def weights_from_checkpoint(prefix: str, config: TrainConfig, vocab_size: int) -> Weights:
    """The `weights` slot of a checkpoint's TensorFlow state (`<dir>/state`),
    restored into variables of the shapes that `config` and the vocabulary's
    size give (charlm.model.checkpoint): no Keras model is built, which
    saves generation's start-up the tf-keras import and a model build."""
    from charlm.model.checkpoint import read_slots, weights_slot

    def zeros(*shape: int) -> tf.Variable:
        return tf.Variable(tf.zeros(shape), trainable=False)

    units, gates = config.units, 4 * config.units
    lstm = tuple((zeros(vocab_size if i == 0 else units, gates), zeros(units, gates), zeros(gates))
                 for i in range(config.layers))
    dense = (zeros(units, vocab_size), zeros(vocab_size))
    read_slots(prefix, weights=weights_slot(lstm, dense))
    return Weights(lstm=tuple(tuple(tf.convert_to_tensor(v) for v in layer) for layer in lstm),
                   dense=tuple(tf.convert_to_tensor(v) for v in dense))


def sample(logp: tf.Tensor, temperature: tf.Tensor, uniform: tf.Tensor,
           top_k: int = 0, top_p: float = 1.0) -> tf.Tensor:
    """The seed's draw, one per row: softmax(log p / T), then one categorical
    draw, by inverting the CDF at the row's own uniform (float64, like the
    seed's numpy). T = 0 is greedy argmax.

    top_k > 0 keeps exactly the k likeliest characters (ties broken by the
    lower id); top_p < 1 then keeps the smallest set of the likeliest whose
    probability (after T and top-k) reaches top_p. Both rank each row alone."""
    logp = tf.cast(logp, tf.float64)
    vocab = logp.shape[-1]
    greedy = tf.argmax(logp, axis=-1, output_type=tf.int32)
    positive = temperature > 0
    scaled = logp / tf.where(positive, temperature, 1.0)[:, None]
    k = top_k if 0 < top_k < vocab else vocab
    if k < vocab or top_p < 1:
        scaled = tf.where(_ranks(scaled) < _kept(scaled, k, top_p)[:, None], scaled,
                          tf.constant(-np.inf, tf.float64))
    probs = tf.nn.softmax(scaled)
    cdf = tf.cumsum(probs, axis=-1)
    below = cdf <= uniform[:, None] * cdf[:, -1:]
    drawn = tf.minimum(tf.reduce_sum(tf.cast(below, tf.int32), axis=-1), vocab - 1)
    # Rounding can push the draw past the last character with any mass: take the mode.
    drawn = tf.where(tf.gather(probs, drawn, batch_dims=1) > 0, drawn, greedy)
    return tf.where(positive, drawn, greedy)


def _ranks(scaled: tf.Tensor) -> tf.Tensor:
    """Each character's rank in its row, 0 = likeliest; equal values rank by id."""
    order = tf.math.top_k(scaled, scaled.shape[-1]).indices  # ties: lower index first
    return tf.argsort(order, axis=-1, stable=True)


def _kept(scaled: tf.Tensor, k: int, top_p: float) -> tf.Tensor:
    """How many of each row's likeliest characters top-k, then top-p, keep."""
    if top_p >= 1:
        return tf.fill(tf.shape(scaled)[:1], k)
    top = tf.nn.softmax(tf.math.top_k(scaled, k).values)  # the k likeliest, renormalised
    before = tf.cumsum(top, axis=-1, exclusive=True)  # mass of the likelier ones
    return tf.reduce_sum(tf.cast(before < top_p, tf.int32), axis=-1)


class Generator:
    """Both context modes over one set of weights, in one precision.

    window: the seed's semantics: the last maxlen characters re-run from a
    zero state for every character. stateful: the state is carried forward,
    one LSTM step per character, after priming on the whole seed.

    Two compiled functions: `start` (context → carry, the rows' uniforms) and
    `run` (carry, n uniforms → n characters, carry). A job runs every
    character in one `run` call; the quick sampler calls it once per character
    to stream them. Both execute the same graph, so they give the same text.

    `precision` rounds the LSTM weights to its compute dtype once, here; the
    state (stateful mode's carry) is kept in that dtype too.
    """

    def __init__(self, weights: Weights, maxlen: int, context_mode: str = "window",
                 top_k: int = 0, top_p: float = 1.0, precision: str = "fp32"):
        self.maxlen, self.top_k, self.top_p = maxlen, top_k, top_p
        self.context_mode, self.precision = context_mode, precision
        self.dtype = tf.as_dtype(COMPUTE_DTYPES[precision])
        self.weights = Weights(lstm=tuple(tuple(tf.cast(w, self.dtype) for w in layer)
                                          for layer in weights.lstm), dense=weights.dense)
        width = maxlen if context_mode == "window" else None
        units = [rec.shape[0] for _, rec, _ in weights.lstm for _ in range(2)]
        carry = ((tf.TensorSpec([None, width], tf.int32),) if context_mode == "window" else
                 tuple(tf.TensorSpec([None, u], self.dtype) for u in units))
        self.start = tf.function(self._start, input_signature=[
            tf.TensorSpec([None, width], tf.int32),  # context
            tf.TensorSpec([None, 2], tf.int64),  # RNG seeds, split
            tf.TensorSpec([], tf.int32),  # length
        ])
        self.run = tf.function(self._run, input_signature=[
            carry,
            tf.TensorSpec([None], tf.float64),  # temperature
            tf.TensorSpec([None, None], tf.float64),  # uniforms, one per character
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
        carry, u = self.start(tf.constant(self.context(seeds)),
                              tf.constant(split_seeds(rng_seeds)), tf.constant(length, tf.int32))
        ids, logp, _ = self.run(carry, tf.constant(temperature, tf.float64), u)
        return ids.numpy(), logp.numpy().mean(axis=1)

    def stream(self, seed: np.ndarray, temperature: float, rng_seed: int,
               length: int) -> Iterator[tuple[int, float]]:
        """One request's characters (id, log p at T = 1), one at a time, each
        as soon as it is drawn: the same as __call__ gives for that request."""
        carry, u = self.start(tf.constant(self.context([seed])),
                              tf.constant(split_seeds([rng_seed])), tf.constant(length, tf.int32))
        temperature = tf.constant([temperature], tf.float64)
        for t in range(length):
            ids, logp, carry = self.run(carry, temperature, u[:, t:t + 1])
            yield int(ids[0, 0]), float(logp[0, 0])

    # -- graph pieces ------------------------------------------------------

    def _zero_state(self, rows: tf.Tensor) -> tuple[tf.Tensor, ...]:
        return tuple(tf.zeros([rows, rec.shape[0]], self.dtype) for _, rec, _ in self.weights.lstm
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
        # The output layer in float32, as in training; float64 after it: a
        # float32 log_softmax rounds a row differently with the batch's size.
        kernel, bias = self.weights.dense
        h = tf.cast(state[-2], tf.float32)
        return tf.nn.log_softmax(tf.cast(h @ kernel + bias, tf.float64))

    def _start(self, context, seeds, length):
        """The carry after the seed, and [rows, length] uniforms, row r from its
        own RNG seed alone (a prefix of a longer request's: Philox counts up)."""
        u = tf.map_fn(lambda s: tf.random.stateless_uniform([length], s, dtype=tf.float64),
                      seeds, fn_output_signature=tf.TensorSpec([None], tf.float64))
        if self.context_mode == "window":
            return (context,), u
        state = self._zero_state(tf.shape(context)[0])
        for j in tf.range(tf.shape(context)[1]):
            state = self._step(context[:, j], state)
        return state, u

    def _window_logp(self, window):
        state = self._zero_state(tf.shape(window)[0])
        for j in range(self.maxlen):
            state = self._step(window[:, j], state)
        return self._logp(state)

    def _run(self, carry, temperature, u):
        """len(u[0]) characters per row: their ids and log p (at T = 1), and the carry."""
        n = tf.shape(u)[1]
        ids = tf.TensorArray(tf.int32, size=n)
        logps = tf.TensorArray(tf.float64, size=n)
        for t in tf.range(n):
            if self.context_mode == "window":
                logp = self._window_logp(carry[0])
            else:
                logp = self._logp(carry)
            nxt = sample(logp, temperature, u[:, t], self.top_k, self.top_p)
            ids = ids.write(t, nxt)
            logps = logps.write(t, tf.gather(logp, nxt, batch_dims=1))
            if self.context_mode == "window":
                carry = (tf.concat([carry[0][:, 1:], nxt[:, None]], axis=1),)
            else:
                carry = self._step(nxt, carry)
        return tf.transpose(ids.stack()), tf.transpose(logps.stack()), carry


def split_seeds(rng_seeds: np.ndarray) -> np.ndarray:
    """63-bit seeds → the [rows, 2] int64 pairs that stateless ops take."""
    s = np.asarray(rng_seeds, np.int64)
    return np.stack([s >> 32, s & 0xFFFFFFFF], axis=-1)
