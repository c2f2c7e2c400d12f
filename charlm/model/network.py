"""The char-LSTM: integer ids → one-hot (in the graph) → LSTM stack → softmax.

One-hot encoding happens inside the model so that input memory scales with
windows × maxlen bytes, never × vocabulary. The LSTM keeps Keras defaults
(tanh, sigmoid recurrence, no recurrent dropout, not unrolled, bias on) so that
TensorFlow runs it with the cuDNN kernel on a GPU; dropout is applied to each
LSTM layer's output instead.

--precision sets each layer's Keras mixed-precision policy (never the
process's global one): the one-hot input, the LSTM stack and dropout compute
in bfloat16 or float16, their weights stay float32, and the output layer, its
softmax and the loss run in float32. fp16 scales the loss (compile_model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from charlm import devices, internals
from charlm.config import PRECISIONS, TrainConfig


@tf.keras.utils.register_keras_serializable(package="charlm")
class OneHot(tf.keras.layers.Layer):
    """Integer ids → one-hot floats in the layer's compute dtype; a real layer,
    not a Lambda, so saved models load safely."""

    def __init__(self, depth: int, **kwargs):
        super().__init__(**kwargs)
        self.depth = depth

    def call(self, ids):
        return tf.one_hot(tf.cast(ids, tf.int32), self.depth, dtype=self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "depth": self.depth}


class CharLM(tf.keras.Model):
    """The functional model, with a train step that holds less in memory and
    keeps the weights' average.

    With `micro_batch` set, a batch larger than it is processed in equal
    slices, one after another, and their gradients are summed (weighted by
    slice size) into one optimizer update: the same step as the whole batch,
    but only one slice's activations (the gates of every LSTM step, kept for
    backpropagation) are alive at a time. A GPU takes whole batches.

    With `weight_average` set (compile_model), every optimizer step is
    followed, in the same graph, by an update of the average.

    Under fp16 the optimizer is a LossScaleOptimizer: Keras's own step scales
    the loss through it, and the sliced step scales each slice's loss and
    unscales its gradients the same way.
    """

    # Class attributes, so that Keras does not track what is assigned to them.
    micro_batch: int | None = None
    weight_average: WeightAverage | None = None

    def train_step(self, data):
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        size = x.shape[0]  # static: the training input has a fixed batch per worker
        if not self.micro_batch or size is None or size <= self.micro_batch \
                or sample_weight is not None:
            metrics = super().train_step(data)
        else:
            metrics = self._sliced_step(x, y, size)
        if self.weight_average is not None:
            self.weight_average.update()
        return metrics

    def _sliced_step(self, x, y, size: int):
        n = -(-size // self.micro_batch)
        sizes = [size // n + (i < size % n) for i in range(n)]
        scaler = loss_scaler(self.optimizer)
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
                if scaler is not None:
                    loss = scaler.get_scaled_loss(loss)
            computed = tape.gradient(loss, self.trainable_variables)
            if scaler is not None:
                computed = scaler.get_unscaled_gradients(computed)
            share = xi.shape[0] / size
            sliced = [share * g for g in computed]
            grads = sliced if grads is None else [a + b for a, b in zip(grads, sliced, strict=True)]
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
        return self.get_metrics_result()


class WeightAverage:
    """An exponential moving average of a model's trainable weights
    (--weight-average), in variables of charlm's own: after every optimizer
    step, average = momentum * average + (1 - momentum) * weight, starting
    from the weights it is created with. Training never reads it; `swap`
    exchanges it with the model's weights, and checkpoints save it as the
    weights that generation reads (charlm.model.checkpoint)."""

    def __init__(self, model: tf.keras.Model, momentum: float):
        self.momentum = momentum
        with model.distribute_strategy.scope():  # mirrored like the weights, on every worker
            self.pairs = tuple((v, tf.Variable(v.read_value(), trainable=False))
                               for v in model.trainable_variables)
        self._of = {v.ref(): a for v, a in self.pairs}

    def of(self, variable: tf.Variable) -> tf.Variable:
        """The average of one of the model's weights."""
        return self._of[variable.ref()]

    def update(self) -> None:
        """In a train step (replica context), after the optimizer's step. Every
        replica holds the same weights after it, so each averages its own."""
        def apply(strategy):
            for var, average in self.pairs:
                strategy.extended.update(average, self._step, args=(var,), group=False)

        tf.distribute.get_replica_context().merge_call(apply)

    def _step(self, average: tf.Variable, var: tf.Variable):
        return average.assign(self.momentum * average + (1 - self.momentum) * var)

    def swap(self) -> None:
        """Exchange the average with the model's weights; twice is a no-op."""
        for var, average in self.pairs:
            value = var.read_value()
            var.assign(average.read_value())
            average.assign(value)


def build_model(config: TrainConfig, vocab_size: int, sequences: bool | None = None,
                precision: str | None = None) -> CharLM:
    """`sequences` (default: objective == "all") returns a prediction at every
    position; `precision` (default: config.precision) is the policy of every
    layer but the float32 output layer. The variables are the same either
    way, so checkpoints move freely between the two objectives, the
    precisions, scoring and generation."""
    if sequences is None:
        sequences = config.objective == "all"
    policy = tf.keras.mixed_precision.Policy(PRECISIONS[precision or config.precision])
    ids = tf.keras.Input(shape=(None,), dtype=tf.int32, name="ids")
    x = OneHot(vocab_size, name="one_hot", dtype=policy)(ids)
    for i in range(config.layers):
        last_layer = i == config.layers - 1
        x = tf.keras.layers.LSTM(config.units, return_sequences=sequences or not last_layer,
                                 name=f"lstm_{i}", dtype=policy)(x)
        if config.dropout:
            # A tf.random.Generator ("stateful"), seeded by set_random_seed,
            # whose state checkpoints save (dropout_generators): a resumed run
            # draws the masks the uninterrupted run would have.
            x = tf.keras.layers.Dropout(config.dropout, rng_type="stateful",
                                        name=f"dropout_{i}", dtype=policy)(x)
    probs = tf.keras.layers.Dense(vocab_size, activation="softmax", name="next_char",
                                  dtype="float32")(x)
    return CharLM(ids, probs, name="charlm")


