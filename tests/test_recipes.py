"""Optimizer levers (Adam, global-norm clipping, warm-up) and the gpu and
quality presets: they build, step, and clip the whole summed gradient; the
benchmark that tunes them runs."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from charlm.config import PRESETS, VAL_MAXLEN, TrainConfig, make_config
from charlm.data.corpus import load_corpus
from charlm.data.stream import make_plan
from charlm.data.windows import split, split_xy
from charlm.errors import CharlmError
from charlm.model.network import build_model, compile_model, learning_rate
from jobs.train import add_arguments, config_from


def one_batch(vocab: int, n: int, maxlen: int, objective: str, seed: int = 0) -> tf.data.Dataset:
    w = np.random.default_rng(seed).integers(0, vocab, size=(n, maxlen + 1)).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices(split_xy(w, objective)).batch(n, drop_remainder=True)


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam"])
def test_new_optimizer_settings_build_and_train(optimizer):
    config = TrainConfig(objective="all", units=16, optimizer=optimizer, global_clipnorm=1.0,
                         warmup_steps=10, lr_schedule="cosine", learning_rate=0.02)
    model = build_model(config, 12)
    compile_model(model, config, total_steps=110)
    opt = model.optimizer
    assert type(opt).__name__.lower() == optimizer
    assert opt.global_clipnorm == 1.0 and opt.clipnorm is None
    rate = learning_rate(config, 110)  # 0 → 0.02 over 10 steps, cosine to 1/20 by step 110
    assert float(rate(0)) == 0.0
    assert float(rate(5)) == pytest.approx(0.01)
    assert float(rate(10)) == pytest.approx(0.02)
    assert float(rate(60)) == pytest.approx(0.02 * (0.05 + 0.95 * 0.5), rel=1e-4)
    assert float(rate(110)) == pytest.approx(0.001)
    # Warm-up with a constant rate: up to it, then flat.
    flat = learning_rate(dataclasses.replace(config, lr_schedule="constant"), 110)
    assert float(flat(5)) == pytest.approx(0.01) and float(flat(100)) == pytest.approx(0.02)
    history = model.fit(one_batch(12, 8, 10, "all").repeat(3), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(opt.iterations) == 3


def test_one_step_clips_the_summed_gradient_by_its_global_norm():
    """A norm of 1e-6 clips every element far below RMSprop's sqrt(epsilon),
    where its update is linear in the gradient: lr * g / sqrt(epsilon). So
    the step taken in micro-batches (slices of 4, 3, 3) must move the weights
    along the whole batch's gradient scaled to a global norm of 1e-6. An
    unclipped step moves each weight by about lr * sqrt(10); a per-tensor clip
    rescales each tensor by its own factor and changes the direction."""
    vocab, lr, norm = 12, 10.0, 1e-6
    config = TrainConfig(objective="all", units=8, learning_rate=lr, global_clipnorm=norm,
                         micro_batch=4)
    model = build_model(config, vocab)
    compile_model(model, config)
    batch = one_batch(vocab, 10, 9, "all", seed=4)
    x, y = next(iter(batch))
    start = [v.numpy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = tf.keras.losses.SparseCategoricalCrossentropy()(y, model(x, training=True))
    grads = [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
    scale = norm / np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))
    assert scale < 1e-3  # the clip is active
    model.fit(batch, epochs=1, verbose=0)
    eps = model.optimizer.epsilon
    for v, s0, g in zip(model.trainable_variables, start, grads, strict=True):
        clipped = g.astype(np.float64) * scale
        expected = -lr * clipped / np.sqrt(0.1 * clipped ** 2 + eps)
        np.testing.assert_allclose(v.numpy() - s0, expected, rtol=2e-3, atol=2e-7, err_msg=v.name)


def test_clipnorm_and_global_clipnorm_are_exclusive_and_flags_reach_the_config():
    with pytest.raises(CharlmError, match="--global-clipnorm"):
        make_config(None, clipnorm=1.0, global_clipnorm=1.0)
    with pytest.raises(CharlmError, match="--optimizer"):
        make_config(None, optimizer="sgd")
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from(parser.parse_args(
        ["--preset", "fast", "--optimizer", "adam", "--warmup-steps", "5"]))
    assert (config.optimizer, config.warmup_steps, config.clipnorm) == ("adam", 5, 1.0)
    config = config_from(parser.parse_args(["--preset", "gpu", "--global-clipnorm", "2"]))
    assert config.global_clipnorm == 2.0 and config.optimizer == "adam"


@pytest.mark.parametrize("preset", ["gpu", "quality"])
def test_preset_builds_and_takes_a_micro_batched_step_on_cpu(preset):
    """The gpu preset's whole batch of 1,024 sequences, on a CPU: computed in
    slices of micro_batch, one optimizer step (the quality preset: one batch)."""
    config = make_config(preset)
    assert config.batch_size >= (1024 if preset == "gpu" else 1)
    vocab = 40
    model = build_model(config, vocab)
    compile_model(model, config, total_steps=100)
    assert model.micro_batch == config.micro_batch
    start = model.get_weights()
    history = model.fit(one_batch(vocab, config.batch_size, config.maxlen, config.objective),
                        epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and int(model.optimizer.iterations) == 1
    if config.warmup_steps == 0:
        assert any(np.abs(a - b).max() > 0 for a, b in zip(model.get_weights(), start, strict=True))


def test_seed_quick_and_fast_presets_are_unchanged():
    assert PRESETS["seed"] == {}
    fast = {"objective": "all", "maxlen": 64, "step": 64, "batch_size": 64,
            "learning_rate": 0.02, "clipnorm": 1.0, "dropout": 0.3, "lr_schedule": "cosine"}
    assert PRESETS["quick"] == {**fast, "epochs": 6}
    assert PRESETS["fast"] == {**fast, "epochs": 80}
    assert make_config("seed").optimizer == "rmsprop" and make_config("fast").warmup_steps == 0


def test_recipes_benchmark_scores_a_preset_at_the_steps_asked(corpus, tmp_path):
    """benchmarks.recipes trains as the trainer plans its epochs (it once
    imported a helper the data stream had replaced, and failed at once)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "recipes.json"
    subprocess.run([sys.executable, "-m", "benchmarks.recipes", "--presets", "quick",
                    "--steps", "4", "--eval-every", "2", "--corpus", corpus, "--json", str(out)],
                   cwd=root, check=True, stdout=subprocess.DEVNULL)
    run = json.loads(out.read_text())["runs"][0]
    assert [e["step"] for e in run["evals"]] == [2, 4]
    assert all(np.isfinite(e["val_loss"]) for e in run["evals"])
    config = make_config("quick")
    train_ids, _ = split(load_corpus(corpus).ids, config.val_frac, config.maxlen, VAL_MAXLEN)
    assert run["steps_per_epoch"] == make_plan([len(train_ids)], config).steps
    assert (out.parent / "recipes.png").exists()
