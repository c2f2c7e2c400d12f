"""The in-graph one-hot model is the seed's model; both objectives share weights."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from charlm.config import TrainConfig
from charlm.data.windows import split_xy
from charlm.model.network import build_model, compile_model, held_out_scorer
from charlm.training.inputs import without_autotune


def seed_model(vocab_size: int, maxlen: int) -> tf.keras.Model:
    """The Keras example's model: one-hot input, LSTM(128), softmax."""
    return tf.keras.Sequential([
        tf.keras.Input(shape=(maxlen, vocab_size)),
        tf.keras.layers.LSTM(128),
        tf.keras.layers.Dense(vocab_size, activation="softmax"),
    ])


def test_in_graph_one_hot_matches_the_seed_model():
    vocab, maxlen = 30, 40
    ours = build_model(TrainConfig(), vocab)
    seed = seed_model(vocab, maxlen)
    seed.set_weights(ours.get_weights())
    ids = np.random.default_rng(0).integers(0, vocab, size=(16, maxlen))
    one_hot = np.eye(vocab, dtype=np.float32)[ids]
    np.testing.assert_allclose(ours.predict(ids, verbose=0), seed.predict(one_hot, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_objectives_share_weights_and_agree_on_the_last_step():
    vocab = 20
    last = build_model(TrainConfig(objective="last", units=16), vocab)
    every = build_model(TrainConfig(objective="all", units=16), vocab)
    every.set_weights(last.get_weights())
    ids = np.random.default_rng(1).integers(0, vocab, size=(4, 12))
    seq = every.predict(ids, verbose=0)
    assert seq.shape == (4, 12, vocab)
    np.testing.assert_allclose(seq[:, -1], last.predict(ids, verbose=0), rtol=1e-5, atol=1e-6)


def test_held_out_score_is_the_cross_entropy_of_the_character_after_each_window():
    vocab = 10
    model = build_model(TrainConfig(units=8), vocab)
    w = np.random.default_rng(2).integers(0, vocab, size=(50, 9))
    probs = model.predict(w[:, :-1], verbose=0)
    expected = -np.mean(np.log(probs[np.arange(50), w[:, -1]]))
    score = held_out_scorer(model, batch_size=16)
    assert abs(score(w) - expected) < 1e-5
    # An untrained model is close to uniform.
    assert abs(expected - np.log(vocab)) < 0.2
    # One graph for every batch: the last, of 2 windows, and other window lengths too.
    score(w[:, 3:])
    assert score.graph.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("objective, precision, tolerance", [
    ("last", "fp32", 1e-5), ("all", "fp32", 1e-5), ("all", "fp16", 2e-3)])
def test_micro_batches_take_the_same_step_as_the_whole_batch(objective, precision, tolerance):
    """Slices of 4, 3 and 3 windows, gradients weighted by size: one RMSprop
    step lands on the same weights, with the same loss, as the batch of 10.
    Under fp16 each slice's loss is scaled and its gradients unscaled, as
    Keras's own step does for the whole batch."""
    vocab = 12
    config = TrainConfig(objective=objective, units=16, micro_batch=0, precision=precision)
    whole, sliced = build_model(config, vocab), build_model(config, vocab)
    start = whole.get_weights()
    sliced.set_weights(start)
    compile_model(whole, config)
    compile_model(sliced, dataclasses.replace(config, micro_batch=4))
    w = np.random.default_rng(3).integers(0, vocab, size=(10, 9)).astype(np.int32)
    # One batch of a fixed size, as the training input has: slices of 4, 3 and 3.
    losses = [m.train_on_batch(*split_xy(w, objective)) for m in (whole, sliced)]
    assert abs(losses[0] - losses[1]) < tolerance
    for a, b, s0 in zip(whole.get_weights(), sliced.get_weights(), start, strict=True):
        np.testing.assert_allclose(a, b, atol=tolerance)
        assert np.abs(b - s0).max() > 1e-3  # the step moved every weight


def test_the_training_step_is_compiled_once():
    """compile_model builds the optimizer's slots, so the first step creates no
    variable and tf.function keeps its first trace (dropout's generator, the
    weight average and fp16's loss scale are made before it too)."""
    config = TrainConfig(units=8, dropout=0.2, weight_average=0.9, precision="fp16")
    model = build_model(config, 12)
    compile_model(model, config)
    w = np.random.default_rng(4).integers(0, 12, size=(8, 9)).astype(np.int32)
    for _ in range(2):
        model.train_on_batch(*split_xy(w, config.objective))
    assert model.train_function.experimental_get_tracing_count() == 1


def test_training_input_runs_without_autotuning_and_keeps_its_elements():
    data = tf.data.Dataset.range(10).batch(4).prefetch(2)
    assert data.options().autotune.enabled is not False  # TensorFlow's default: on
    fixed = without_autotune(data)
    assert fixed.options().autotune.enabled is False
    assert [b.tolist() for b in fixed.as_numpy_iterator()] == \
        [b.tolist() for b in data.as_numpy_iterator()]


def test_precision_sets_the_lstm_stacks_compute_dtype_and_nothing_else():
    """bf16 and fp16 compute the one-hot input, the LSTM stack and dropout in
    their dtype; every variable and the output layer's softmax stay float32;
    fp16 scales the loss."""
    for precision, dtype in (("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16")):
        config = TrainConfig(units=16, layers=2, dropout=0.1, precision=precision)
        model = build_model(config, 12)
        compile_model(model, config)
        computed = {layer.name: layer.compute_dtype for layer in model.layers[1:]}
        assert computed == {"one_hot": dtype, "lstm_0": dtype, "dropout_0": dtype,
                            "lstm_1": dtype, "dropout_1": dtype, "next_char": "float32"}
        assert {v.dtype for v in model.weights} == {tf.float32}
        assert model.output.dtype == tf.float32
        scaled = isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
        assert scaled == (precision == "fp16")
