"""The checkpoint format, shared by training (writes, resumes) and generation
(reads).

A checkpoint is a directory holding `charlm.json` (format, vocabulary,
training config, epoch, corpus used, metrics) and a TensorFlow object
checkpoint `state.*` with these slots:

- `weights`: the weights generation and --init-from read, by layer
  (`lstm_<i>/{kernel, recurrent_kernel, bias}`, `next_char/{kernel, bias}`):
  the moving average with --weight-average, else the weights as trained;
- `trained`: the weights as trained, laid out the same way;
- `optimizer`: its slots and step, and under --precision fp16 the dynamic
  loss scale;
- `rng`: each dropout layer's generator state.

A resume restores them all (a run that moves to fp16 starts a fresh loss
scale); everything else reads `weights` alone. Weights are float32 under
every --precision, so checkpoints move freely between precisions. Runs live
under `<storage_path>/<name>/`, one `checkpoint_epoch_NNNN` directory per
epoch that Ray Train keeps (trainer: --keep-checkpoints).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from charlm import storage
from charlm.config import TrainConfig
from charlm.errors import CharlmError, first_line

if TYPE_CHECKING:  # TensorFlow is imported where a model is, never to read charlm.json
    import tensorflow as tf

    from charlm.model.network import CharLM

FORMAT = 3  # charlm.json's "format": the slots above
META = "charlm.json"
STATE = "state"


def weights_slot(lstm: Sequence[Sequence[tf.Variable]],
                 dense: Sequence[tf.Variable]) -> tf.train.Checkpoint:
    """The `weights` slot over the given variables: lstm holds (kernel,
    recurrent_kernel, bias) per layer, dense (kernel, bias). Saving writes
    them; reading restores into them, whatever else the checkpoint holds."""
    import tensorflow as tf

    layers = {f"lstm_{i}": tf.train.Checkpoint(kernel=k, recurrent_kernel=r, bias=b)
              for i, (k, r, b) in enumerate(lstm)}
    return tf.train.Checkpoint(**layers, next_char=tf.train.Checkpoint(kernel=dense[0],
                                                                      bias=dense[1]))


def _slots(model: CharLM) -> dict:
    import tensorflow as tf

    from charlm.model.network import (
        dropout_generators,
        inner_optimizer,
        layer_weights,
        published_weights,
    )

    # fp16's LossScaleOptimizer tracks its loss scale on the inner optimizer.
    return {"weights": weights_slot(*published_weights(model)),
            "trained": weights_slot(*layer_weights(model)),
            "optimizer": inner_optimizer(model.optimizer),
            "rng": tf.train.Checkpoint(**dropout_generators(model))}


def read_slots(prefix: str, **slots: tf.train.Checkpoint) -> None:
    """Restore the given slots from the object checkpoint at `prefix`, all at
    once; every variable they hold must be in it."""
    import tensorflow as tf

    status = tf.train.Checkpoint(**slots).read(prefix)
    status.expect_partial()  # slots not asked for
    status.assert_existing_objects_matched()


def save(directory: str, model: CharLM, meta: dict) -> None:
    """A compiled model's checkpoint, and its charlm.json."""
    import tensorflow as tf

    tf.train.Checkpoint(**_slots(model)).write(os.path.join(directory, STATE))
    with open(os.path.join(directory, META), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)


def restore(directory: str, model: CharLM) -> None:
    """Resume: the weights as trained, the average, the optimizer and
    dropout's generators, all read before this returns. `model` comes from
    compile_model, which built the optimizer's slots: TensorFlow would
    otherwise restore them lazily, at the first training step, from files
    that may be gone by then (Ray Train's local copy of a checkpoint on
    object storage is deleted when its as_directory() closes)."""
    import tensorflow as tf

    from charlm.model.network import loss_scaler

    prefix = os.path.join(directory, STATE)
    slots = _slots(model)
    saved = [name for name, _ in tf.train.list_variables(prefix)]
    if loss_scaler(model.optimizer) is not None and not any(
            name.startswith("optimizer/loss_scale/") for name in saved):
        # Saved under another precision: all but the new loss scale must match.
        optimizer = slots.pop("optimizer")
        read_slots(prefix, **slots)
        tf.train.Checkpoint(optimizer=optimizer).read(prefix).expect_partial()
        return
    read_slots(prefix, **slots)


