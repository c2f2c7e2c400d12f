"""`--init-from`: a new run that starts from another run's weights, on a new
corpus whose vocabulary may differ.

Weights are tied to characters in two places: the first LSTM layer's input
kernel has one row per character (its input is one-hot) and the output layer
one column (and bias) per character. A character both vocabularies hold keeps
its trained row and column; a character the old vocabulary lacks keeps the
new model's fresh initialisation. Everything else is copied as it is. The
optimizer starts afresh: this is a new run, with its own schedule.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from charlm import storage
from charlm.config import TrainConfig
from charlm.errors import CharlmError
from charlm.model import checkpoint

if TYPE_CHECKING:  # the driver checks --init-from without TensorFlow
    import tensorflow as tf


@dataclass(frozen=True)
class InitFrom:
    """The checkpoint a run starts from, as its charlm.json records it under
    `init_from`: `old_ids` gives, for each character of the new vocabulary,
    its row in the old one (-1: fresh), once the new vocabulary is known."""

    checkpoint: str
    run: str | None
    epoch: int | None
    old_vocab: str
    old_ids: tuple[int, ...] = ()
    new_chars: str = ""

    def mapped(self, vocab: str) -> InitFrom:
        """The same source, mapped onto the new corpus's vocabulary."""
        index = {c: i for i, c in enumerate(self.old_vocab)}
        old_ids = tuple(index.get(c, -1) for c in vocab)
        return dataclasses.replace(self, old_ids=old_ids, new_chars="".join(
            c for c, i in zip(vocab, old_ids, strict=True) if i < 0))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "old_ids": list(self.old_ids)}


def check(source: str, config: TrainConfig) -> InitFrom:
    """Before Ray starts: `source` (a checkpoint, or a run for its best) must
    exist and hold a model of this run's shape."""
    if not storage.exists(source):
        raise CharlmError(f"--init-from {source} does not exist; pass a run directory or a "
                          "checkpoint_* directory written by jobs.train")
    uri = checkpoint.locate(source)
    meta = checkpoint.read_meta(uri)
    old = TrainConfig.from_dict(meta["config"])
    if (old.units, old.layers) != (config.units, config.layers):
        raise CharlmError(f"--init-from {source} is LSTM({old.units}) x {old.layers} layer(s) "
                          f"but this run builds LSTM({config.units}) x {config.layers}; pass "
                          f"--units {old.units} --layers {old.layers}")
    return InitFrom(uri, meta.get("run"), meta.get("epoch"), meta["vocab"])


def load_into(model: tf.keras.Model, init: InitFrom) -> None:
    """Copy the source's weights (what its checkpoint gives generation) into
    `model`, built for the new vocabulary, its variables freshly initialised.
    Every worker does the same, so their copies stay identical."""
    from charlm.model.generator import weights_from_checkpoint
    from charlm.model.network import layer_weights

    local = checkpoint.fetch(init.checkpoint)
    try:
        meta = checkpoint.read_meta(local)
        old = weights_from_checkpoint(os.path.join(local, checkpoint.STATE),
                                      TrainConfig.from_dict(meta["config"]), len(init.old_vocab))
    finally:
        if local != init.checkpoint:  # a download: what was read is in memory now
            shutil.rmtree(local, ignore_errors=True)
    old_ids = np.asarray(init.old_ids)
    kept = old_ids >= 0
    lstm, dense = layer_weights(model)
    for i, (variables, values) in enumerate(zip(lstm, old.lstm, strict=True)):
        values = [v.numpy() for v in values]
        if i == 0:  # kernel rows: one per input character
            kernel = variables[0].numpy()
            kernel[kept] = values[0][old_ids[kept]]
            values[0] = kernel
        for var, value in zip(variables, values, strict=True):
            var.assign(value)
    kernel, bias = dense[0].numpy(), dense[1].numpy()  # columns and bias: one per character
    kernel[:, kept] = old.dense[0].numpy()[:, old_ids[kept]]
    bias[kept] = old.dense[1].numpy()[old_ids[kept]]
    dense[0].assign(kernel)
    dense[1].assign(bias)
