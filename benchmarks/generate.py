"""Generation speed: the seed's one-`predict`-per-character loop against
charlm's compiled kernels (window and stateful context), on one checkpoint.

    .venv/bin/python benchmarks/generate.py                     # trains a quick model first
    .venv/bin/python benchmarks/generate.py --checkpoint ~/charlm/runs/nietzsche-lstm

Issue 12's yardstick, in one invocation: a seed-sized checkpoint (LSTM(128),
maxlen 40), 4,096 requests (1,024 seeds × the seed's 4 temperatures) × 400
characters. Measures the seed loop (as in seed_reference.py) on
--baseline-chars characters; each mode's kernel in this process on the job's
work (every request, in batches of the job's default size, or
--batch-size); and each mode as `python -m jobs.generate` in a fresh process,
as a user runs it: start-up (launch to the first batch's start; also to its
end), generating throughput (first batch's start to last batch's end, from
the rows' generated_at and seconds) and the whole job (launch to exit). Each
kernel and job runs --repeats times and the medians are reported. Prints a
table against the issue's targets, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from charlm import runtime  # noqa: E402  (charlm first: it selects tf-keras)
from charlm.model import checkpoint  # noqa: E402

TEMPERATURES = [0.2, 0.5, 1.0, 1.2]  # the seed's


def train_quick(corpus_spec: str, steps: int, directory: str) -> str:
    """A seed-sized LSTM(128), maxlen 40, trained briefly; returns its run directory."""
    import numpy as np
    import tensorflow as tf

    from charlm.config import TrainConfig
    from charlm.data.corpus import load_corpus
    from charlm.data.windows import holdout_start, split_xy, windows
    from charlm.model.network import build_model, compile_model

    corpus = load_corpus(corpus_spec)
    config = TrainConfig(corpus=corpus_spec, objective="all", maxlen=40, step=40,
                         batch_size=64, learning_rate=0.005, clipnorm=1.0)
    model = build_model(config, len(corpus.vocab))
    compile_model(model, config)
    train = corpus.ids[:holdout_start(len(corpus.ids), config.val_frac)].astype(np.int32)
    x, y = split_xy(windows(train, config.maxlen, config.step), "all")
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).repeat().batch(64)
    started = time.perf_counter()
    history = model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    loss = float(history.history["loss"][-1])
    print(f"trained {steps} steps in {time.perf_counter() - started:.0f} s, loss {loss:.3f}",
          flush=True)
    path = os.path.join(directory, "bench-lstm", "checkpoint_epoch_0000")
    os.makedirs(path)
    checkpoint.save(path, model, {
        "format": 1, "run": "bench-lstm", "vocab": corpus.vocab, "config": config.to_dict(),
        "corpus": {**corpus.info(), "seed_text": corpus.text[:config.maxlen], "heldout_seeds": []},
        "epoch": 0, "metrics": {"loss": loss, "val_loss": loss}})
    return os.path.dirname(path)


def seed_loop(model, vocab: str, sentence: str, chars: int) -> float:
    """seed_reference.py's generation, verbatim but for the model's id input:
    its own one-hot Sequential model gets our weights. Returns chars/s."""
    import numpy as np
    import tensorflow as tf

    maxlen = len(sentence)
    char_indices = {c: i for i, c in enumerate(vocab)}
    indices_char = dict(enumerate(vocab))
    seed_model = tf.keras.Sequential([
        tf.keras.Input(shape=(maxlen, len(vocab))),
        tf.keras.layers.LSTM(model.get_layer("lstm_0").units),
        tf.keras.layers.Dense(len(vocab), activation="softmax"),
    ])
    seed_model.set_weights(model.get_weights())

    def sample(preds, temperature=1.0):
        preds = np.asarray(preds).astype("float64")
        preds = np.log(preds) / temperature
        exp_preds = np.exp(preds)
        preds = exp_preds / np.sum(exp_preds)
        probas = np.random.multinomial(1, preds, 1)
        return np.argmax(probas)

    per_temperature = chars // len(TEMPERATURES)
    started = time.perf_counter()
    for temperature in TEMPERATURES:
        generated, current = "", sentence
        for _ in range(per_temperature):
            x_pred = np.zeros((1, maxlen, len(vocab)))
            for t, char in enumerate(current):
                x_pred[0, t, char_indices[char]] = 1.0
            preds = seed_model.predict(x_pred, verbose=0)[0]
            next_char = indices_char[sample(preds, temperature)]
            current = current[1:] + next_char
            generated += next_char
    return per_temperature * len(TEMPERATURES) / (time.perf_counter() - started)


def kernel(meta: dict, weights, mode: str, requests: int, length: int,
           batch_size: int) -> float:
    """chars/s of the compiled kernel alone on the job's work: every request,
    in batches of the job's size, in this process (after a warm-up trace)."""
    import numpy as np

    from charlm.model.generator import Generator

    generate = Generator(weights, meta["config"]["maxlen"], mode)
    rng = np.random.default_rng(0)
    seeds = [rng.integers(0, len(meta["vocab"]), 40) for _ in range(requests)]
    temperature = np.resize(TEMPERATURES, requests)
    generate(seeds[:2], temperature[:2], np.arange(2), 2)
    started = time.perf_counter()
    for i in range(0, requests, batch_size):
        generate(seeds[i:i + batch_size], temperature[i:i + batch_size],
                 np.arange(i, min(i + batch_size, requests)), length)
    return requests * length / (time.perf_counter() - started)


