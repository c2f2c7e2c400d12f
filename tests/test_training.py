"""Real Ray Train runs on a small corpus: two workers learn, a run keeps its
best checkpoints and the latest, a killed job resubmitted and a lost worker
replaced both resume exactly, --seed decides the run, a changed model is
refused before any worker starts, and --init-from fine-tunes."""

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
from charlm.errors import CharlmError
from charlm.model import checkpoint
from charlm.training.metrics import HISTORY
from charlm.training.trainer import train

TINY = dict(objective="all", maxlen=32, step=32, batch_size=32, units=16, learning_rate=0.01,
            clipnorm=1.0)
# One worker, everything random and everything stateful: data position,
# dropout's generator, optimizer slots and step, a rate that rises with the
# step all run long, the weights' average; 8 epochs of 4 steps, the 2 best
# checkpoints kept.
SINGLE = dict(num_workers=1, epochs=8, max_steps=4, keep_checkpoints=2, seed=11, dropout=0.3,
              warmup_steps=40, weight_average=0.9, **TINY)
# Two workers, an odd batch (rounded down to 32), averaged weights, whole
# epochs: enough to learn.
TWO = dict(num_workers=2, epochs=2, max_failures=1, seed=3, weight_average=0.9,
           sample_every=2, **{**TINY, "units": 32, "batch_size": 33})


def reports(path: str, kill_after: int | None = None, kill: slice = slice(None)):
    """A Ray Train UserCallback (run in Train's controller): appends rank 0's
    metrics of every report to `path`, one JSON line each, and after epoch
    `kill_after`'s report (its checkpoint registered by then) kills the
    `kill` slice of this test's training workers with SIGKILL."""
    import psutil
    from ray.train import UserCallback

    test = os.getpid()

    class Reports(UserCallback):  # defined here: pickled whole into the controller
        killed = False

        def after_report(self, run_context, metrics, checkpoint):
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(metrics[0]) + "\n")
            if metrics[0]["epoch"] == kill_after and not self.killed:
                self.killed = True
                workers = [p for p in psutil.Process(test).children(recursive=True)
                           if "RayTrainWorker" in " ".join(p.cmdline())]
                assert workers[kill], "no Ray Train worker process found"
                for p in workers[kill]:
                    p.kill()

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
def single(ray_local, corpus_file, runs) -> dict:
    config = make_config(None, corpus=corpus_file, storage_path=runs, name="single", **SINGLE)
    reported = os.path.join(runs, "single.reports")
    best, out = quietly(config, [reports(reported)])
    return {"config": config, "best": best, "out": out, "dir": os.path.join(runs, "single"),
            "reports": [json.loads(line) for line in open(reported, encoding="utf-8")]}


@pytest.fixture(scope="module")
def two(ray_local, corpus_file, runs) -> dict:
    config = make_config(None, corpus=corpus_file, storage_path=runs, name="two", **TWO)
    best, out = quietly(config)
    return {"config": config, "best": best, "out": out, "dir": os.path.join(runs, "two")}


def test_a_run_keeps_its_best_checkpoints_and_the_latest(single):
    """--keep-checkpoints 2: Ray Train keeps the 2 lowest val_loss and the
    latest; the best is the one train() names. Every report carries the
    optimizer steps done, as history.parquet does."""
    history = pd.read_parquet(os.path.join(single["dir"], HISTORY))
    assert list(history.epoch) == list(range(1, 9)) and list(history.step) == list(range(4, 33, 4))
    two_best = set(history.sort_values("val_loss").epoch[:2])
    assert set(kept(single["dir"])) == two_best | {8}
    best_epoch = int(history.epoch[history.val_loss.idxmin()])
    assert single["best"] == os.path.join(single["dir"], f"checkpoint_epoch_{best_epoch:04d}")
    assert "best checkpoint: " + single["best"] in single["out"]
    assert checkpoint.read_meta(single["best"])["config"]["preset"] == "seed"
    assert [(r["epoch"], r["step"]) for r in single["reports"]] == \
        list(zip(history.epoch, history.step, strict=True))
    assert [r["val_loss"] for r in single["reports"]] == pytest.approx(list(history.val_loss))


def test_a_killed_job_resubmitted_resumes_exactly_from_what_is_kept(single, corpus_file, runs):
    """The job fails when its only worker is killed after epoch 3 (no
    --max-failures); resubmitted with the same flags, it resumes from its
    latest kept checkpoint and gives the per-epoch losses of the run done in
    one go."""
    config = make_config(None, corpus=corpus_file, storage_path=runs, name="cut", **SINGLE)
    cut = os.path.join(runs, "cut")
    with pytest.raises(Exception):  # noqa: B017 - whatever Ray raises for a dead worker
        quietly(config, [reports(os.path.join(runs, "cut.reports"), kill_after=3)])
    assert 3 in kept(cut) and len(kept(cut)) <= 3
    best, out = quietly(config)
    resumed = re.search(r"resumed from epoch (\d+)", out)
    assert resumed and 3 <= int(resumed.group(1)) < 8, out
    assert np.abs(losses(cut).to_numpy() - losses(single["dir"]).to_numpy()).max() <= 1e-5
    assert len(kept(cut)) <= 3
    assert os.path.basename(best) == os.path.basename(single["best"])


