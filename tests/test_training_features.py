"""What users of char-RNN tools expect of training: early stopping, a stop on
a diverged loss that every worker obeys, in one clean line, TensorBoard event
files (local and on S3), and a best checkpoint that is never a NaN.
Bits per character of a run that learns, and Ctrl-C: tests/test_training.py;
fine-tuning: tests/test_evaluate.py."""

import json
import math
import os
import re
from types import SimpleNamespace

import pandas as pd
import pytest

import jobs.train
from charlm.data.corpus import load_corpus
from charlm.model import checkpoint
from charlm.training import stopping
from charlm.training.metrics import HISTORY, SCALARS, TENSORBOARD, TensorBoard
from charlm.training.trainer import best_checkpoint
from charlm.training.worker import ray_metrics

TINY_FLAGS = ["--objective", "all", "--maxlen", "32", "--step", "32", "--batch-size", "32",
              "--units", "16"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text(load_corpus("python-docs").text[:60_000], encoding="utf-8")
    return str(path)


def scalars(logdir: str) -> dict[str, dict[int, float]]:
    """TensorBoard's own reader over every event file of a run: tag → {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logdir)
    events.Reload()
    import tensorflow as tf

    return {tag: {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}
            for tag in events.Tags()["tensors"]}


def test_early_stopping_counts_the_epochs_since_the_best_val_loss():
    """--patience N: rank 0's decision, which every worker follows (below)."""
    stopper = stopping.EarlyStopping(2)
    assert stopper.after_epoch(1, 3.0, 2.0).reason is None
    assert stopper.after_epoch(2, 2.9, 2.1).reason is None
    decision = stopper.after_epoch(3, 2.8, math.nan)  # NaN is never better
    assert decision.reason == stopping.PATIENCE
    assert decision.message == ("early stop after epoch 3: no better val_loss for 2 epoch(s), "
                                "--patience 2 (best 2.0000 at epoch 1)")
    resumed = stopping.EarlyStopping(2, [{"epoch": 1, "val_loss": 2.0},
                                         {"epoch": 2, "val_loss": 2.1}])  # from history
    assert resumed.after_epoch(3, 2.8, 2.2).reason == stopping.PATIENCE
    assert stopping.EarlyStopping(0).after_epoch(9, 2.0, 5.0).reason is None  # 0: never
    assert stopping.EarlyStopping(0).after_epoch(4, math.inf, 2.0).reason == stopping.NON_FINITE


def test_a_diverged_run_stops_every_worker_in_one_clean_line(ray_local, corpus_file, tmp_path,
                                                             capfd):
    """Two workers, a learning rate of 1e38: the training loss is not finite
    after epoch 1, so rank 0 stops the run and both workers follow (one
    training on alone would hang its all-reduce). That epoch keeps no
    checkpoint, and the job ends in one error line. Output not to a
    terminal: no worker prefix, no ANSI colour, no Ray core-worker line."""
    run = tmp_path / "diverged"
    with pytest.raises(SystemExit) as exit_:
        jobs.train.main(["--corpus", corpus_file, *TINY_FLAGS, "--learning-rate", "1e38",
                         "--epochs", "3", "--max-steps", "2", "--num-workers", "2",
                         "--storage-path", str(tmp_path), "--name", "diverged"])
    captured = capfd.readouterr()
    out = captured.out + captured.err
    assert exit_.value.code == 2, out
    assert "\x1b[" not in out and "pid=" not in out and "max_restarts" not in out, out
    assert [line.split()[1] for line in captured.out.splitlines()
            if line.startswith("epoch ")] == ["1/3"], out
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1, out
    assert re.match(r"error: training loss is (nan|inf|-inf) at epoch 1; lower --learning-rate",
                    errors[0]) and errors[0].endswith("(no checkpoint kept)"), errors
    history = pd.read_parquet(run / HISTORY)
    assert list(history.epoch) == [1] and checkpoint.in_run(str(run)) == []
    board = scalars(str(run / TENSORBOARD))
    assert set(board) == set(SCALARS)
    assert board["learning_rate"] == pytest.approx({1: history.learning_rate[0]})


def test_tensorboard_files_reach_s3(tmp_path, s3_env):
    """TensorFlow cannot write s3://: the files are written locally and copied."""
    import boto3
    from raycluster import environ

    with environ(s3_env):
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="tensorboard")
        board = TensorBoard("s3://tensorboard/tb-run")
        for epoch in (1, 2):
            board.write({"epoch": epoch, "loss": 2.0 / epoch, "val_loss": 2.5 / epoch,
                         "val_bpc": 2.5 / epoch / math.log(2), "learning_rate": 0.01,
                         "windows_per_s": 1000.0})
        board.close()
        local = tmp_path / "tb"
        local.mkdir()
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="tensorboard")["Contents"]
                if not o["Key"].endswith("/")]
        assert len(keys) == 1 and keys[0].startswith(f"tb-run/{TENSORBOARD}/events.out.")
        for key in keys:
            s3.download_file("tensorboard", key, str(local / os.path.basename(key)))
    assert scalars(str(local))["val_loss"] == pytest.approx({1: 2.5, 2: 1.25})


def test_best_checkpoint_is_never_a_nan_val_loss(tmp_path):
    """Neither in a run directory read back (generation, export, --init-from)
    nor among the checkpoints Ray Train ranks (train's own answer), where a
    NaN val_loss is reported as infinity."""
    val_losses = [math.nan] * 5 + [2.0] + [math.nan] * 3
    for epoch, val_loss in enumerate(val_losses, start=1):
        d = tmp_path / f"checkpoint_epoch_{epoch:04d}"
        d.mkdir()
        (d / checkpoint.META).write_text(json.dumps(
            {"epoch": epoch, "metrics": {"loss": 1.0, "val_loss": val_loss}}))
    assert checkpoint.best_in_run(str(tmp_path)).endswith("checkpoint_epoch_0006")

    from ray.train import Checkpoint

    reported = [ray_metrics({"epoch": epoch, "val_loss": val_loss})
                for epoch, val_loss in enumerate(val_losses, start=1)]
    assert [r["val_loss"] for r in reported] == [math.inf] * 5 + [2.0] + [math.inf] * 3
    result = SimpleNamespace(best_checkpoints=[
        (Checkpoint(f"/elsewhere/checkpoint_epoch_{r['epoch']:04d}"), r) for r in reported])
    assert best_checkpoint(result, str(tmp_path)) == str(tmp_path / "checkpoint_epoch_0006")
    result.best_checkpoints = [c for c in result.best_checkpoints if c[1]["val_loss"] > 2]
    assert best_checkpoint(result, str(tmp_path)) is None
