"""Real Ray Train runs on a small corpus: learning, resume, worker failure,
reproducibility from --seed."""

import math
import os
import re
import signal
import threading
import time
from collections import Counter

import numpy as np
import pandas as pd
import psutil
import pytest

from charlm.config import make_config
from charlm.data.corpus import load_corpus
from charlm.model import checkpoint
from charlm.training.metrics import HISTORY
from charlm.training.trainer import train

TINY = dict(objective="all", maxlen=32, step=32, batch_size=32, units=32,
            learning_rate=0.01, clipnorm=1.0)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """60K characters of CPython's own docs: offline and real English."""
    text = load_corpus("python-docs").text[:60_000]
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text(text, encoding="utf-8")
    return str(path)


def unigram_entropy(text: str) -> float:
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log(c / n) for c in counts.values())


def test_two_workers_learn_below_unigram_entropy(ray_local, corpus_file, tmp_path, capfd):
    config = make_config(None, corpus=corpus_file, num_workers=2, epochs=3, sample_every=3,
                         storage_path=str(tmp_path), name="two", **TINY)
    best = train(config)
    history = pd.read_parquet(os.path.join(tmp_path, "two", HISTORY))
    assert list(history.epoch) == [1, 2, 3]
    assert history.val_loss.iloc[-1] < unigram_entropy(load_corpus(corpus_file).text)
    assert history.val_loss.iloc[-1] < history.val_loss.iloc[0]
    meta = checkpoint.read_meta(best)
    assert meta["metrics"]["val_loss"] == pytest.approx(history.val_loss.min())
    assert meta["corpus"]["source"].endswith("docs.txt") and meta["config"]["num_workers"] == 2
    out = capfd.readouterr().out
    assert out.count("epoch 3/3") == 1 and "best checkpoint: " + best in out
    assert out.count("samples after epoch") == 1 and out.count("  T=") == 4
    model, _ = checkpoint.load_model(best)
    assert model.output_shape == (None, len(meta["vocab"]))


def test_rerun_with_the_same_name_resumes_at_the_next_epoch(ray_local, corpus_file, tmp_path,
                                                          capfd):
    common = dict(corpus=corpus_file, num_workers=1, storage_path=str(tmp_path), name="again",
                  **TINY)
    train(make_config(None, epochs=1, **common))
    first = checkpoint.read_meta(os.path.join(tmp_path, "again", "checkpoint_epoch_0001"))
    capfd.readouterr()
    train(make_config(None, epochs=2, **common))
    out = capfd.readouterr().out
    assert "resumed from epoch 1" in out and "epoch 1/2" not in out and "epoch 2/2" in out
    history = pd.read_parquet(os.path.join(tmp_path, "again", HISTORY))
    assert list(history.epoch) == [1, 2]
    assert history.val_loss.iloc[0] == pytest.approx(first["metrics"]["val_loss"])


def _train_workers() -> list[psutil.Process]:
    """This test run's Ray Train workers (descendants of this process, whose
    embedded Ray started them), never another run's on the same machine."""
    procs = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                procs.append(p)
        except psutil.Error:
            pass
    return procs


def _registered(run_dir: str, epoch: int) -> bool:
    """Ray Train's controller has persisted epoch's checkpoint (a checkpoint
    directory alone can be on disk before that): a restart resumes from it."""
    snapshot = os.path.join(run_dir, "checkpoint_manager_snapshot.json")
    return os.path.exists(snapshot) and f"checkpoint_epoch_{epoch:04d}" in open(snapshot).read()


def _start(config) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run():
        try:
            result["best"] = train(config)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _kill_workers_after_epoch_1(run_dir: str, thread: threading.Thread, which=slice(None)):
    deadline = time.monotonic() + 300
    while not _registered(run_dir, 1):
        assert time.monotonic() < deadline and thread.is_alive(), "no first checkpoint"
        time.sleep(0.05)
    victims = _train_workers()[which]
    assert victims, "no Ray Train worker process found"
    for v in victims:
        v.send_signal(signal.SIGKILL)
    return time.time()


def _losses(run_dir: str) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(run_dir, HISTORY))[["epoch", "loss", "val_loss"]]


def test_same_seed_same_losses_and_a_killed_job_resubmitted_matches_one_go(
        ray_local, corpus_file, tmp_path, capfd):
    """One worker, dropout, a cosine schedule and averaged weights: everything
    random and everything stateful (data position, dropout generator,
    optimizer slots and step, learning rate, the weights' average) must resume
    where it stopped."""
    common = dict(corpus=corpus_file, num_workers=1, epochs=5, seed=11, dropout=0.3,
                  lr_schedule="cosine", weight_average=0.9, storage_path=str(tmp_path), **TINY)
    train(make_config(None, name="whole", **common))
    whole = _losses(os.path.join(tmp_path, "whole"))

    cut = make_config(None, name="cut", **common)
    thread, result = _start(cut)
    _kill_workers_after_epoch_1(os.path.join(tmp_path, "cut"), thread)
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" in result  # max_failures 0: the job fails
    capfd.readouterr()
    train(cut)  # resubmitted with the same arguments
    out = capfd.readouterr().out
    resumed = re.search(r"resumed from epoch (\d+)", out)
    assert resumed and int(resumed.group(1)) < 5, out
    after = _losses(os.path.join(tmp_path, "cut"))
    assert list(after.epoch) == [1, 2, 3, 4, 5]
    assert np.abs(after.to_numpy() - whole.to_numpy()).max() <= 1e-5, (after, whole)

    train(make_config(None, name="other", **{**common, "seed": 12}))
    other = _losses(os.path.join(tmp_path, "other"))
    assert abs(other.loss.iloc[0] - whole.loss.iloc[0]) > 1e-4


def test_two_workers_reproduce_a_run_through_a_worker_restart(ray_local, corpus_file,
                                                                tmp_path, capfd):
    """Two workers, an odd batch (rounded down to 32 and reported), averaged
    weights: a run whose worker is killed after epoch 1, then replaced by Ray
    Train, gives the same per-epoch losses as the same run done in one go."""
    common = dict(corpus=corpus_file, num_workers=2, epochs=4, max_failures=1, seed=3,
                  weight_average=0.9,
                  storage_path=str(tmp_path), **{**TINY, "batch_size": 33})
    train(make_config(None, name="whole", **common))
    assert "training at 32 (16 per worker)" in capfd.readouterr().out
    whole = _losses(os.path.join(tmp_path, "whole"))
    assert checkpoint.read_meta(os.path.join(tmp_path, "whole", "checkpoint_epoch_0004")
                                )["config"]["batch_size"] == 32

    thread, result = _start(make_config(None, name="killed", **common))
    killed_at = _kill_workers_after_epoch_1(os.path.join(tmp_path, "killed"), thread,
                                            slice(-1, None))
    thread.join(timeout=400)
    assert not thread.is_alive() and "best" in result, result
    last = os.path.join(tmp_path, "killed", "checkpoint_epoch_0004")
    assert os.path.getmtime(os.path.join(last, checkpoint.META)) > killed_at
    out = capfd.readouterr().out
    assert "resumed from epoch" in out and out.count("epoch 1/4") == 1, out
    killed = _losses(os.path.join(tmp_path, "killed"))
    assert np.abs(killed.to_numpy() - whole.to_numpy()).max() <= 1e-5, (killed, whole)