def test_another_seed_gives_other_losses(single, corpus_file, runs):
    """Its first epoch (its rate still warming up, as the 8-epoch run's)."""
    config = make_config(None, corpus=corpus_file, storage_path=runs, name="other",
                         **{**SINGLE, "seed": 12, "epochs": 1})
    quietly(config)
    other = losses(os.path.join(runs, "other"))
    assert abs(other.loss.iloc[0] - losses(single["dir"]).loss.iloc[0]) > 1e-4


def test_resuming_under_changed_model_flags_is_one_line_and_leaves_the_run(single, capsys):
    run = single["dir"]

    def snapshot():
        return sorted((os.path.join(d, f), os.stat(os.path.join(d, f)).st_mtime)
                      for d, _, files in os.walk(run) for f in files)

    before = snapshot()
    flags = ["--corpus", single["config"].corpus, "--storage-path", os.path.dirname(run),
             "--name", "single", "--objective", "all", "--maxlen", "32", "--step", "32",
             "--batch-size", "32", "--max-steps", "4", "--epochs", "8", "--dropout", "0.3",
             "--warmup-steps", "40", "--seed", "11"]
    for changed, needles in [
            (["--units", "32", "--weight-average", "0"],
             ["--units 16 --weight-average 0.9", "--units 32 --weight-average 0 (off)",
              "another --name"]),
            (["--units", "16", "--weight-average", "0.9", "--optimizer", "adam"],
             ["--optimizer rmsprop", "--optimizer adam", f"--init-from {run}"]),
            (["--units", "16", "--weight-average", "0.9", "--vocab", "bytes"],
             ["vocabulary", "--vocab", "another --name"])]:
        with pytest.raises(SystemExit) as exit_:
            jobs.train.main(flags + changed)
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: run {run} "), err
        assert all(n in err[0] for n in needles), err[0]
    assert snapshot() == before


def unigram_entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(c / len(text) * math.log(c / len(text)) for c in counts.values())


def test_two_workers_learn_below_unigram_entropy(two, corpus_file):
    history = pd.read_parquet(os.path.join(two["dir"], HISTORY))
    assert list(history.epoch) == [1, 2]
    assert np.allclose(history.val_bpc, history.val_loss / math.log(2))  # bits per character
    assert history.val_loss.iloc[-1] < unigram_entropy(load_corpus(corpus_file).text)
    assert history.val_loss.iloc[-1] < history.val_loss.iloc[0]
    meta = checkpoint.read_meta(two["best"])
    assert meta["metrics"]["val_loss"] == pytest.approx(history.val_loss.min())
    assert meta["corpus"]["source"].endswith("docs.txt") and meta["config"]["num_workers"] == 2
    assert meta["config"]["batch_size"] == 32 and "training at 32 (16 per worker)" in two["out"]
    out = two["out"]
    assert out.count("epoch 2/2") == 1 and "best checkpoint: " + two["best"] in out
    assert out.count("samples after epoch") == 1 and out.count("  T=") == 4
    model, _ = checkpoint.load_model(two["best"])
    assert model.output_shape == (None, len(meta["vocab"]))


def test_two_workers_reproduce_a_run_through_a_worker_restart(two, corpus_file, runs):
    """One of two workers killed after epoch 1: Ray Train replaces the group
    (--max-failures 1), which resumes from that checkpoint and gives the
    per-epoch losses of the same run done in one go."""
    config = make_config(None, corpus=corpus_file, storage_path=runs, name="restarted", **TWO)
    _, out = quietly(config, [reports(os.path.join(runs, "restarted.reports"), kill_after=1,
                                      kill=slice(-1, None))])
    assert "resumed from epoch 1" in out and out.count("epoch 1/2") == 1, out
    restarted = losses(os.path.join(runs, "restarted"))
    assert np.abs(restarted.to_numpy() - losses(two["dir"]).to_numpy()).max() <= 1e-5


def test_fine_tuning_beats_training_from_scratch(two, tmp_path, runs):
    """The two-worker run fine-tuned for one epoch on another part of the docs,
    in which '.' became a character it never saw, does better than one epoch
    from scratch; the new character has its own fresh row."""
    docs = load_corpus("python-docs").text
    new = tmp_path / "new.txt"
    new.write_text(docs[200_000:230_000].replace(".", "•"), encoding="utf-8")
    common = dict(corpus=str(new), storage_path=runs, epochs=1, **{**TINY, "units": 32})
    base = checkpoint.best_in_run(two["dir"])
    tuned, _ = quietly(make_config(None, name="tuned", init_from=two["dir"], **common))
    scratch, _ = quietly(make_config(None, name="scratch", **common))

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
        train(make_config(None, name="bad", init_from=base, **{**common, "units": 16}))
