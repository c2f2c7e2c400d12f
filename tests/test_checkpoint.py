"""Checkpoint restore reads everything at once: a resume from object storage
gets only a temporary local copy, deleted before the first training step."""

from __future__ import annotations

import shutil

import numpy as np

from charlm import checkpoint
from charlm.config import make_config
from charlm.model import build_model, compile_model


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
