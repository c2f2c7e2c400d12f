"""Real Ray Train runs on a small corpus: learning, resume, worker failure."""

import math
import os
import signal
import threading
import time
from collections import Counter

import pandas as pd
import psutil
import pytest

from charlm import checkpoint, runtime
from charlm.config import make_config
from charlm.corpus import load_corpus
from charlm.training import HISTORY, train

TINY = dict(objective="all", maxlen=32, step=32, batch_size=32, units=32,
            learning_rate=0.01, clipnorm=1.0)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    runtime.init_ray(cpus_needed=2)
    yield
    ray.shutdown()


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
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "RayTrainWorker" in cmd:
            procs.append(p)
    return procs


def test_a_killed_worker_is_replaced_and_training_resumes(ray_local, corpus_file, tmp_path,
                                                         capfd):
    config = make_config(None, corpus=corpus_file, num_workers=2, epochs=4, max_failures=1,
                         storage_path=str(tmp_path), name="killed", **TINY)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(best=train(config)), daemon=True)
    thread.start()
    # Kill only once Ray Train's controller has registered epoch 1's checkpoint
    # in its persisted state: a restart must then resume from it, not from
    # scratch (a checkpoint directory alone can be on disk before that).
    snapshot = os.path.join(tmp_path, "killed", "checkpoint_manager_snapshot.json")
    deadline = time.monotonic() + 240

    def registered() -> bool:
        return os.path.exists(snapshot) and "checkpoint_epoch_0001" in open(snapshot).read()

    while not registered():
        assert time.monotonic() < deadline and thread.is_alive(), "no first checkpoint"
        time.sleep(0.2)
    victims = _train_workers()
    assert victims, "no Ray Train worker process found"
    victims[-1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    thread.join(timeout=400)
    assert not thread.is_alive() and "best" in result
    last = os.path.join(tmp_path, "killed", "checkpoint_epoch_0004")
    assert os.path.getmtime(os.path.join(last, checkpoint.META)) > killed_at
    out = capfd.readouterr().out
    assert "resumed from epoch" in out and out.count("epoch 1/4") == 1, out
