"""Checkpoint restore reads everything at once: a resume from object storage
gets only a temporary local copy, deleted before the first training step."""

from __future__ import annotations

import shutil

import numpy as np
import tensorflow as tf

from charlm.config import make_config
from charlm.model import checkpoint
from charlm.model.network import averaged, build_model, compile_model


def _model(config):
    model = build_model(config, vocab_size=12)
    compile_model(model, config)
    return model


def test_restore_needs_no_files_after_it_returns(tmp_path) -> None:
    config = make_config("seed", units=8, maxlen=6, batch_size=4)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 12, (8, 6)), rng.integers(0, 12, 8)
    trained = _model(config)
    trained.fit(x, y, batch_size=4, epochs=1, verbose=0)
    saved = tmp_path / "ckpt"
    saved.mkdir()
    checkpoint.save(str(saved), trained, {"epoch": 1})
    slots = [v.numpy() for v in trained.optimizer.variables()]

    resumed = _model(config)
    copy = tmp_path / "copy"  # stands for as_directory()'s temporary download
    shutil.copytree(saved, copy)
    checkpoint.restore(str(copy), resumed)
    shutil.rmtree(copy)

    restored = [v.numpy() for v in resumed.optimizer.variables()]
    assert len(restored) == len(slots) > 1, "iterations and RMSprop's slots"
    for got, want in zip(restored, slots, strict=True):
        np.testing.assert_array_equal(got, want)
    resumed.fit(x, y, batch_size=4, epochs=1, verbose=0)  # no read from `copy` at step one


def test_weight_average_is_what_checkpoints_hold_and_a_resume_trains_on(tmp_path) -> None:
    """--weight-average: scoring and checkpoints see the optimizer's moving
    average of the weights; a resumed run continues from the weights as
    trained, with the average intact."""
    config = make_config("seed", units=8, maxlen=6, batch_size=4, weight_average=0.9)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 12, (32, 6)), rng.integers(0, 12, 32)
    trained = _model(config)
    for i in range(0, 32, 4):  # not fit: its end puts the average in the model for good
        trained.train_on_batch(x[i:i + 4], y[i:i + 4])
    raw = [v.numpy() for v in trained.trainable_variables]
    average = [v.numpy() for v in trained.optimizer._model_variables_moving_average]
    assert not all(np.allclose(a, r) for a, r in zip(average, raw, strict=True))
    saved = tmp_path / "ckpt"
    saved.mkdir()
    with averaged(trained):
        for v, a in zip(trained.trainable_variables, average, strict=True):
            np.testing.assert_array_equal(v.numpy(), a)
        checkpoint.save(str(saved), trained, {"epoch": 1})
    for v, r in zip(trained.trainable_variables, raw, strict=True):  # swapped back
        np.testing.assert_array_equal(v.numpy(), r)

    scored = build_model(config, vocab_size=12)  # generation and --init-from: no optimizer
    checkpoint.restore(str(saved), scored, with_optimizer=False)
    for v, a in zip(scored.trainable_variables, average, strict=True):
        np.testing.assert_array_equal(v.numpy(), a)
    resumed = _model(config)
    checkpoint.restore(str(saved), resumed)
    for v, r in zip(resumed.trainable_variables, raw, strict=True):
        np.testing.assert_array_equal(v.numpy(), r)
    for v, a in zip(resumed.optimizer._model_variables_moving_average, average, strict=True):
        np.testing.assert_array_equal(v.numpy(), a)


def test_weight_average_never_changes_the_training() -> None:
    """The same losses with and without --weight-average, past step 100 (where
    tf-keras's RMSprop would by default copy the average into the weights)."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 12, (8, 6)), rng.integers(0, 12, 8)
    losses = []
    for weight_average in (0.0, 0.99):
        tf.keras.utils.set_random_seed(0)
        model = _model(make_config("seed", units=8, maxlen=6, weight_average=weight_average))
        losses.append([model.train_on_batch(x, y) for _ in range(110)])
    np.testing.assert_array_equal(losses[0], losses[1])
