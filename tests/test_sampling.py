"""charlm.model.generator: the seed's draw and context semantics, compiled, per row."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from charlm.config import TrainConfig
from charlm.model.generator import Generator, sample, weights_from_model
from charlm.model.network import build_model

V = 12
MAXLEN = 8


def tiny_model(layers: int = 1, sequences: bool = False, seed: int = 0,
               dropout: float = 0.0) -> tf.keras.Model:
    """Random weights, large enough that next-character distributions are peaked."""
    config = TrainConfig(units=32, layers=layers, maxlen=MAXLEN, dropout=dropout)
    model = build_model(config, V, sequences)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.6, w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def draw(logp, temperature, uniform, top_k=0, top_p=1.0) -> np.ndarray:
    return sample(tf.constant(logp, tf.float64), tf.constant(temperature, tf.float64),
                  tf.constant(uniform, tf.float64), top_k, top_p).numpy()


def test_zero_temperature_is_greedy():
    logp = np.log(np.random.default_rng(1).dirichlet(np.ones(V), 200))
    got = draw(logp, np.zeros(200), np.random.default_rng(2).random(200))
    np.testing.assert_array_equal(got, logp.argmax(-1))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_draws_follow_softmax_of_logp_over_temperature(temperature):
    """The seed's sample(): softmax(log p / T), then one categorical draw."""
    p = np.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02, 0, 0, 0, 0, 0]) + 1e-9
    p /= p.sum()
    n = 40_000
    got = draw(np.tile(np.log(p), (n, 1)), np.full(n, temperature),
               np.random.default_rng(3).random(n))
    expected = p ** (1 / temperature) / (p ** (1 / temperature)).sum()
    freq = np.bincount(got, minlength=V) / n
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(freq - expected) <= 5 * sigma + 1e-4), (freq, expected)


def test_top_k_never_draws_outside_the_top_k():
    rng = np.random.default_rng(4)
    logp = np.log(rng.dirichlet(np.ones(V), 2000))
    got = draw(logp, np.full(2000, 1.5), rng.random(2000), top_k=3)
    top3 = np.argsort(-logp, axis=-1)[:, :3]
    assert all(g in row for g, row in zip(got, top3, strict=True))
    assert len(set(got)) > 3  # still a draw, not a fixed pick


def test_top_k_keeps_exactly_k_when_probabilities_tie():
    """Ties at the k-th place are broken by the lower id: k characters, not more."""
    p = np.array([0.2, 0.1, 0.2, 0.2, 0.2, 0.1] + [0] * (V - 6)) + 1e-12
    n = 3000
    got = draw(np.tile(np.log(p / p.sum()), (n, 1)), np.ones(n),
               np.random.default_rng(5).random(n), top_k=2)
    assert set(got) == {0, 2}


def nucleus(p: np.ndarray, top_p: float) -> np.ndarray:
    """Reference: the smallest set of the likeliest whose mass reaches top_p, renormalised."""
    order = np.argsort(-p, kind="stable")
    keep = order[:int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
    q = np.zeros_like(p)
    q[keep] = p[keep]
    return q / q.sum()


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 0.5), (1.0, 0, 0.8),
                                                       (0.5, 0, 0.9), (1.0, 3, 0.75)])
def test_top_p_draws_from_the_nucleus(temperature, top_k, top_p):
    p = np.array([0.35, 0.25, 0.15, 0.1, 0.06, 0.04, 0.03, 0.02, 0, 0, 0, 0]) + 1e-9
    p /= p.sum()
    n = 40_000
    got = draw(np.tile(np.log(p), (n, 1)), np.full(n, temperature),
               np.random.default_rng(8).random(n), top_k, top_p)
    scaled = p ** (1 / temperature) / (p ** (1 / temperature)).sum()
    if top_k:
        scaled[np.argsort(-scaled, kind="stable")[top_k:]] = 0
        scaled /= scaled.sum()
    expected = nucleus(scaled, top_p)
    assert (expected > 0).sum() < (scaled > 0).sum()  # the nucleus cuts something here
    freq = np.bincount(got, minlength=V) / n
    assert set(got) == set(np.flatnonzero(expected))
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(freq - expected) <= 5 * sigma + 1e-4), (freq, expected)


def test_top_p_keeps_at_least_the_likeliest():
    logp = np.log(np.random.default_rng(9).dirichlet(np.ones(V), 500))
    got = draw(logp, np.ones(500), np.random.default_rng(10).random(500), top_p=1e-6)
    np.testing.assert_array_equal(got, logp.argmax(-1))


