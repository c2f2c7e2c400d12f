"""The checkpoint format: a resume restores everything at once and exactly;
the weights generation reads are the average when one is kept, read back
without tf-keras's object names; the flags that change a checkpoint's
variables are exactly those a resume refuses to change."""

from __future__ import annotations

import dataclasses
import itertools
import shutil

import numpy as np
import pytest
import tensorflow as tf

from charlm.config import make_config
from charlm.model import checkpoint
from charlm.model.generator import weights_from_checkpoint, weights_from_model
from charlm.model.network import averaged, build_model, compile_model

VOCAB = 12


def _model(config):
    model = build_model(config, vocab_size=VOCAB)
    compile_model(model, config)
    return model


def _batches(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, VOCAB, (n, 6)), rng.integers(0, VOCAB, n)


def _values(variables) -> list[np.ndarray]:
    return [v.numpy() for v in variables]


def test_restore_needs_no_files_after_it_returns(tmp_path) -> None:
    config = make_config("seed", units=8, maxlen=6, batch_size=4, dropout=0.2)
    x, y = _batches(8)
    trained = _model(config)
    trained.fit(x, y, batch_size=4, epochs=1, verbose=0)
    saved = tmp_path / "ckpt"
    saved.mkdir()
    checkpoint.save(str(saved), trained, {"epoch": 1})
    slots = _values(trained.optimizer.variables())

    resumed = _model(config)
    copy = tmp_path / "copy"  # stands for as_directory()'s temporary download
    shutil.copytree(saved, copy)
    checkpoint.restore(str(copy), resumed)
    shutil.rmtree(copy)

    restored = _values(resumed.optimizer.variables())
    assert len(restored) == len(slots) > 1, "iterations and RMSprop's slots"
    for got, want in zip(restored, slots, strict=True):
        np.testing.assert_array_equal(got, want)
    resumed.fit(x, y, batch_size=4, epochs=1, verbose=0)  # no read from `copy` at step one