def job(run: str, mode: str, requests: int, length: int, output: str,
        batch_size: int | None) -> dict:
    """`python -m jobs.generate` as a user runs it, in a fresh process: start-up
    (launch to the first batch's start, and to its end), generating throughput
    (first batch's start to last batch's end) and the whole job (launch to exit),
    from the rows' generated_at and seconds."""
    import subprocess

    import pandas as pd

    argv = [sys.executable, "-m", "jobs.generate", "--checkpoint", run, "--output", output,
            "--overwrite", "--num-seeds", str(requests // len(TEMPERATURES) - 1),
            "--temperatures", ",".join(map(str, TEMPERATURES)), "--length", str(length),
            "--context-mode", mode]
    if batch_size is not None:  # else the job's default, as a user runs it
        argv += ["--batch-size", str(batch_size)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("RAY_ADDRESS", None)
    launched = time.time()
    subprocess.run(argv, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    exited = time.time()
    df = pd.read_parquet(output)
    chars = len(df) * length
    batches = df.groupby("generated_at").agg(rows=("seconds", "size"),
                                             seconds=("seconds", "sum"))
    ends = batches.index.map(lambda t: t.timestamp()).to_numpy()
    starts = ends - batches["seconds"].to_numpy()
    return {"rows": len(df), "batches": len(batches),
            "batch_size": int(batches["rows"].max()),
            "startup_s": starts.min() - launched,
            "first_batch_done_s": ends.min() - launched,
            "generating_s": ends.max() - starts.min(),
            "generating_chars_per_s": chars / (ends.max() - starts.min()),
            "whole_s": exited - launched, "chars_per_s": chars / (exited - launched),
            "mean_logprob": df.groupby("temperature")["mean_logprob"].mean().round(4)
            .to_dict()}


def median_run(runs: list[dict]) -> dict:
    """Each timing's median over the runs (this machine's run-to-run spread is
    ±15%), the rest from the last run, and every run kept."""
    out = dict(runs[-1])
    for key in ("startup_s", "first_batch_done_s", "generating_s", "generating_chars_per_s",
                "whole_s", "chars_per_s"):
        out[key] = statistics.median(r[key] for r in runs)
    out["runs"] = [{k: v for k, v in r.items() if k != "mean_logprob"} for r in runs]
    return out


def identical_share(window: str, stateful: str) -> dict:
    """Per temperature, the share of requests (same RNG seed in both modes)
    whose window and stateful texts are identical."""
    import pandas as pd

    key = ["seed_text", "temperature", "sample_index"]
    both = pd.read_parquet(window).merge(pd.read_parquet(stateful), on=key)
    return (both["text_x"] == both["text_y"]).groupby(both["temperature"]).mean().to_dict()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="run or checkpoint directory (default: train one)")
    p.add_argument("--corpus", default=os.path.join(ROOT, "..", "shared", "data",
                                                    "nietzsche.txt"))
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--baseline-chars", type=int, default=200)
    p.add_argument("--requests", type=int, default=4096)
    p.add_argument("--length", type=int, default=400)
    p.add_argument("--batch-size", type=int,
                   help="the job's --batch-size, and the kernel's batches (default: the "
                        "job's own default for --requests on one actor)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each kernel and job; the medians are reported")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1,
                   help="TF threads for the kernels here (the job's actor takes the "
                        "machine's cores by default)")
    p.add_argument("--json", default=os.path.join(ROOT, "out", "benchmarks", "generate.json"))
    args = p.parse_args()
    runtime.quiet(False)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.cpus)
    tf.config.threading.set_inter_op_parallelism_threads(args.cpus)
    with tempfile.TemporaryDirectory(prefix="charlm-bench-") as work:
        results = measure(args, work)
    show(results)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {args.json}")


# Window mode runs maxlen LSTM steps per character: 2 x units x 4 units
# multiply-adds each (the input side is a row gather). The ceiling for
# LSTM(128), maxlen 40 on this machine's 2 cores: about 36,000 chars/s.
WINDOW_CEILING = 36_000


