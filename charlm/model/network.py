"""The char-LSTM: integer ids → one-hot (in the graph) → LSTM stack → softmax.

One-hot encoding happens inside the model so that input memory scales with
windows × maxlen bytes, never × vocabulary. The LSTM keeps Keras defaults
(tanh, sigmoid recurrence, no recurrent dropout, not unrolled, bias on) so that
TensorFlow runs it with the cuDNN kernel on a GPU; dropout is applied to each
LSTM layer's output instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from charlm import internals
from charlm.config import TrainConfig


@tf.keras.utils.register_keras_serializable(package="charlm")
class OneHot(tf.keras.layers.Layer):
    """Integer ids → one-hot floats; a real layer, not a Lambda, so saved models load safely."""

    def __init__(self, depth: int, **kwargs):
        super().__init__(**kwargs)
        self.depth = depth

    def call(self, ids):
        return tf.one_hot(tf.cast(ids, tf.int32), self.depth)

    def get_config(self):
        return {**super().get_config(), "depth": self.depth}


class CharLM(tf.keras.Model):
    """The functional model, with a train step that holds less in memory.

    With `micro_batch` set, a batch larger than it is processed in equal
    slices, one after another, and their gradients are summed (weighted by
    slice size) into one optimizer update: the same step as the whole batch,
    but only one slice's activations (the gates of 40 LSTM steps, kept for
    backpropagation) are alive at a time. Two slices of 512 cost a CPU worker
    no speed; smaller slices do (BENCHMARKS.md). A GPU takes whole batches.
    """

    micro_batch: int | None = None

    def train_step(self, data):
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        size = x.shape[0]  # static: the training input has a fixed batch per worker
        if not self.micro_batch or size is None or size <= self.micro_batch \
                or sample_weight is not None:
            return super().train_step(data)
        n = -(-size // self.micro_batch)
        sizes = [size // n + (i < size % n) for i in range(n)]
        grads = None
        for xi, yi in zip(tf.split(x, sizes), tf.split(y, sizes), strict=True):
            if grads is not None:
                # The next slice starts once this one's gradients exist, so
                # two slices' activations are never alive together.
                with tf.control_dependencies(grads):
                    xi = tf.identity(xi)
            with tf.GradientTape() as tape:
                probs = self(xi, training=True)
                loss = self.compute_loss(xi, yi, probs)  # also feeds the loss mean
            share = xi.shape[0] / size
            sliced = [share * g for g in tape.gradient(loss, self.trainable_variables)]
            grads = sliced if grads is None else [a + b for a, b in zip(grads, sliced, strict=True)]
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
        return self.get_metrics_result()


def build_model(config: TrainConfig, vocab_size: int,
                sequences: bool | None = None) -> CharLM:
    """`sequences` (default: objective == "all") returns a prediction at every
    position; the weights are the same either way, so checkpoints move freely
    between the two objectives, scoring and generation."""
    if sequences is None:
        sequences = config.objective == "all"
    ids = tf.keras.Input(shape=(None,), dtype=tf.int32, name="ids")
    x = OneHot(vocab_size, name="one_hot")(ids)
    for i in range(config.layers):
        last_layer = i == config.layers - 1
        x = tf.keras.layers.LSTM(config.units, return_sequences=sequences or not last_layer,
                                 name=f"lstm_{i}")(x)
        if config.dropout:
            # A tf.random.Generator ("stateful"), seeded by set_random_seed,
            # whose state checkpoints save (dropout_generators): a resumed run
            # draws the masks the uninterrupted run would have.
            x = tf.keras.layers.Dropout(config.dropout, rng_type="stateful",
                                        name=f"dropout_{i}")(x)
    probs = tf.keras.layers.Dense(vocab_size, activation="softmax", name="next_char")(x)
    return CharLM(ids, probs, name="charlm")


def dropout_generators(model: tf.keras.Model) -> dict[str, tf.random.Generator]:
    """Each dropout layer's random generator, by layer name. tf-keras keeps it
    out of layer.weights and checkpoints on purpose (backward compatibility
    of its own format), so checkpoint.save adds it; it is reached through the
    layer's private `_random_generator`, pinned tf-keras 2.21."""
    return {layer.name: internals.dropout_generator(layer) for layer in model.layers
            if isinstance(layer, tf.keras.layers.Dropout)
            and internals.dropout_generator(layer) is not None}


