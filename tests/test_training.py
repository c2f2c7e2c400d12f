"""Real Ray Train runs on a small corpus: two workers learn and keep their
best checkpoints and the latest; a job in a terminal shows a progress bar,
loses a worker, which is replaced, and stops at a checkpoint on Ctrl-C; the
job rerun and the replaced worker both resume exactly; --seed decides each
worker's start; a changed model is refused before any worker starts. Fine-tuning:
tests/test_evaluate.py."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import pty
import re
import signal
import struct
import sys
import termios
import threading
from collections import Counter

import numpy as np
import pandas as pd
import pytest

import jobs.train
from charlm.cli import run_job
from charlm.config import make_config
from charlm.data.corpus import load_corpus
from charlm.model import checkpoint
from charlm.training.metrics import HISTORY
from charlm.training.trainer import train
from charlm.tuning.search import flag

# Two workers, everything random and everything stateful: each worker's data
# position, dropout's generator, optimizer slots and step, a rate that rises
# with the step for the first 30, the weights' average; an odd batch
# (rounded down to 32); 8 epochs of 9 steps, the 2 best checkpoints kept;
# one worker may be lost and replaced.
RUN = dict(objective="all", maxlen=32, step=32, batch_size=33, units=32, learning_rate=0.02,
           clipnorm=1.0, num_workers=2, epochs=8, max_steps=9, keep_checkpoints=2,
           max_failures=1, seed=11, dropout=0.3, warmup_steps=30, weight_average=0.9,
           sample_every=8)


def reports(path: str, kill_after: tuple[int, ...] = (), interrupt_after: int = 0):
    """A Ray Train UserCallback (run in Train's controller): appends rank 0's
    metrics of every report to `path`, one JSON line each. After each epoch
    of `kill_after` is reported (its checkpoint registered by then), it kills
    the last of this test's training workers with SIGKILL; after epoch
    `interrupt_after`, it sends this test's process SIGINT, as Ctrl-C does."""
    import psutil
    from ray.train import UserCallback

    test = os.getpid()

    class Reports(UserCallback):  # defined here: pickled whole into the controller
        killed: set = set()

        def after_report(self, run_context, metrics, checkpoint):
            epoch = metrics[0]["epoch"]
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(metrics[0]) + "\n")
            if epoch in kill_after and epoch not in self.killed:
                self.killed.add(epoch)
                workers = [p for p in psutil.Process(test).children(recursive=True)
                           if "RayTrainWorker" in " ".join(p.cmdline())]
                assert workers, "no Ray Train worker process found"
                workers[-1].kill()
            if epoch == interrupt_after:
                os.kill(test, signal.SIGINT)

    return Reports()


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@contextlib.contextmanager
def terminal(columns: int = 160):
    """sys.stdout a terminal's (a pty) within the block, as a user's shell
    gives it; yields a list that holds its output, without ANSI codes, once
    the block ends."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    chunks: list[bytes] = []

    def read() -> None:  # drain the terminal as the job writes, or its writes block
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's last writer closed it
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stream = os.fdopen(follower, "w", encoding="utf-8", buffering=1)
    output: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdout", stream)
        patch.setenv("TERM", "xterm")
        patch.setenv("COLUMNS", str(columns))
        try:
            yield output
        finally:
            stream.close()
            reader.join(timeout=30)
            os.close(leader)
            output.append(ANSI.sub("", b"".join(chunks).decode("utf-8", "replace")))


def quietly(config, callbacks=()) -> tuple[str, str]:
    """train() with its printed lines captured: (best checkpoint, lines)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        best = train(config, callbacks)
    return best, out.getvalue()


def losses(run_dir: str) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(run_dir, HISTORY))[["epoch", "step", "loss", "val_loss"]]


