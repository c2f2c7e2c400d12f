"""jobs.evaluate end to end on a local Ray: tiny runs trained in-process (the
session's word_run, one fine-tuned from it, which beats the same training from
scratch), scored by a real actor on a directory of texts, read back with
pandas."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
from raycluster import run_main

from charlm.config import TrainConfig, make_config
from charlm.data.corpus import BYTES_VOCAB, encode
from charlm.data.windows import holdout_start, window_count, windows
from charlm.errors import CharlmError
from charlm.evaluation.runs import best_checkpoint
from charlm.evaluation.score import Scorer, ids_of
from charlm.model import checkpoint
from charlm.training.trainer import train
from jobs import evaluate as job

# What the fine-tuned and scratch runs and the byte-level checkpoint take from
# word_run's config.
SHAPE = ("units", "maxlen", "step", "batch_size", "objective", "learning_rate", "clipnorm")
# The new text: other words, with letters the first corpus never had.
NEW_WORDS = "über café naïve façade déjà smörgåsbord piñata crème brûlée jalapeño".split()


@pytest.fixture(scope="module")
def texts(corpus: str, tmp_path_factory) -> dict[str, str]:
    """A directory of two texts: the runs' first corpus, and the new text."""
    folder = tmp_path_factory.mktemp("texts")
    (folder / "a.txt").write_text(open(corpus, encoding="utf-8").read(), encoding="utf-8")
    new = " ".join(NEW_WORDS[(i * 3) % len(NEW_WORDS)] for i in range(2500))
    (folder / "b.txt").write_text(new, encoding="utf-8")
    return {"dir": str(folder), "a": str(folder / "a.txt"), "b": str(folder / "b.txt")}


def bytes_checkpoint(directory, text: str, shape: dict) -> str:
    """A byte-level checkpoint, fitted on `text` a few steps in-process."""
    from charlm.model.network import build_model, compile_model

    config = TrainConfig(vocab="bytes", epochs=1, **shape)
    model = build_model(config, len(BYTES_VOCAB))
    compile_model(model, config)
    x = windows(encode(text, BYTES_VOCAB).astype(np.int32), config.maxlen, config.step)
    model.fit(x[:, :-1], x[:, 1:], batch_size=32, epochs=1, steps_per_epoch=10, verbose=0)
    path = os.path.join(directory, "checkpoint_epoch_0001")
    os.makedirs(path)
    checkpoint.save(path, model, {"format": checkpoint.FORMAT, "run": "bytes",
                                  "vocab": BYTES_VOCAB, "config": config.to_dict(), "epoch": 1,
                                  "metrics": {"loss": 3.0, "val_loss": 3.0, "val_bpc": 4.3}})
    return path


@pytest.fixture(scope="module")
def runs(word_run: str, texts: dict[str, str], tmp_path_factory) -> dict[str, str]:
    """word_run (on the first text) as the base, fine-tuned on the new text;
    the same training from scratch beside it."""
    base = checkpoint.best_in_run(word_run)
    config = checkpoint.read_meta(base)["config"]
    shape = {k: config[k] for k in SHAPE}
    storage = str(tmp_path_factory.mktemp("runs"))
    common = dict(corpus=texts["b"], storage_path=storage, epochs=2, **shape)
    tuned = train(make_config(None, name="tuned", init_from=word_run, **common))
    scratch = train(make_config(None, name="scratch", **common))
    made = bytes_checkpoint(str(tmp_path_factory.mktemp("bytes")),
                            open(texts["b"], encoding="utf-8").read(), shape)
    return {"base_run": word_run, "tuned_run": os.path.join(storage, "tuned"), "base": base,
            "tuned": tuned, "scratch": scratch, "bytes": made, "common": common}


def run_job(*argv: str) -> tuple[int, str, str]:
    """jobs.evaluate in-process: (exit status, stdout, stderr)."""
    return run_main(job.main, *argv)


@pytest.fixture(scope="module")
def scored(runs: dict[str, str], texts: dict[str, str], tmp_path_factory) -> dict:
    """The three checkpoints on both texts' held-out tails, in one job, on one
    actor that loads each in turn (each actor is a process that imports
    TensorFlow; generation's tests run two)."""
    output = str(tmp_path_factory.mktemp("eval") / "scores")
    status, out, err = run_job(
        "--checkpoint", runs["base_run"], "--checkpoint", runs["tuned"],
        "--checkpoint", runs["bytes"], "--corpus", texts["dir"], "--output", output,
        "--concurrency", "1")
    assert status == 0, (out, err)
    return {"output": output, "out": out, "frame": pd.read_parquet(output)}


def row(frame: pd.DataFrame, uri: str, text: str) -> pd.Series:
    picked = frame[(frame["checkpoint"] == uri) & (frame["file"] == text)]
    assert len(picked) == 1, frame[["checkpoint", "file"]]
    return picked.iloc[0]


def test_held_out_score_is_the_val_loss_training_recorded(scored: dict, runs, texts) -> None:
    base = row(scored["frame"], runs["base"], texts["a"])
    assert base["scored"] == window_count(len(open(texts["a"]).read()) -
                                          holdout_start(len(open(texts["a"]).read()), 0.1), 40, 3)
    assert base["skipped"] == 0 and base["unit"] == "char"
    assert (base["context_mode"], base["window"], base["step"]) == ("window", 40, 3)
    recorded = checkpoint.read_meta(runs["base"])["metrics"]["val_loss"]
    assert base["loss"] == pytest.approx(recorded, abs=1e-4)
    assert base["bpc"] == pytest.approx(recorded / math.log(2), abs=1e-4)