def measure(args: argparse.Namespace, work: str) -> dict:
    from charlm.generation.job import batch_size_for
    from charlm.generation.weights import load_weights

    corpus = args.corpus if os.path.exists(args.corpus) else "python-docs"
    run = args.checkpoint or train_quick(corpus, args.train_steps, work)
    uri = checkpoint.locate(run)
    model, meta = checkpoint.load_model(checkpoint.fetch(uri))
    weights = load_weights(uri)[0]
    sentence = meta["corpus"]["seed_text"]
    units, maxlen = meta["config"]["units"], meta["config"]["maxlen"]

    results = {"checkpoint": uri, "cpus": os.cpu_count(), "threads": args.cpus,
               "load_before": os.getloadavg()[0], "requests": args.requests,
               "length": args.length, "repeats": args.repeats,
               "baseline_chars": args.baseline_chars,
               "window_mflop_per_char": maxlen * 2 * units * 4 * units / 1e6}
    base = seed_loop(model, meta["vocab"], sentence, args.baseline_chars)
    results["seed_loop"] = {"chars_per_s": base}
    print(f"seed loop: {base:.1f} chars/s", flush=True)
    batch = args.batch_size or batch_size_for(args.requests, 1)
    results["batch_size"] = batch
    for mode in ("window", "stateful"):
        speeds = [kernel(meta, weights, mode, args.requests, args.length, batch)
                  for _ in range(args.repeats)]
        results[f"{mode}_kernel"] = {"chars_per_s": statistics.median(speeds), "runs": speeds}
        print(f"{mode} kernel: {', '.join(f'{v:,.0f}' for v in speeds)} chars/s", flush=True)
        runs = []
        for _ in range(args.repeats):
            runs.append(r := job(run, mode, args.requests, args.length,
                                 os.path.join(work, f"gen-{mode}"), args.batch_size))
            print(f"{mode} job: start-up {r['startup_s']:.1f} s, generating "
                  f"{r['generating_chars_per_s']:,.0f} chars/s, whole {r['whole_s']:.1f} s",
                  flush=True)
        results[f"{mode}_job"] = median_run(runs)
    results["load_after"] = os.getloadavg()[0]
    results["identical_texts"] = identical_share(os.path.join(work, "gen-window"),
                                                 os.path.join(work, "gen-stateful"))
    base = results["seed_loop"]["chars_per_s"]
    for name in ("seed_loop", "window_kernel", "window_job", "stateful_kernel", "stateful_job"):
        results[name]["speedup"] = results[name]["chars_per_s"] / base
    for mode in ("window", "stateful"):
        r = results[f"{mode}_job"]
        r["generating_speedup"] = r["generating_chars_per_s"] / base
        r["generating_vs_kernel"] = (r["generating_chars_per_s"]
                                     / results[f"{mode}_kernel"]["chars_per_s"])
    results["window_kernel"]["vs_ceiling"] = (results["window_kernel"]["chars_per_s"]
                                              / WINDOW_CEILING)
    return results


def show(results: dict) -> None:
    base = results["seed_loop"]["chars_per_s"]
    print(f"\n{results['requests']} requests × {results['length']} characters, batches of "
          f"{results['batch_size']}; seed loop timed on {results['baseline_chars']} characters; "
          f"load average {results['load_before']:.1f} → {results['load_after']:.1f} on "
          f"{results['cpus']} cores")
    print(f"{'':18}{'chars/s':>11}{'× seed':>10}{'× kernel':>10}{'start-up':>10}"
          f"{'1st batch':>10}{'whole':>9}")
    print(f"{'seed loop':18}{base:>11,.0f}{1:>9,.0f}×")
    for mode in ("window", "stateful"):
        k = results[f"{mode}_kernel"]["chars_per_s"]
        print(f"{mode + ' kernel':18}{k:>11,.0f}{k / base:>9,.0f}×")
        r = results[f"{mode}_job"]
        g = r["generating_chars_per_s"]
        print(f"{mode + ' generating':18}{g:>11,.0f}{g / base:>9,.0f}×{g / k:>9.2f}×"
              f"{r['startup_s']:>9.1f}s{r['first_batch_done_s']:>9.1f}s{r['whole_s']:>8.1f}s")
        w = r["chars_per_s"]
        print(f"{mode + ' whole job':18}{w:>11,.0f}{w / base:>9,.0f}×{w / k:>9.2f}×")
    k = results["window_kernel"]
    print(f"\nwindow kernel: {k['chars_per_s']:,.0f} chars/s × "
          f"{results['window_mflop_per_char']:.2f} MFLOP = "
          f"{k['chars_per_s'] * results['window_mflop_per_char'] / 1e3:.0f} GFLOP/s, "
          f"{k['vs_ceiling']:.0%} of the ~{WINDOW_CEILING:,} chars/s 2-core ceiling")
    s, w = results["stateful_job"], results["window_job"]
    print("targets: generating ≥ 0.9× kernel: window "
          f"{w['generating_vs_kernel']:.2f}×, stateful {s['generating_vs_kernel']:.2f}×; "
          f"stateful generating ≥ 10,000× seed: {s['generating_speedup']:,.0f}×; "
          f"start-up ≤ 8 s: window {w['startup_s']:.1f} s, stateful {s['startup_s']:.1f} s")
    print(f"\nmean log-probability (nats/char) by temperature\n{'':12}"
          + "".join(f"{t:>9}" for t in TEMPERATURES))
    for mode in ("window", "stateful"):
        logp = results[f"{mode}_job"]["mean_logprob"]
        print(f"{mode:12}" + "".join(f"{logp[t]:>9.3f}" for t in TEMPERATURES))
    same = results["identical_texts"]
    print(f"{'same text':12}" + "".join(f"{same[t]:>9.1%}" for t in TEMPERATURES)
          + "  (share of requests whose two modes agree character for character)")


if __name__ == "__main__":
    main()
