"""Held-out scoring's cost, side by side in one run: nietzsche's held-out
windows (the seed's: the character after each 40-character window, every 3
characters, from a zero state) scored by charlm's scorer for the seed's model
(LSTM(128)) and the quality preset's (2 x LSTM(256)), at several scoring
batches and precisions, with the TensorFlow threads of a one-worker run on
2 cores.

    .venv/bin/python -m benchmarks.scoring --json benchmarks/results/scoring.json

Timing uses random weights (the cost does not depend on them): every
(model, precision, batch) is scored `--repeats` times, interleaved, and the
median kept. The peak memory each scoring batch adds is measured in a child
process per configuration (the peak RSS over the scoring, reset just before
it, minus the RSS before it).
The precision check trains the quality preset for `--train-steps` steps (fp32,
its own recipe) and scores the same weights in every precision: bf16 scoring
is acceptable where it stays within 1e-3 of fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks.common import DEFAULT_CORPUS, ROOT, machine, write_json

MODELS = {"seed": ("seed", {}), "quality": ("quality", {})}


def _setup(threads: int):
    from charlm import devices, runtime

    runtime.quiet(False)
    devices.set_threads(devices.training_threads(False, threads))


def heldout(corpus_path: str):
    """The held-out windows training scores, and the corpus."""
    from charlm.config import VAL_MAXLEN, VAL_STEP, TrainConfig
    from charlm.data.corpus import load_corpus
    from charlm.data.windows import split, windows

    corpus = load_corpus(corpus_path)
    config = TrainConfig()
    _, val = split(corpus.ids, config.val_frac, config.maxlen, VAL_MAXLEN)
    return windows(val, VAL_MAXLEN, VAL_STEP), corpus


def model_for(name: str, vocab: int, precision: str):
    from charlm.config import make_config
    from charlm.model.network import build_model

    preset, overrides = MODELS[name]
    config = make_config(preset, **overrides, precision=precision)
    return build_model(config, vocab), config


def timing(args: argparse.Namespace) -> list[dict]:
    import numpy as np
    import tensorflow as tf

    from charlm.model.network import held_out_scorer

    val, corpus = heldout(args.corpus)
    rows = []
    for name in args.models.split(","):
        tf.keras.utils.set_random_seed(0)
        base, _ = model_for(name, len(corpus.vocab), "fp32")
        scorers = {}
        for precision in args.precisions.split(","):
            model, _ = model_for(name, len(corpus.vocab), precision)
            model.set_weights(base.get_weights())
            for batch in map(int, args.batches.split(",")):
                score = held_out_scorer(model, batch_size=batch)
                score(val[:batch + 7])  # trace: a full batch and a remainder
                scorers[precision, batch] = score
        seconds = {key: [] for key in scorers}
        values = {}
        for _ in range(args.repeats):
            for key, score in scorers.items():
                t0 = time.perf_counter()
                values[key] = score(val)
                seconds[key].append(time.perf_counter() - t0)
        fp32 = values.get(("fp32", min(b for _, b in scorers)))
        for (precision, batch), times in seconds.items():
            row = {"model": name, "precision": precision, "batch": batch,
                   "windows": len(val), "median_s": round(statistics.median(times), 3),
                   "times_s": [round(t, 3) for t in times],
                   "val_loss_random_weights": round(values[precision, batch], 6),
                   "diff_vs_fp32": None if fp32 is None else
                   float(np.format_float_positional(abs(values[precision, batch] - fp32), 3))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def memory_child(spec: dict) -> None:
    """One configuration's scoring peak, in its own process."""
    _setup(spec["threads"])
    from charlm.model.network import held_out_scorer

    val, corpus = heldout(spec["corpus"])
    model, _ = model_for(spec["model"], len(corpus.vocab), spec["precision"])
    score = held_out_scorer(model, batch_size=spec["batch"])
    score(val[:3])
    score(val[:5])  # traced for any batch shape
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current RSS: earlier peaks do not hide it
    score(val)
    print(json.dumps({**{k: spec[k] for k in ("model", "precision", "batch")},
                      "peak_added_mb": round((_status_kb("VmHWM") - before) / 1024, 1)}),
          flush=True)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))