# Train steps per call into TensorFlow when several workers train: the loss
# mean is all-reduced and Python runs once per call (2 workers on 2 cores: 5%
# faster). One worker has no all-reduce to save, and the longer call cost it
# 40 MB of peak memory.
STEPS_PER_EXECUTION = 16


def learning_rate(config: TrainConfig, total_steps: int = 1):
    """The rate, or its schedule over the run's total_steps: `cosine` decays
    to 1/20 by the end (the fast preset); `warmup_steps` first rise linearly
    from 0 to the rate (a constant rate is a cosine with nothing to decay)."""
    rate, warmup = config.learning_rate, config.warmup_steps
    cosine = config.lr_schedule == "cosine"
    if not warmup and not cosine:
        return rate
    return tf.keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else rate, max(total_steps - warmup, 1), alpha=0.05 if cosine else 1.0,
        warmup_target=rate if warmup else None, warmup_steps=warmup)


def compile_model(model: CharLM, config: TrainConfig, total_steps: int = 1) -> None:
    """RMSprop as the seed, or Adam. Clipping happens in the optimizer's
    apply_gradients, after tf-keras has all-reduced the gradients across
    workers and after CharLM.train_step has summed its slices, so
    `global_clipnorm` clips the whole step's gradient. Batches are sliced on
    CPU workers only."""
    model.micro_batch = None if config.use_gpu else config.micro_batch
    optimizer = {"rmsprop": tf.keras.optimizers.RMSprop, "adam": tf.keras.optimizers.Adam}[
        config.optimizer](learning_rate=learning_rate(config, total_steps),
                          clipnorm=config.clipnorm, global_clipnorm=config.global_clipnorm,
                          use_ema=config.weight_average > 0,
                          ema_momentum=config.weight_average or 0.99,
                          # Never copy the average into the weights being
                          # trained (tf-keras's RMSprop does so every 100
                          # steps by default).
                          ema_overwrite_frequency=None)
    model.compile(optimizer=optimizer, loss=tf.keras.losses.SparseCategoricalCrossentropy(),
                  steps_per_execution=STEPS_PER_EXECUTION if config.num_workers > 1 else 1)


def swap_average(model: tf.keras.Model) -> None:
    """Exchange the model's weights with the optimizer's moving average of
    them (--weight-average), if it keeps one. Swapping twice is a no-op.
    Checkpoints are written swapped: their model weights are the average
    (what scoring, generation and --init-from read), their optimizer's
    average slots the weights as trained, which a resume swaps back. The
    average lives in tf-keras's private optimizer fields (pinned 2.21)."""
    optimizer = model.optimizer
    if not getattr(optimizer, "use_ema", False):
        return
    with model.distribute_strategy.scope():
        optimizer.build(model.trainable_variables)
        for var in model.trainable_variables:
            average = optimizer._model_variables_moving_average[
                optimizer._index_dict[optimizer._var_key(var)]]
            value = var.read_value()
            var.assign(average.read_value())
            average.assign(value)


@contextlib.contextmanager
def averaged(model: tf.keras.Model) -> Iterator[None]:
    """The averaged weights in the model for the block (see swap_average)."""
    swap_average(model)
    try:
        yield
    finally:
        swap_average(model)




# Held-out scoring batch: at 1,024 the scoring pass alone added 60 MB to a
# training worker's peak.
SCORE_BATCH = 256


def held_out_scorer(model: tf.keras.Model,
                    batch_size: int = SCORE_BATCH) -> Callable[[np.ndarray], float]:
    """Mean cross-entropy (nats) of the character after each window, from a zero
    state: the seed's held-out score, for either objective's model. Build it
    once per model: it holds a compiled graph."""

    @tf.function(reduce_retracing=True)
    def nll_sum(x, y):
        probs = model(x, training=False)
        if probs.shape.rank == 3:
            probs = probs[:, -1]
        p = tf.gather(probs, y, batch_dims=1)
        return -tf.reduce_sum(tf.math.log(tf.maximum(p, 1e-7)))

    def score(windows: np.ndarray) -> float:
        total = 0.0
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            total += float(nll_sum(tf.constant(chunk[:, :-1], tf.int32),
                                   tf.constant(chunk[:, -1], tf.int32)))
        return total / max(len(windows), 1)

    return score


def mean_log_loss(model: tf.keras.Model, windows: np.ndarray,
                  batch_size: int = SCORE_BATCH) -> float:
    return held_out_scorer(model, batch_size)(windows)