def read_meta(uri: str) -> dict:
    """A checkpoint's charlm.json, local or remote (s3://, gs://), read alone:
    no TensorFlow, no weights."""
    fs, path = storage.resolve(uri)
    try:
        with fs.open_input_stream(f"{path.rstrip('/')}/{META}") as f:
            meta = json.loads(f.read().decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:  # missing, unreadable, not JSON
        raise CharlmError(f"checkpoint {uri} cannot be loaded ({first_line(e)}); "
                          "pass a checkpoint written by jobs.train") from e
    return meta


def load_model(directory: str, sequences: bool = False) -> tuple[CharLM, dict]:
    """A Keras model (not compiled) holding the checkpoint's `weights`, and
    its metadata."""
    from charlm.model.network import build_model, layer_weights

    meta = read_meta(directory)
    model = build_model(TrainConfig.from_dict(meta["config"]), len(meta["vocab"]), sequences)
    read_slots(os.path.join(directory, STATE), weights=weights_slot(*layer_weights(model)))
    return model, meta


def _is_checkpoint(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(f"{path.rstrip('/')}/{META}").type == pafs.FileType.File


def in_run(run: str) -> list[str]:
    """The URIs of a run's checkpoints, oldest first (none for a new run)."""
    fs, path = storage.resolve(run)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    names = sorted(os.path.basename(i.path.rstrip("/")) for i in infos
                   if i.type == pafs.FileType.Directory and _is_checkpoint(fs, i.path))
    return [storage.join(run, name) for name in names]


def best_in_run(run: str) -> str:
    """The checkpoint with the lowest finite val_loss among those a run kept:
    a run directory given to generation, export or --init-from."""
    scored = [(read_meta(uri)["metrics"]["val_loss"], uri) for uri in in_run(run)]
    if not scored:
        raise CharlmError(f"no charlm checkpoint in {run}; pass a run directory written "
                          "by jobs.train or one of its checkpoint_* directories")
    # NaN compares false with everything, so min() could pick it: never a best.
    finite = [s for s in scored if s[0] is not None and math.isfinite(s[0])]
    if not finite:
        raise CharlmError(f"no checkpoint in {run} has a finite val_loss; the run diverged: "
                          "train again with a lower --learning-rate or --clipnorm")
    return min(finite)[1]


# What decides a checkpoint's variables, by flag: their shapes, the
# optimizer's slots, whether an average is kept, whether dropout has
# generators. Each maps a config to (what must match, the value shown).
_SHAPING = {
    "--units": lambda c: (c.units, c.units),
    "--layers": lambda c: (c.layers, c.layers),
    "--optimizer": lambda c: (c.optimizer, c.optimizer),
    "--weight-average": lambda c: (c.weight_average > 0, c.weight_average or "0 (off)"),
    "--dropout": lambda c: (c.dropout > 0, c.dropout or "0 (off)"),
}


def changed_variables(saved: TrainConfig, config: TrainConfig) -> list[tuple[str, str, str]]:
    """(flag, saved value, new value) for each flag of `config` that would give
    a model other variables than those `saved`'s checkpoints hold: a run
    resumes only where there is none. The vocabulary's size decides them too."""
    changed = []
    for flag, shaping in _SHAPING.items():
        (old, shown_old), (new, shown_new) = shaping(saved), shaping(config)
        if old != new:
            changed.append((flag, str(shown_old), str(shown_new)))
    return changed


def locate(uri: str) -> str:
    """A checkpoint URI from a checkpoint directory or a whole run (→ its best)."""
    uri = storage.normalize(uri)
    fs, path = storage.resolve(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        raise CharlmError(f"checkpoint {uri} does not exist; pass a run directory or a "
                          "checkpoint_* directory written by jobs.train")
    return uri if _is_checkpoint(fs, path) else best_in_run(uri)


def fetch(uri: str) -> str:
    """A local directory with the checkpoint's files (downloaded if remote)."""
    uri = locate(uri)
    if not storage.is_uri(uri):
        return uri
    fs, path = storage.resolve(uri)
    local = tempfile.mkdtemp(prefix="charlm-ckpt-")
    pafs.copy_files(path, local, source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return local