def test_fine_tuned_checkpoint_beats_its_base_on_the_new_text(scored: dict, runs,
                                                             texts) -> None:
    tuned = row(scored["frame"], runs["tuned"], texts["b"])
    base = row(scored["frame"], runs["base"], texts["b"])
    assert tuned["loss"] < base["loss"] - 0.3, (tuned["loss"], base["loss"])
    assert tuned["skipped"] == 0


def test_fine_tuning_beats_training_from_scratch(runs) -> None:
    """--init-from: the same epochs on the new text, whose accented letters
    the base never saw, end lower than from scratch; each new character has
    a fresh row, every old one its old row; another shape is refused."""
    def val_loss(ckpt: str) -> float:
        return checkpoint.read_meta(ckpt)["metrics"]["val_loss"]

    assert val_loss(runs["tuned"]) < val_loss(runs["scratch"]) - 0.2, \
        (val_loss(runs["tuned"]), val_loss(runs["scratch"]))
    meta = checkpoint.read_meta(runs["tuned"])
    init = meta["init_from"]
    old_vocab = checkpoint.read_meta(runs["base"])["vocab"]
    assert init["checkpoint"] == runs["base"] and "é" in init["new_chars"]
    assert init["new_chars"] == "".join(c for c in meta["vocab"] if c not in old_vocab)
    assert [old_vocab[i] if i >= 0 else None for i in init["old_ids"]] == \
        [c if c in old_vocab else None for c in meta["vocab"]]

    units = runs["common"]["units"]
    with pytest.raises(CharlmError, match=f"--units {units} --layers 1"):
        train(make_config(None, name="bad", init_from=runs["base"],
                          **{**runs["common"], "units": units // 2}))


def test_characters_outside_the_vocabulary_are_skipped_and_counted(scored: dict, runs,
                                                                   texts) -> None:
    text = open(texts["b"], encoding="utf-8").read()
    tail = text[holdout_start(len(text), 0.1):]
    vocab = checkpoint.read_meta(runs["base"])["vocab"]
    unknown = sum(c not in vocab for c in tail)
    base = row(scored["frame"], runs["base"], texts["b"])
    assert unknown > 0 and base["skipped"] == unknown
    assert base["scored"] == window_count(len(tail) - unknown, 40, 3)
    assert np.isfinite(base["loss"])
    assert f"{runs['base']}: loss " in scored["out"] and " skipped outside its vocabulary" in \
        scored["out"]


def test_bytes_checkpoint_scores_utf8_text_per_byte(scored: dict, runs, texts) -> None:
    made = row(scored["frame"], runs["bytes"], texts["b"])
    data = open(texts["b"], encoding="utf-8").read().encode("utf-8")
    assert made["unit"] == "byte" and made["skipped"] == 0
    assert made["scored"] == window_count(len(data) - holdout_start(len(data), 0.1), 40, 3)
    assert 0 < made["loss"] < math.log(256)
    assert scored["out"].rstrip().endswith(f"wrote 6 rows to {scored['output']}")


def test_stateful_scoring_carries_the_state_from_the_first_character(runs) -> None:
    """Every next character, the state carried across calls, equals the
    model's own predictions over the whole text in one pass."""
    import tensorflow as tf

    model, meta = checkpoint.load_model(runs["base"])
    whole, _ = checkpoint.load_model(runs["base"], sequences=True)
    ids = ids_of("the lazy dog jumps over the quick brown fox", meta["vocab"])
    probs = whole(tf.constant(ids[None, :-1]))[0].numpy()
    expected = -np.log(np.maximum(probs[np.arange(len(ids) - 1), ids[1:]], 1e-7)).sum()
    scorer = Scorer(model)
    assert scorer.count(ids, 1) == len(ids) - 1
    assert scorer.stateful(ids, chunk=7) == pytest.approx(expected, rel=1e-5)


def test_a_directory_of_runs_stands_for_its_best_checkpoint(runs, tmp_path) -> None:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for name in ("base", "tuned"):
        os.symlink(runs[f"{name}_run"], sweep / name)
    losses = {uri: checkpoint.read_meta(uri)["metrics"]["val_loss"]
              for uri in (runs["base"], runs["tuned"])}
    best = best_checkpoint(str(sweep))
    assert os.path.basename(best) == os.path.basename(min(losses, key=losses.get))


def test_existing_output_is_refused_and_kept(scored: dict, runs, texts) -> None:
    before = sorted(os.listdir(scored["output"]))
    status, out, err = run_job("--checkpoint", runs["base"], "--corpus", texts["a"],
                               "--output", scored["output"])
    assert status == 2 and err.startswith("error: --output ") and "--overwrite" in err
    assert err.count("\n") == 1 and sorted(os.listdir(scored["output"])) == before


@pytest.mark.parametrize("flags, message", [
    (["--stride", "0"], "--stride is 0"),
    (["--corpus", "/no/such/text.txt"], "corpus /no/such/text.txt does not exist"),
    (["--checkpoint", "/no/such/run"], "/no/such/run does not exist"),
])
def test_bad_input_is_one_line_and_writes_nothing(flags, message, runs, texts,
                                                  tmp_path) -> None:
    output = tmp_path / "scores"
    status, out, err = run_job("--checkpoint", runs["base"], "--corpus", texts["a"],
                               "--output", str(output), *flags)
    assert status == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not output.exists() and os.listdir(tmp_path) == []
