"""The plain trainer: charlm's seed-preset model trained by Keras in one
process, without Ray, as the reference for what distribution costs. The
throughput benchmark runs it as its own process; it prints one JSON line per
epoch.

    .venv/bin/python -m benchmarks.plain --corpus ../shared/data/nietzsche.txt --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import time


def train(corpus_path: str, epochs: int, max_steps: int | None) -> None:
    """Runs in its own process: seed-preset model and train step from
    charlm.model, all windows in memory, Keras fit on fixed-size batches (as
    charlm's workers get them, so the step is sliced the same way, and with
    the same tf.data options), TF threads set as charlm's single worker sets
    them. One JSON line per epoch."""
    import charlm  # noqa: F401, I001  (first: selects tf-keras)
    import numpy as np
    import tensorflow as tf

    from charlm.config import VAL_MAXLEN, VAL_STEP, make_config
    from charlm.data.corpus import load_corpus
    from charlm.data.windows import split, split_xy, windows
    from charlm.model.network import build_model, compile_model, held_out_scorer
    from charlm import devices
    from charlm.training.inputs import without_autotune

    threads = devices.training_threads(False, os.cpu_count() or 1)
    devices.set_threads(threads)
    config = make_config("seed", corpus=corpus_path, epochs=epochs)
    corpus = load_corpus(corpus_path, min_chars=config.maxlen + 1)
    train_ids, val_ids = split(corpus.ids, config.val_frac, config.maxlen, VAL_MAXLEN)
    x, y = split_xy(windows(train_ids, config.maxlen, config.step), config.objective)
    x, y = np.ascontiguousarray(x, np.int32), y.astype(np.int32)
    val = windows(val_ids, VAL_MAXLEN, VAL_STEP)
    steps = len(x) // config.batch_size  # full batches only, as charlm
    steps = min(steps, max_steps) if max_steps else steps
    model = build_model(config, len(corpus.vocab))
    compile_model(model, config)
    rng = np.random.default_rng(0)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x))[:steps * config.batch_size]  # fresh order per epoch
        data = without_autotune(tf.data.Dataset.from_tensor_slices((x[order], y[order]))
                                .batch(config.batch_size, drop_remainder=True).prefetch(2))
        t0 = time.perf_counter()
        hist = model.fit(data, epochs=1, verbose=0)
        train_s = time.perf_counter() - t0
        print(json.dumps({
            "epoch": epoch, "loss": round(float(hist.history["loss"][0]), 4),
            "val_loss": round(held_out_scorer(model)(val), 4),
            "windows": steps * config.batch_size, "epoch_s": round(train_s, 3),
            "windows_per_s": round(steps * config.batch_size / train_s, 1),
            "threads": list(threads)}), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plain",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True, help="text file")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, help="cap on steps per epoch")
    args = p.parse_args(argv)
    train(args.corpus, args.epochs, args.max_steps)


if __name__ == "__main__":
    main()
