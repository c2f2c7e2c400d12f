"""Feed rate: how many windows per second one training worker's input path
delivers, without the model, at the seed's shape and at 65-id sequences.

    .venv/bin/python -m benchmarks.feed                     # nietzsche, batch 1,024
    .venv/bin/python -m benchmarks.feed --windows 500000    # shorter

The path is train_loop's, built by the same functions: the worker's Ray
Dataset (charlm.stream.worker_stream: row numbers → Feistel order → windows
gathered by map tasks, in order), its tf.data wrapper (charlm.stream.tf_input:
generator, int32, inputs and targets split, prefetch, no autotuning), and
strategy.distribute_datasets_from_function, read one batch per call of a
tf.function as Keras's train step reads it. Each stage is also timed alone
(Ray Data only; tf.data without the strategy) to show where time goes.
Rates are counted from the first batch to the last (start-up is reported
separately as time to the first batch), after a warm-up read that starts
Ray's map-task worker processes.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from benchmarks.common import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shared copy of the seed's corpus beside the checkout (or a worktree of
# it), else charlm's own nietzsche.
DEFAULT_CORPUS = next((p for p in (os.path.join(ROOT, *[".."] * up, "shared", "data",
                                                "nietzsche.txt") for up in (1, 2))
                       if os.path.exists(p)), "nietzsche")
DEFAULT_JSON = os.path.join(ROOT, "benchmarks", "results", "feed.json")
# GPU appetite per worker (BRIEF: one H200, cuDNN LSTM): the targets.
SHAPES = {"seed": dict(maxlen=40, step=3, objective="last", target=400_000),
          "sequences": dict(maxlen=64, step=64, objective="all", target=250_000)}


def _rate(batches, per_batch: int, limit: int) -> dict:
    """Windows/s from the first batch to the last; seconds to the first."""
    t0 = time.perf_counter()
    first = None
    n = 0
    for _ in batches:
        n += 1
        if first is None:
            first = time.perf_counter()
        if n * per_batch >= limit:
            break
    end = time.perf_counter()
    return {"windows": n * per_batch, "first_batch_s": round(first - t0, 3),
            "windows_per_s": round((n - 1) * per_batch / max(end - first, 1e-9))}


def measure(shape: str, ids, batch_size: int, windows: int) -> dict:
    import tensorflow as tf

    from charlm.config import TrainConfig
    from charlm.data.stream import BLOCK_ROWS, make_plan, worker_stream
    from charlm.training.inputs import tf_input

    s = SHAPES[shape]
    config = TrainConfig(maxlen=s["maxlen"], step=s["step"], batch_size=batch_size,
                         objective=s["objective"])
    plan = make_plan([len(ids)], config)
    epochs = -(-windows // (plan.steps * batch_size)) + 1
    import ray

    parts = [ray.put(ids)]

    def stream():
        return worker_stream(parts, plan, 0, 1, epochs)

    # Warm-up: Ray starts its map-task worker processes on first use (seconds
    # each on a loaded machine); a training run pays that once, at its start.
    _rate(stream().iter_batches(batch_size=batch_size, batch_format="numpy"), batch_size,
          min(windows, 8 * BLOCK_ROWS))
    out = {"shape": shape, "maxlen": s["maxlen"], "step": s["step"], "batch_size": batch_size,
           "windows_per_epoch": plan.steps * batch_size, "target": s["target"]}
    out["ray_data"] = _rate(stream().iter_batches(batch_size=batch_size, batch_format="numpy",
                                                  prefetch_batches=2), batch_size, windows)
    out["tf_data"] = _rate(iter(tf_input(stream(), plan, s["objective"])(None)),
                           batch_size, windows)
    strategy = tf.distribute.get_strategy()
    iterator = iter(strategy.distribute_datasets_from_function(
        tf_input(stream(), plan, s["objective"])))

    @tf.function
    def step(it):
        x, y = next(it)
        return tf.reduce_sum(x[:1]) + tf.cast(tf.reduce_sum(y[:1]), x.dtype)

    def steps():
        while True:
            try:
                yield step(iterator)
            except (StopIteration, tf.errors.OutOfRangeError):
                return

    out["worker_path"] = _rate(steps(), batch_size, windows)
    out["meets_target"] = out["worker_path"]["windows_per_s"] >= s["target"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--windows", type=int, default=2_000_000,
                        help="windows read per stage and shape")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--json", default=DEFAULT_JSON)
    args = parser.parse_args()

    from charlm import runtime

    runtime.quiet(False)
    from charlm import devices
    from charlm.config import VAL_MAXLEN, TrainConfig
    from charlm.data.corpus import load_corpus
    from charlm.data.windows import split

    cpus = os.cpu_count() or 1
    runtime.init_ray(cpus_needed=cpus)
    devices.set_threads(devices.training_threads(False, cpus))  # a worker holding the node's cores
    corpus = load_corpus(args.corpus)
    train_ids, _ = split(corpus.ids, TrainConfig().val_frac, 64, VAL_MAXLEN)
    results = {"corpus": corpus.name, "characters": len(corpus.text), "cpus": cpus,
               "machine": platform.processor() or platform.machine(),
               "load_average": os.getloadavg(), "shapes": []}
    for shape in args.shapes.split(","):
        r = measure(shape, train_ids, args.batch_size, args.windows)
        results["shapes"].append(r)
        print(f"{shape:>9}: Ray Data {r['ray_data']['windows_per_s']:>10,}/s   "
              f"+ tf.data {r['tf_data']['windows_per_s']:>10,}/s   "
              f"+ distribute_datasets_from_function {r['worker_path']['windows_per_s']:>10,}/s"
              f"   (target {r['target']:,}; first batch "
              f"{r['worker_path']['first_batch_s']} s)", flush=True)
    results["load_average_after"] = os.getloadavg()
    write_json(args.json, results)
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