def memory(args: argparse.Namespace) -> list[dict]:
    rows = []
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for name in args.models.split(","):
        for precision in args.precisions.split(","):
            for batch in map(int, args.batches.split(",")):
                spec = {"model": name, "precision": precision, "batch": batch,
                        "corpus": args.corpus, "threads": args.threads}
                out = subprocess.run([sys.executable, "-m", "benchmarks.scoring", "--memory-child",
                                      json.dumps(spec)], env=env, cwd=ROOT, check=True,
                                     stdout=subprocess.PIPE, text=True).stdout
                row = json.loads(out.strip().splitlines()[-1])
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def accuracy(args: argparse.Namespace) -> dict:
    """The quality preset trained briefly (fp32), its averaged weights scored
    in every precision at the smallest batch."""
    import numpy as np
    import tensorflow as tf

    from charlm.config import VAL_MAXLEN, make_config
    from charlm.data.windows import split, split_xy, window_starts
    from charlm.model.network import averaged, build_model, compile_model, held_out_scorer
    from charlm.training.inputs import without_autotune

    val, corpus = heldout(args.corpus)
    tf.keras.utils.set_random_seed(args.seed)
    config = make_config("quality")
    train_ids, _ = split(corpus.ids, config.val_frac, config.maxlen, VAL_MAXLEN)
    starts = window_starts(len(train_ids), config.maxlen, config.step)
    model = build_model(config, len(corpus.vocab))
    compile_model(model, config, total_steps=config.epochs * (len(starts) // config.batch_size))
    ids = tf.constant(train_ids.astype(np.int32))
    offsets = tf.range(config.maxlen + 1, dtype=tf.int64)
    data = without_autotune(
        tf.data.Dataset.from_tensor_slices(starts).shuffle(len(starts), seed=args.seed).repeat()
        .batch(config.batch_size, drop_remainder=True)
        .map(lambda s: split_xy(tf.gather(ids, s[:, None] + offsets), config.objective))
        .prefetch(2))
    t0 = time.perf_counter()
    history = model.fit(data, steps_per_epoch=args.train_steps, epochs=1, verbose=0)
    trained_s = time.perf_counter() - t0
    batch = min(map(int, args.batches.split(",")))
    scores = {}
    with averaged(model):
        weights = model.get_weights()
    for precision in args.precisions.split(","):
        scored, _ = model_for("quality", len(corpus.vocab), precision)
        scored.set_weights(weights)
        scores[precision] = held_out_scorer(scored, batch_size=batch)(val)
    result = {"train_steps": args.train_steps, "train_s": round(trained_s, 1),
              "loss": round(float(history.history["loss"][-1]), 4),
              "val_loss": {p: round(v, 6) for p, v in scores.items()},
              "diff_vs_fp32": {p: float(f"{abs(v - scores['fp32']):.3g}")
                               for p, v in scores.items() if "fp32" in scores}}
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="seed,quality")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--batches", default="256,1024,4096")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=300,
                   help="quality preset steps before the precision check (0: skip it)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    p.add_argument("--corpus", default=DEFAULT_CORPUS)
    p.add_argument("--threads", type=int, default=2, help="CPUs of the worker (as one worker)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=os.path.join(ROOT, "out", "benchmarks", "scoring.json"))
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        memory_child(json.loads(args.memory_child))
        return
    _setup(args.threads)
    results: dict = {"args": vars(args), "machine": machine(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results["timing"] = timing(args)
    write_json(args.json, results)
    if args.train_steps:
        results["accuracy"] = accuracy(args)
        write_json(args.json, results)
    if not args.no_memory:
        results["memory"] = memory(args)
        write_json(args.json, results)
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
