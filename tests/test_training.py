"""Real Ray Train runs on a small corpus: two workers learn and keep their
best checkpoints and the latest; a lost worker replaced and a killed job
resubmitted both resume exactly; --seed decides the run; a changed model is
refused before any worker starts. Fine-tuning: tests/test_evaluate.py."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest

import jobs.train
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


def reports(path: str, kill_after: tuple[int, ...] = ()):
    """A Ray Train UserCallback (run in Train's controller): appends rank 0's
    metrics of every report to `path`, one JSON line each, and after each
    epoch of `kill_after` is reported (its checkpoint registered by then)
    kills the last of this test's training workers with SIGKILL."""
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

    return Reports()


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


def test_a_lost_worker_and_a_killed_job_both_resume_exactly(straight, corpus_file, runs):
    """One of the two workers killed after epoch 2: Ray Train replaces the
    group (--max-failures 1), which resumes from that checkpoint. Killed
    again after epoch 5, the job fails; resubmitted with the same flags, it
    resumes from its latest kept checkpoint. Its per-epoch losses are those
    of the run done in one go."""
    config = make_config(None, corpus=corpus_file, storage_path=runs, name="cut", **RUN)
    cut = os.path.join(runs, "cut")
    out = io.StringIO()
    with pytest.raises(Exception), contextlib.redirect_stdout(out):  # noqa: B017 - whatever Ray raises
        train(config, [reports(os.path.join(runs, "cut.reports"), kill_after=(2, 5))])
    out = out.getvalue()
    assert "resumed from epoch 2" in out and out.count("epoch 2/8") == 1, out
    assert 5 in kept(cut) and len(kept(cut)) <= 3
    best, out = quietly(config)
    resumed = re.search(r"resumed from epoch (\d+)", out)
    assert resumed and int(resumed.group(1)) == 5, out
    assert np.abs(losses(cut).to_numpy() - losses(straight["dir"]).to_numpy()).max() <= 1e-5
    assert len(kept(cut)) <= 3
    assert os.path.basename(best) == os.path.basename(straight["best"])


def test_another_seed_gives_other_losses(straight, corpus_file, runs):
    """Its first epoch (its rate still warming up, as the straight run's)."""
    config = make_config(None, corpus=corpus_file, storage_path=runs, name="other",
                         **{**RUN, "seed": 12, "epochs": 1})
    quietly(config)
    other = losses(os.path.join(runs, "other"))
    assert abs(other.loss.iloc[0] - losses(straight["dir"]).loss.iloc[0]) > 1e-4


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