def kept(run_dir: str) -> list[int]:
    return [checkpoint.read_meta(uri)["epoch"] for uri in checkpoint.in_run(run_dir)]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> str:
    """60K characters of CPython's own docs: offline and real English."""
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text(load_corpus("python-docs").text[:60_000], encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def straight(ray_local, corpus_file, runs) -> dict:
    """RUN done in one go."""
    config = make_config(None, corpus=corpus_file, storage_path=runs, name="straight", **RUN)
    reported = os.path.join(runs, "straight.reports")
    best, out = quietly(config, [reports(reported)])
    return {"config": config, "best": best, "out": out, "dir": os.path.join(runs, "straight"),
            "reports": [json.loads(line) for line in open(reported, encoding="utf-8")]}


@pytest.fixture(scope="module")
def interrupted(ray_local, corpus_file, runs) -> dict:
    """RUN as a job in a terminal: one of its two workers killed after epoch
    2, which Ray Train replaces (--max-failures 1), resuming from that
    checkpoint; Ctrl-C after epoch 5. What it showed and where it stopped."""
    config = make_config(None, corpus=corpus_file, storage_path=runs, name="cut", **RUN)
    cut = os.path.join(runs, "cut")
    handler, err = signal.getsignal(signal.SIGINT), io.StringIO()
    with terminal() as out, contextlib.redirect_stderr(err), \
            pytest.raises(SystemExit) as exit_:
        run_job(lambda: train(config, [reports(f"{cut}.reports", kill_after=(2,),
                                               interrupt_after=5)]))
    return {"config": config, "dir": cut, "out": out[0], "err": err.getvalue(),
            "status": exit_.value.code, "kept": kept(cut),
            "handler": signal.getsignal(signal.SIGINT) is handler}


def unigram_entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(c / len(text) * math.log(c / len(text)) for c in counts.values())


def test_two_workers_learn_below_unigram_entropy(straight, corpus_file):
    history = pd.read_parquet(os.path.join(straight["dir"], HISTORY))
    assert np.allclose(history.val_bpc, history.val_loss / math.log(2))  # bits per character
    assert history.val_loss.iloc[-1] < unigram_entropy(load_corpus(corpus_file).text)
    assert history.val_loss.iloc[-1] < history.val_loss.iloc[0]
    meta = checkpoint.read_meta(straight["best"])
    assert meta["metrics"]["val_loss"] == pytest.approx(history.val_loss.min())
    assert meta["corpus"]["source"].endswith("docs.txt") and meta["config"]["num_workers"] == 2
    out = straight["out"]
    assert meta["config"]["batch_size"] == 32 and "training at 32 (16 per worker)" in out
    assert meta["config"]["preset"] == "seed"
    assert out.count("epoch 8/8") == 1 and "best checkpoint: " + straight["best"] in out
    assert out.count("samples after epoch") == 1 and out.count("  T=") == 4
    model, _ = checkpoint.load_model(straight["best"])
    assert model.output_shape == (None, len(meta["vocab"]))


def test_a_run_keeps_its_best_checkpoints_and_the_latest(straight):
    """--keep-checkpoints 2: Ray Train keeps the 2 lowest val_loss and the
    latest; the best is the one train() names. Every report carries the
    optimizer steps done, as history.parquet does."""
    history = pd.read_parquet(os.path.join(straight["dir"], HISTORY))
    assert list(history.epoch) == list(range(1, 9))
    assert list(history.step) == list(range(9, 73, 9))
    two_best = set(history.sort_values("val_loss").epoch[:2])
    assert set(kept(straight["dir"])) == two_best | {8}
    best_epoch = int(history.epoch[history.val_loss.idxmin()])
    assert straight["best"] == os.path.join(straight["dir"], f"checkpoint_epoch_{best_epoch:04d}")
    assert [(r["epoch"], r["step"]) for r in straight["reports"]] == \
        list(zip(history.epoch, history.step, strict=True))
    assert [r["val_loss"] for r in straight["reports"]] == pytest.approx(list(history.val_loss))


def test_a_terminal_shows_a_progress_bar_and_ctrl_c_stops_at_a_checkpoint(interrupted):
    """A progress bar with an ETA above the epoch lines; Ctrl-C (SIGINT to
    this process, as a terminal sends it) once a checkpoint is kept: Ray
    Train aborts the run, and the job says so and how to resume,
    "interrupted", exit 130, its checkpoints kept and Ray Train's SIGINT
    handler not left behind."""
    out, run = interrupted["out"], interrupted["dir"]
    assert re.search(r"epoch \d+/8 .*\d+/9 steps .*ETA", out), out[-3000:]
    assert "epoch 1/8  loss" in out, out[-3000:]
    assert interrupted["status"] == 130, interrupted["err"]
    assert interrupted["err"].strip().splitlines()[-1] == "interrupted", interrupted["err"]
    assert out.strip().splitlines()[-1] == (f"run {run} stopped at its latest checkpoint; rerun "
                                            "the same command to resume it"), out[-3000:]
    assert interrupted["handler"]


def test_a_lost_worker_and_an_interrupted_job_both_resume_exactly(interrupted, straight):
    """The worker killed after epoch 2 is replaced and the group resumes from
    that checkpoint; the job Ctrl-C'd after epoch 5, rerun with the same
    flags, resumes from its latest kept checkpoint. Its per-epoch losses are
    those of the run done in one go."""
    out, cut = interrupted["out"], interrupted["dir"]
    assert "resumed from epoch 2" in out and out.count("epoch 2/8  loss") == 1, out[-3000:]
    assert max(interrupted["kept"]) >= 5 and len(interrupted["kept"]) <= 3
    best, out = quietly(interrupted["config"])
    resumed = re.search(r"resumed from epoch (\d+)", out)
    assert resumed and 5 <= int(resumed.group(1)) < 8, out
    assert np.abs(losses(cut).to_numpy() - losses(straight["dir"]).to_numpy()).max() <= 1e-5
    assert len(kept(cut)) <= 3
    assert os.path.basename(best) == os.path.basename(straight["best"])


def test_the_seed_decides_every_workers_model_dropout_and_windows():
    """What each worker starts from (worker.initial_model and the data plan,
    both from the run's config): one --seed gives every worker the same
    weights, dropout masks and window order, another seed others."""
    import tensorflow as tf

    from charlm.data.stream import make_plan
    from charlm.training.worker import initial_model

    def start(seed: int) -> tuple[list, np.ndarray, np.ndarray]:
        config = make_config(None, **{**RUN, "seed": seed, "batch_size": 32})
        model = initial_model(config, 30, tf.distribute.get_strategy())
        x = np.arange(4 * RUN["maxlen"]).reshape(4, -1) % 30
        plan = make_plan([5_000], config)
        return model.get_weights(), model(x, training=True).numpy(), plan.order(1)(np.arange(64))

    (w1, d1, o1), (w2, d2, o2), (w3, d3, o3) = start(11), start(11), start(12)
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2, strict=True))
    assert np.array_equal(d1, d2) and np.array_equal(o1, o2)
    assert not all(np.array_equal(a, b) for a, b in zip(w1, w3, strict=True))
    assert not np.allclose(d1, d3) and not np.array_equal(o1, o3)


