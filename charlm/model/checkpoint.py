"""The checkpoint format, shared by training (writes) and generation (reads).

A checkpoint is a directory holding `charlm.json` (vocabulary, training
config, epoch, corpus used, metrics) and a TensorFlow object checkpoint
`state.*` (weights, optimizer slots and step, dropout's generator states). Runs live under
`<storage_path>/<name>/`, one `checkpoint_*` directory per epoch, as Ray Train
lays them out.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

import pyarrow.fs as pafs

from charlm import storage
from charlm.config import TrainConfig
from charlm.errors import CharlmError, first_line

META = "charlm.json"
STATE = "state"


def save(directory: str, model, meta: dict) -> None:
    import tensorflow as tf

    from charlm.model.network import dropout_generators

    tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                        rng=tf.train.Checkpoint(**dropout_generators(model))).write(
        os.path.join(directory, STATE))
    with open(os.path.join(directory, META), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)


def restore(directory: str, model, with_optimizer: bool = True) -> None:
    """Everything is read before this returns. The optimizer's slots are built
    first: TensorFlow otherwise restores them lazily, at the first training
    step, from files that may be gone by then (Ray Train's local copy of a
    checkpoint on object storage is deleted when its as_directory() closes)."""
    import tensorflow as tf

    objects = {"model": model}
    if with_optimizer:
        with model.distribute_strategy.scope():
            model.optimizer.build(model.trainable_variables)
        objects["optimizer"] = model.optimizer
    status = tf.train.Checkpoint(**objects).read(os.path.join(directory, STATE))
    status.expect_partial()
    status.assert_existing_objects_matched()
    if with_optimizer:
        # Resuming training: the weights as trained back in the model (a
        # checkpoint holds the average there, model.swap_average), and
        # dropout's generators (absent from older checkpoints, which then
        # resume with fresh ones).
        from charlm.model.network import dropout_generators, swap_average

        swap_average(model)

        tf.train.Checkpoint(rng=tf.train.Checkpoint(**dropout_generators(model))).read(
            os.path.join(directory, STATE)).expect_partial()


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


def load_model(directory: str, sequences: bool = False):
    """Model with the checkpoint's weights (no optimizer), and its metadata."""
    from charlm.model.network import build_model

    meta = read_meta(directory)
    model = build_model(TrainConfig.from_dict(meta["config"]), len(meta["vocab"]), sequences)
    restore(directory, model, with_optimizer=False)
    return model, meta


def _is_checkpoint(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(f"{path.rstrip('/')}/{META}").type == pafs.FileType.File


def best_in_run(run: str) -> str:
    """The checkpoint with the lowest val_loss among a run's checkpoints."""
    fs, path = storage.resolve(run)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    scored = []
    for info in infos:
        if info.type == pafs.FileType.Directory and _is_checkpoint(fs, info.path):
            meta = read_meta(storage.join(run, os.path.basename(info.path.rstrip("/"))))
            scored.append((meta["metrics"]["val_loss"], meta["epoch"], info.path))
    if not scored:
        raise CharlmError(f"no charlm checkpoint in {run}; pass a run directory written "
                          "by jobs.train or one of its checkpoint_* directories")
    # NaN compares false with everything, so min() could pick it: never a best.
    finite = [s for s in scored if s[0] is not None and math.isfinite(s[0])]
    if not finite:
        raise CharlmError(f"no checkpoint in {run} has a finite val_loss; the run diverged: "
                          "train again with a lower --learning-rate or --clipnorm")
    best = min(finite)[2]
    return storage.join(run, os.path.basename(best.rstrip("/")))


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