def test_the_average_is_what_generation_reads_and_a_resume_restores_both(tmp_path) -> None:
    """--weight-average: a checkpoint's `weights` are the average, read by
    generation and --init-from (no Keras model) and by load_model (a Keras
    model); a resumed run continues from the weights as trained, its average
    intact."""
    config = make_config("seed", units=8, maxlen=6, batch_size=4, weight_average=0.9, layers=2)
    x, y = _batches(32)
    trained = _model(config)
    for i in range(0, 32, 4):
        trained.train_on_batch(x[i:i + 4], y[i:i + 4])
    raw = _values(trained.trainable_variables)
    average = _values(a for _, a in trained.weight_average.pairs)
    assert not any(np.allclose(a, r) for a, r in zip(average, raw, strict=True))
    with averaged(trained):
        for v, a in zip(trained.trainable_variables, average, strict=True):
            np.testing.assert_array_equal(v.numpy(), a)
        scored = weights_from_model(trained)
    for v, r in zip(trained.trainable_variables, raw, strict=True):  # swapped back
        np.testing.assert_array_equal(v.numpy(), r)
    saved = tmp_path / "ckpt"
    saved.mkdir()
    checkpoint.save(str(saved), trained, {"epoch": 1, "config": config.to_dict(),
                                          "vocab": "x" * VOCAB})

    read = weights_from_checkpoint(str(saved / checkpoint.STATE), config, VOCAB)
    loaded, _ = checkpoint.load_model(str(saved))
    for got, from_model, want in zip(tf.nest.flatten((read.lstm, read.dense)),
                                     tf.nest.flatten(weights_from_model(loaded).lstm
                                                     + (weights_from_model(loaded).dense,)),
                                     tf.nest.flatten((scored.lstm, scored.dense)), strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        np.testing.assert_array_equal(from_model.numpy(), want.numpy())

    resumed = _model(config)
    checkpoint.restore(str(saved), resumed)
    for v, r in zip(resumed.trainable_variables, raw, strict=True):
        np.testing.assert_array_equal(v.numpy(), r)
    for (_, a), want in zip(resumed.weight_average.pairs, average, strict=True):
        np.testing.assert_array_equal(a.numpy(), want)


def test_weight_average_never_changes_the_training() -> None:
    """The same losses with and without --weight-average, through a scoring
    swap between steps."""
    x, y = _batches(8)
    losses = []
    for weight_average in (0.0, 0.99):
        tf.keras.utils.set_random_seed(0)
        model = _model(make_config("seed", units=8, maxlen=6, weight_average=weight_average))
        losses.append([model.train_on_batch(x, y) for _ in range(3)])
        with averaged(model):
            pass
        losses[-1] += [model.train_on_batch(x, y) for _ in range(3)]
    np.testing.assert_array_equal(losses[0], losses[1])


ON = {"dropout": 0.2, "weight_average": 0.9}
RESUMES = [  # (the checkpoint's flags, this job's change, refused)
    ({}, {"learning_rate": 0.5}, False),
    ({}, {"lr_schedule": "cosine"}, False),
    ({}, {"warmup_steps": 3}, False),
    ({}, {"clipnorm": 1.0}, False),
    ({}, {"objective": "all"}, False),
    ({}, {"micro_batch": 2}, False),
    (ON, {"weight_average": 0.5}, False),
    (ON, {"dropout": 0.4}, False),
    ({}, {"units": 16}, True),
    ({}, {"layers": 2}, True),
    ({}, {"optimizer": "adam"}, True),
    ({}, {"weight_average": 0.9}, True),
    ({}, {"dropout": 0.2}, True),
    (ON, {"weight_average": 0.0}, True),  # would restore, ambiguously
    (ON, {"dropout": 0.0}, True),
]


def test_the_flags_a_resume_refuses_are_those_that_change_the_variables(tmp_path) -> None:
    """A checkpoint restores into a model built under any flags but those
    checkpoint.changed_variables names, and fails under each of those that
    adds variables (switching the average or dropout off is refused too)."""
    x, y = _batches(4)
    saved = {}
    for name, flags in (("off", {}), ("on", ON)):
        base = make_config("seed", units=8, maxlen=6, batch_size=4, **flags)
        written = _model(base)
        written.train_on_batch(x, y)
        (tmp_path / name).mkdir()
        checkpoint.save(str(tmp_path / name), written, {})
        saved[name] = base, str(tmp_path / name)
    for flags, change, refused in RESUMES:
        base, directory = saved["on" if flags else "off"]
        config = dataclasses.replace(base, **change)
        named = [flag for flag, _, _ in checkpoint.changed_variables(base, config)]
        assert named == ([f"--{k.replace('_', '-')}" for k in change] if refused else []), change
        if refused and not any(change.values()):
            continue
        model = _model(config)
        if refused:
            with pytest.raises((AssertionError, ValueError)):  # unmatched, or other shapes
                checkpoint.restore(directory, model)
        else:
            checkpoint.restore(directory, model)


def test_checkpoints_move_between_precisions(tmp_path) -> None:
    """A checkpoint written under any --precision resumes under any other with
    the same weights and optimizer step; fp16 to fp16 keeps the loss scale,
    and a run moving to fp16 starts a fresh one. --precision is no flag a
    resume refuses."""
    x, y = _batches(8)
    written = {}
    for precision in ("fp32", "bf16", "fp16"):
        config = make_config("seed", units=8, maxlen=6, batch_size=4, precision=precision)
        model = _model(config)
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        if precision == "fp16":
            model.optimizer.dynamic_counter.assign(7)  # a scale mid-way through its growth
        (tmp_path / precision).mkdir()
        checkpoint.save(str(tmp_path / precision), model, {})
        written[precision] = config, model
    for (old, (saved_config, saved)), new in itertools.product(written.items(), written):
        config = dataclasses.replace(saved_config, precision=new)
        assert checkpoint.changed_variables(saved_config, config) == []
        resumed = _model(config)
        checkpoint.restore(str(tmp_path / old), resumed)
        for got, want in zip(_values(resumed.weights), _values(saved.weights), strict=True):
            np.testing.assert_array_equal(got, want, err_msg=f"{old} -> {new}")
        assert int(resumed.optimizer.iterations) == 2, f"{old} -> {new}"
        if new == "fp16":
            assert int(resumed.optimizer.dynamic_counter) == (7 if old == "fp16" else 0)
        resumed.fit(x, y, batch_size=4, epochs=1, verbose=0)