def test_resuming_under_changed_model_flags_is_one_line_and_leaves_the_run(straight, capsys):
    run = straight["dir"]

    def snapshot():
        return sorted((os.path.join(d, f), os.stat(os.path.join(d, f)).st_mtime)
                      for d, _, files in os.walk(run) for f in files)

    before = snapshot()
    # RUN's own flags but the two each case sets.
    flags = ["--corpus", straight["config"].corpus, "--storage-path", os.path.dirname(run),
             "--name", "straight", *[a for k, v in RUN.items()
                                     if k not in ("units", "weight_average")
                                     for a in (flag(k), str(v))]]
    for changed, needles in [
            (["--units", "16", "--weight-average", "0"],
             ["--units 32 --weight-average 0.9", "--units 16 --weight-average 0 (off)",
              "another --name"]),
            (["--units", "32", "--weight-average", "0.9", "--optimizer", "adam"],
             ["--optimizer rmsprop", "--optimizer adam", f"--init-from {run}"]),
            (["--units", "32", "--weight-average", "0.9", "--vocab", "bytes"],
             ["vocabulary", "--vocab", "another --name"])]:
        with pytest.raises(SystemExit) as exit_:
            jobs.train.main(flags + changed)
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: run {run} "), err
        assert all(n in err[0] for n in needles), err[0]
    assert snapshot() == before
