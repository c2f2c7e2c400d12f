"""What users of char-RNN tools expect of training: TensorBoard event files,
bits per character, early stopping that every worker obeys, a clear stop on a
diverged loss, fine-tuning from another run, and clean, driver-printed lines."""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from charlm.config import make_config
from charlm.data.corpus import load_corpus
from charlm.errors import CharlmError
from charlm.model import checkpoint
from charlm.training.metrics import HISTORY, TENSORBOARD, TensorBoard
from charlm.training.trainer import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(objective="all", maxlen=32, step=32, batch_size=32, units=32,
            learning_rate=0.01, clipnorm=1.0)
TINY_FLAGS = ["--objective", "all", "--maxlen", "32", "--step", "32", "--batch-size", "32",
              "--units", "32", "--clipnorm", "1.0"]


@pytest.fixture(scope="module")
def docs():
    return load_corpus("python-docs").text


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory, docs):
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text(docs[:60_000], encoding="utf-8")
    return str(path)


def scalars(logdir: str) -> dict[str, dict[int, float]]:
    """TensorBoard's own reader over every event file of a run: tag → {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logdir)
    events.Reload()
    import tensorflow as tf

    return {tag: {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}
            for tag in events.Tags()["tensors"]}


def test_redirected_run_stops_early_on_every_worker_and_logs_cleanly(corpus_file, tmp_path):
    """Two workers, a learning rate of 0: val_loss never improves, so
    --patience 1 stops both after epoch 2 of 5 (a worker training on alone
    would hang its all-reduce). Output to a pipe: no worker prefix, no ANSI
    colour, no Ray core-worker line; TensorBoard and history hold val_bpc."""
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--corpus", corpus_file, *TINY_FLAGS,
         "--learning-rate", "0", "--epochs", "5", "--max-steps", "6", "--num-workers", "2",
         "--patience", "1", "--storage-path", str(tmp_path), "--name", "patient"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "\x1b[" not in out and "pid=" not in out and "max_restarts" not in out, out
    lines = proc.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/5", "2/5"], out
    assert all(re.search(r"val_bpc \d+\.\d{3}", line) for line in epochs), out
    assert any(line.startswith("early stop after epoch 2: no better val_loss for 1 epoch")
               for line in lines), out

    run = tmp_path / "patient"
    history = pd.read_parquet(run / HISTORY)
    assert list(history.epoch) == [1, 2]
    assert np.allclose(history.val_bpc, history.val_loss / math.log(2))
    assert (history.learning_rate == 0).all()
    board = scalars(str(run / TENSORBOARD))
    assert set(board) == {"loss", "val_loss", "val_bpc", "learning_rate", "windows_per_s"}
    assert board["val_bpc"] == pytest.approx(dict(zip(history.epoch, history.val_bpc, strict=True)))
    assert checkpoint.best_in_run(str(run)).endswith("checkpoint_epoch_0001")


def test_tensorboard_files_reach_s3(tmp_path, monkeypatch):
    """TensorFlow cannot write s3://: the files are written locally and copied."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "x",
                     "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        boto3.client("s3").create_bucket(Bucket="runs")
        board = TensorBoard("s3://runs/tb-run")
        for epoch in (1, 2):
            board.write({"epoch": epoch, "loss": 2.0 / epoch, "val_loss": 2.5 / epoch,
                         "val_bpc": 2.5 / epoch / math.log(2), "learning_rate": 0.01,
                         "windows_per_s": 1000.0})
        board.close()
        local = tmp_path / "tb"
        local.mkdir()
        s3 = boto3.client("s3")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="runs")["Contents"]
                if not o["Key"].endswith("/")]
        assert len(keys) == 1 and keys[0].startswith(f"tb-run/{TENSORBOARD}/events.out.")
        for key in keys:
            s3.download_file("runs", key, str(local / os.path.basename(key)))
        assert scalars(str(local))["val_loss"] == pytest.approx({1: 2.5, 2: 1.25})
    finally:
        server.stop()


def test_best_checkpoint_is_never_a_nan_val_loss(tmp_path):
    for epoch, val_loss in enumerate([math.nan] * 5 + [2.0] + [math.nan] * 3, start=1):
        d = tmp_path / f"checkpoint_epoch_{epoch:04d}"
        d.mkdir()
        (d / checkpoint.META).write_text(json.dumps(
            {"epoch": epoch, "metrics": {"loss": 1.0, "val_loss": val_loss}}))
    assert checkpoint.best_in_run(str(tmp_path)).endswith("checkpoint_epoch_0006")


def test_non_finite_loss_stops_the_run_with_one_line(ray_local, corpus_file, tmp_path):
    config = make_config(None, corpus=corpus_file, num_workers=1, epochs=3, max_steps=4,
                         storage_path=str(tmp_path), name="nan",
                         **{**TINY, "learning_rate": 1e38, "clipnorm": None})
    with pytest.raises(CharlmError) as caught:
        train(config)
    message = str(caught.value)
    assert "\n" not in message
    assert re.match(r"training loss is (nan|inf|-inf) at epoch 1; lower --learning-rate", message)
    assert "no checkpoint kept" in message
    assert list(pd.read_parquet(tmp_path / "nan" / HISTORY).epoch) == [1]


def test_fine_tuning_beats_training_from_scratch(ray_local, docs, corpus_file, tmp_path):
    """A run trained on one part of the docs, fine-tuned for one epoch on
    another part in which '.' became a character it never saw, does better
    than one epoch from scratch; the new character has its own fresh row."""
    new = tmp_path / "new.txt"
    new.write_text(docs[200_000:230_000].replace(".", "•"), encoding="utf-8")
    common = dict(storage_path=str(tmp_path), num_workers=1, **TINY)
    base = train(make_config(None, corpus=corpus_file, epochs=2, name="base", **common))
    tuned = train(make_config(None, corpus=str(new), epochs=1, name="tuned",
                              init_from=str(tmp_path / "base"), **common))
    scratch = train(make_config(None, corpus=str(new), epochs=1, name="scratch", **common))

    def val_loss(ckpt):
        return checkpoint.read_meta(ckpt)["metrics"]["val_loss"]

    assert val_loss(tuned) < val_loss(scratch) - 0.2, (val_loss(tuned), val_loss(scratch))
    meta = checkpoint.read_meta(tuned)
    init = meta["init_from"]
    old_vocab = checkpoint.read_meta(base)["vocab"]
    assert init["checkpoint"] == base and "•" in init["new_chars"]
    assert init["new_chars"] == "".join(c for c in meta["vocab"] if c not in old_vocab)
    assert [old_vocab[i] if i >= 0 else None for i in init["old_ids"]] == \
        [c if c in old_vocab else None for c in meta["vocab"]]

    with pytest.raises(CharlmError, match="--units 32 --layers 1"):
        train(make_config(None, corpus=str(new), epochs=1, name="bad", init_from=base,
                          **{**common, "units": 16}))
