"""Generation speed: the seed's one-`predict`-per-character loop against
charlm's compiled kernels (window and stateful context), on one checkpoint.

    .venv/bin/python benchmarks/generate.py                     # trains a quick model first
    .venv/bin/python benchmarks/generate.py --checkpoint ~/charlm/runs/nietzsche-lstm

Measures, in one run: the seed loop (as in seed_reference.py) for
--baseline-chars characters; each charlm mode's kernel in this process on
--requests × --length characters in one batch; and each mode as the whole
jobs.generate Ray job (Ray and actor start-up, checkpoint load, Parquet write
included) on the same request count. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from charlm import checkpoint, runtime  # noqa: E402  (charlm first: it selects tf-keras)

TEMPERATURES = [0.2, 0.5, 1.0, 1.2]  # the seed's


def train_quick(corpus_spec: str, steps: int, directory: str) -> str:
    """A seed-sized LSTM(128), maxlen 40, trained briefly; returns its run directory."""
    import numpy as np
    import tensorflow as tf

    from charlm.config import TrainConfig
    from charlm.corpus import load_corpus
    from charlm.model import build_model, compile_model, split_xy
    from charlm.windows import holdout_start, windows

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
        "epoch": 0, "corpus": corpus.info(), "metrics": {"loss": loss, "val_loss": loss}})
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


def kernel(model, meta: dict, mode: str, requests: int, length: int) -> float:
    """chars/s of one compiled call over all requests (after a warm-up trace)."""
    import numpy as np

    from charlm.sampling import Generator, weights_from_model

    generate = Generator(weights_from_model(model), meta["config"]["maxlen"], mode)
    rng = np.random.default_rng(0)
    seeds = [rng.integers(0, len(meta["vocab"]), 40) for _ in range(requests)]
    temperature = np.resize(TEMPERATURES, requests)
    generate(seeds[:2], temperature[:2], np.arange(2), 2)
    started = time.perf_counter()
    generate(seeds, temperature, np.arange(requests), length)
    return requests * length / (time.perf_counter() - started)


def job(run: str, mode: str, requests: int, length: int, output: str, cpus: int) -> dict:
    """The whole jobs.generate run: chars/s over its wall time and over the
    actor's generating time (the rows' `seconds`), mean log p per T."""
    import pandas as pd

    from charlm.generation import GenerateOptions, generate

    started = time.perf_counter()
    generate(GenerateOptions(
        checkpoint=run, output=output, num_seeds=requests // len(TEMPERATURES) - 1,
        temperatures=",".join(map(str, TEMPERATURES)), length=length, context_mode=mode,
        batch_size=256, cpus_per_actor=cpus, overwrite=True))
    seconds = time.perf_counter() - started
    df = pd.read_parquet(output)
    return {"chars_per_s": len(df) * length / seconds, "seconds": seconds, "rows": len(df),
            "generating_chars_per_s": len(df) * length / df["seconds"].sum(),
            "mean_logprob": df.groupby("temperature")["mean_logprob"].mean().round(4)
            .to_dict()}


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
    p.add_argument("--requests", type=int, default=1024)
    p.add_argument("--length", type=int, default=400)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1,
                   help="TF threads here and in the job's one actor")
    p.add_argument("--json", default=os.path.join(ROOT, "out", "benchmarks", "generate.json"))
    args = p.parse_args()
    runtime.quiet(False)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.cpus)
    with tempfile.TemporaryDirectory(prefix="charlm-bench-") as work:
        results = measure(args, work)
    show(results)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {args.json}")


def measure(args: argparse.Namespace, work: str) -> dict:
    from charlm.generation import load_checkpoint, run_corpus

    corpus = args.corpus if os.path.exists(args.corpus) else "python-docs"
    run = args.checkpoint or train_quick(corpus, args.train_steps, work)
    uri = checkpoint.locate(run)
    model, meta = load_checkpoint(uri)
    sentence = run_corpus(meta).text[:meta["config"]["maxlen"]]

    results = {"checkpoint": uri, "cpus": os.cpu_count(), "threads": args.cpus,
               "load_before": os.getloadavg()[0], "requests": args.requests,
               "length": args.length, "baseline_chars": args.baseline_chars}
    base = seed_loop(model, meta["vocab"], sentence, args.baseline_chars)
    results["seed_loop"] = {"chars_per_s": base}
    print(f"seed loop: {base:.1f} chars/s", flush=True)
    for mode in ("window", "stateful"):
        results[f"{mode}_kernel"] = {"chars_per_s": kernel(model, meta, mode, args.requests,
                                                           args.length)}
        print(f"{mode} kernel: {results[f'{mode}_kernel']['chars_per_s']:,.0f} chars/s",
              flush=True)
        results[f"{mode}_job"] = job(run, mode, args.requests, args.length,
                                     os.path.join(work, f"gen-{mode}"), args.cpus)
    results["load_after"] = os.getloadavg()[0]
    results["identical_texts"] = identical_share(os.path.join(work, "gen-window"),
                                                 os.path.join(work, "gen-stateful"))
    base = results["seed_loop"]["chars_per_s"]
    for name in ("seed_loop", "window_kernel", "window_job", "stateful_kernel", "stateful_job"):
        results[name]["speedup"] = results[name]["chars_per_s"] / base
    return results


def show(results: dict) -> None:
    base = results["seed_loop"]["chars_per_s"]
    print(f"\n{results['requests']} requests × {results['length']} characters; seed loop "
          f"timed on {results['baseline_chars']} characters; load average "
          f"{results['load_before']:.1f} → {results['load_after']:.1f} on "
          f"{results['cpus']} cores")
    print(f"{'':24}{'chars/s':>12}{'× seed':>10}   (job: wall clock; generating only)")
    for name in ("seed_loop", "window_kernel", "window_job", "stateful_kernel", "stateful_job"):
        speed = results[name]["chars_per_s"]
        line = f"{name.replace('_', ' '):24}{speed:>12,.0f}{speed / base:>9,.0f}×"
        if name.endswith("job"):
            generating = results[name]["generating_chars_per_s"]
            line += f"{generating:>14,.0f}{generating / base:>9,.0f}×"
        print(line)
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