def test_weights_read_from_the_checkpoint_are_the_models(model, tmp_path):
    """Generation reads weights without building a Keras model: the same tensors."""
    from charlm.model import checkpoint
    from charlm.model.generator import weights_from_checkpoint

    two = tiny_model(layers=2, dropout=0.2)
    two.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy")
    checkpoint.save(str(tmp_path), two, {})
    got = weights_from_checkpoint(str(tmp_path / checkpoint.STATE),
                                  TrainConfig(units=32, layers=2, maxlen=MAXLEN), V)
    want = weights_from_model(two)
    for a, b in zip(tf.nest.flatten((got.lstm, got.dense)),
                    tf.nest.flatten((want.lstm, want.dense)), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("mode", ["window", "stateful"])
def test_streaming_gives_the_batch_text(model, mode):
    """The quick sampler's character-at-a-time path equals a batch job's rows."""
    rng = np.random.default_rng(11)
    seeds = [rng.integers(0, V, n) for n in (3, MAXLEN + 4, MAXLEN)]
    temperature, rng_seeds = np.array([0.5, 1.0, 1.3]), rng.integers(0, 2 ** 63 - 1, 3)
    generate = Generator(weights_from_model(model), MAXLEN, mode, top_k=6, top_p=0.9)
    ids, logp = generate(seeds, temperature, rng_seeds, 30)
    for i in range(3):
        streamed = list(generate.stream(seeds[i], temperature[i], rng_seeds[i], 30))
        assert [c for c, _ in streamed] == ids[i].tolist()
        assert np.mean([lp for _, lp in streamed]) == pytest.approx(logp[i], abs=1e-12)


def seed_loop(model: tf.keras.Model, seed: list[int], length: int) -> tuple[list[int], float]:
    """The seed recipe's generation loop, greedy: one pass of the Keras model per
    character (the recipe's `predict`, without its per-call set-up) on the last
    maxlen characters, re-encoded from scratch every step."""
    text, logps = list(seed), []
    for _ in range(length):
        preds = model(np.array([text[-MAXLEN:]]), training=False).numpy()[0]
        nxt = int(np.argmax(preds))
        logps.append(np.log(preds[nxt]))
        text.append(nxt)
    return text[len(seed):], float(np.mean(logps))


@pytest.mark.parametrize("seed_len", [MAXLEN, 3, MAXLEN + 5])
def test_window_mode_is_the_seed_loop(model, seed_len):
    """Equal text at T = 0; seeds shorter than maxlen run as they are (no padding)."""
    seed = list(np.random.default_rng(seed_len).integers(0, V, seed_len))
    expected, logp = seed_loop(model, seed, 30)
    ids, mean_logp = Generator(weights_from_model(model), MAXLEN, "window")(
        [np.array(seed)], np.zeros(1), np.zeros(1, np.int64), 30)
    assert ids[0].tolist() == expected
    assert mean_logp[0] == pytest.approx(logp, abs=1e-5)


def test_stateful_mode_is_the_lstm_run_over_the_whole_text():
    """Carried state = the Keras LSTM stack run over seed + generated text (2 layers,
    dropout between them: off when generating)."""
    model = tiny_model(layers=2, sequences=True, seed=5, dropout=0.3)
    seed = np.random.default_rng(6).integers(0, V, 20)
    ids, mean_logp = Generator(weights_from_model(model), MAXLEN, "stateful")(
        [seed], np.zeros(1), np.zeros(1, np.int64), 40)
    text = np.concatenate([seed, ids[0]])
    probs = model.predict(text[None, :-1], verbose=0)[0, len(seed) - 1:]
    np.testing.assert_array_equal(probs.argmax(-1), ids[0])
    assert mean_logp[0] == pytest.approx(np.log(probs.max(-1)).mean(), abs=1e-5)


@pytest.mark.parametrize("mode, precision", [("window", "fp32"), ("stateful", "fp32"),
                                             ("window", "bf16"), ("stateful", "fp16")])
def test_a_row_does_not_depend_on_its_batch(model, mode, precision):
    """One batch of many, one at a time, or reordered: identical text per row,
    in every precision."""
    rng = np.random.default_rng(7)
    rows = 12
    seeds = [rng.integers(0, V, n) for n in rng.integers(1, 2 * MAXLEN, rows)]
    temperature = np.resize([0.0, 0.5, 1.0, 1.5], rows)
    rng_seeds = rng.integers(0, 2 ** 63 - 1, rows)
    generate = Generator(weights_from_model(model), MAXLEN, mode, top_k=5, top_p=0.95,
                         precision=precision)
    ids, logp = generate(seeds, temperature, rng_seeds, 25)
    order = rng.permutation(rows)
    shuffled, shuffled_logp = generate([seeds[i] for i in order], temperature[order],
                                       rng_seeds[order], 25)
    np.testing.assert_array_equal(shuffled, ids[order])
    np.testing.assert_allclose(shuffled_logp, logp[order], rtol=0, atol=1e-12)
    for i in range(rows):
        one, one_logp = generate([seeds[i]], temperature[i:i + 1], rng_seeds[i:i + 1], 25)
        np.testing.assert_array_equal(one[0], ids[i])
        assert one_logp[0] == pytest.approx(logp[i], abs=1e-12)
    assert len({tuple(r) for r in ids[temperature > 0]}) == int((temperature > 0).sum())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_generates_as_the_keras_policy_computes(model, precision):
    """The generator's log-probabilities in bf16 or fp16 are those of the Keras
    model built under that precision's policy (rounded alike), not fp32's."""
    context = np.random.default_rng(5).integers(0, V, (6, MAXLEN)).astype(np.int32)
    config = TrainConfig(units=32, maxlen=MAXLEN, precision=precision)
    reduced = build_model(config, V)
    reduced.set_weights(model.get_weights())
    keras = {p: np.log(m.predict(context, verbose=0).max(-1)) for p, m in
             (("fp32", model), (precision, reduced))}
    for p in ("fp32", precision):
        generate = Generator(weights_from_model(model), MAXLEN, precision=p)
        _, logp = generate(list(context), np.zeros(6), np.arange(6), 1)  # greedy: the argmax's
        np.testing.assert_allclose(logp, keras[p], atol=2e-3 if p == "fp32" else 2e-2)
    assert np.abs(keras[precision] - keras["fp32"]).max() > 1e-4  # it computed in `precision`