def dropout_generators(model: tf.keras.Model) -> dict[str, tf.random.Generator]:
    """Each dropout layer's random generator, by layer name. tf-keras keeps it
    out of layer.weights and checkpoints, so checkpoint.save adds it."""
    return {layer.name: internals.dropout_generator(layer) for layer in model.layers
            if isinstance(layer, tf.keras.layers.Dropout)
            and internals.dropout_generator(layer) is not None}


# Weights by layer: (kernel, recurrent_kernel, bias) of each LSTM layer, in
# order, and (kernel, bias) of the output layer.
LayerWeights = tuple[tuple[tuple[tf.Variable, ...], ...], tuple[tf.Variable, tf.Variable]]


def layer_weights(model: tf.keras.Model) -> LayerWeights:
    """The model's own weight variables, by layer."""
    lstm = tuple((layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias)
                 for layer in model.layers if isinstance(layer, tf.keras.layers.LSTM))
    dense = model.get_layer("next_char")
    return lstm, (dense.kernel, dense.bias)


def published_weights(model: CharLM) -> LayerWeights:
    """The weights a checkpoint gives generation and --init-from, by layer:
    the average's variables if the model keeps one, else its own."""
    lstm, dense = layer_weights(model)
    average = model.weight_average
    if average is None:
        return lstm, dense
    return tuple(tuple(map(average.of, layer)) for layer in lstm), tuple(map(average.of, dense))


@contextlib.contextmanager
def averaged(model: CharLM) -> Iterator[None]:
    """The model computes with its weights' average for the block, if it keeps
    one (scoring, samples); its own weights are back afterwards, exactly."""
    average = model.weight_average
    if average is not None:
        average.swap()
    try:
        yield
    finally:
        if average is not None:
            average.swap()


def learning_rate(config: TrainConfig, total_steps: int = 1):
    """The rate as a schedule of the optimizer's step over the run's
    total_steps: `cosine` decays to 1/20 by the end (the fast preset);
    `warmup_steps` first rise linearly from 0 to the rate; otherwise the rate
    is constant (a cosine with nothing to decay). Always a schedule, never a
    variable of its own: a checkpoint holds the step, and a resumed run takes
    its rate from its own flags."""
    rate, warmup = config.learning_rate, config.warmup_steps
    return tf.keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else rate, max(total_steps - warmup, 1),
        alpha=0.05 if config.lr_schedule == "cosine" else 1.0,
        warmup_target=rate if warmup else None, warmup_steps=warmup)


def compile_model(model: CharLM, config: TrainConfig, total_steps: int = 1) -> None:
    """RMSprop as the seed, or Adam, under the model's distribution strategy.
    Clipping happens in the optimizer's apply_gradients, after tf-keras has
    all-reduced the gradients across workers and after CharLM.train_step has
    summed its slices, so `global_clipnorm` clips the whole step's gradient.
    Batches are sliced on CPU workers only. With --weight-average, the
    average starts from the model's weights as they are now. Under fp16 the
    optimizer is wrapped in a dynamic LossScaleOptimizer (it skips a step
    whose gradients overflow, and lowers the scale). The optimizer's slots
    are built here, not in the first step: a trace that creates variables is
    traced again, so the training step would be compiled twice."""
    model.micro_batch = None if config.use_gpu else config.micro_batch
    with model.distribute_strategy.scope():
        optimizer = {"rmsprop": tf.keras.optimizers.RMSprop, "adam": tf.keras.optimizers.Adam}[
            config.optimizer](learning_rate=learning_rate(config, total_steps),
                              clipnorm=config.clipnorm, global_clipnorm=config.global_clipnorm)
        optimizer.build(model.trainable_variables)
        if config.precision == "fp16":
            optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss=tf.keras.losses.SparseCategoricalCrossentropy(),
                  steps_per_execution=devices.steps_per_execution(config.use_gpu,
                                                                  config.num_workers))
    model.weight_average = (WeightAverage(model, config.weight_average)
                            if config.weight_average else None)


def loss_scaler(optimizer) -> tf.keras.mixed_precision.LossScaleOptimizer | None:
    """The optimizer if it scales the loss (fp16), else None."""
    return (optimizer if isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
            else None)


def inner_optimizer(optimizer) -> tf.keras.optimizers.Optimizer:
    """The optimizer that keeps the slots and the step: a LossScaleOptimizer's
    inner one, else the optimizer itself. Checkpoints save this one."""
    scaler = loss_scaler(optimizer)
    return optimizer if scaler is None else scaler.inner_optimizer


# Held-out scoring batch: larger ones add to a training worker's peak memory.
SCORE_BATCH = 256


def held_out_scorer(model: tf.keras.Model,
                    batch_size: int = SCORE_BATCH) -> Callable[[np.ndarray], float]:
    """Mean cross-entropy (nats) of the character after each window, from a zero
    state: the seed's held-out score, for either objective's model. Build it
    once per model: it holds one compiled graph (`.graph`) for any number and
    length of windows."""

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32),
                                  tf.TensorSpec([None], tf.int32)])
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

    score.graph = nll_sum
    return score
