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

import numpy as np

from charlm import storage
from charlm.config import TrainConfig
from charlm.errors import CharlmError
from charlm.model import checkpoint


def plan(source: str, vocab: str, config: TrainConfig) -> dict:
    """Check that `source` (a checkpoint or a run, → its best) fits `config`,
    and return what the checkpoint metadata records: the source, and for each
    character of the new vocabulary its row in the old one (-1: fresh)."""
    if not storage.exists(source):
        raise CharlmError(f"--init-from {source} does not exist; pass a run directory or a "
                          "checkpoint_* directory written by jobs.train")
    uri = checkpoint.locate(source)
    meta = checkpoint.read_meta(checkpoint.fetch(uri))
    old = TrainConfig.from_dict(meta["config"])
    if (old.units, old.layers) != (config.units, config.layers):
        raise CharlmError(f"--init-from {source} is LSTM({old.units}) x {old.layers} layer(s) "
                          f"but this run builds LSTM({config.units}) x {config.layers}; pass "
                          f"--units {old.units} --layers {old.layers}")
    index = {c: i for i, c in enumerate(meta["vocab"])}
    old_ids = [index.get(c, -1) for c in vocab]
    return {"checkpoint": uri, "run": meta.get("run"), "epoch": meta.get("epoch"),
            "old_vocab": meta["vocab"], "old_ids": old_ids,
            "new_chars": "".join(c for c, i in zip(vocab, old_ids, strict=True) if i < 0)}


def load_into(model, init: dict) -> None:
    """Copy the planned checkpoint's weights into `model` (built for the new
    vocabulary, its variables freshly initialised). Every worker does the
    same, so their copies stay identical."""
    old_model, _ = checkpoint.load_model(checkpoint.fetch(init["checkpoint"]))
    old_ids = np.asarray(init["old_ids"])
    kept = old_ids >= 0
    for layer in model.layers:
        old_weights = old_model.get_layer(layer.name).get_weights() if layer.weights else []
        if not old_weights:
            continue
        weights = layer.get_weights()
        if layer.name == "lstm_0":  # kernel rows: one per input character
            weights[0][kept] = old_weights[0][old_ids[kept]]
            weights[1:] = old_weights[1:]
        elif layer.name == "next_char":  # kernel columns and bias: one per output character
            weights[0][:, kept] = old_weights[0][:, old_ids[kept]]
            weights[1][kept] = old_weights[1][old_ids[kept]]
        else:
            weights = old_weights
        layer.set_weights(weights)
