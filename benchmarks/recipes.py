"""Held-out loss against optimizer steps for charlm's recipes (the `gpu` and
`fast` presets, or any preset with overrides), and the best held-out loss a
recipe reaches within the seed recipe's 20-epoch wall time, measured with the
seed recipe in the same invocation.

    .venv/bin/python -m benchmarks.recipes --presets gpu,fast --steps 2000
    .venv/bin/python -m benchmarks.recipes --presets fast,quality --seed-epochs 2 \\
        --json benchmarks/results/recipes-quality.json
    .venv/bin/python -m benchmarks.recipes --recipe 'lr2e2:gpu:{"learning_rate": 0.02}' --steps 600

Each recipe trains in its own process, one after another, without Ray:
charlm's build_model and compile_model (so the optimizer, schedule, clipping
and micro-batched train step are the trainer's) over a tf.data pipeline that
visits every training window once per epoch in a fresh order, as the trainer's
stream does, with the steps per epoch the trainer would run. Held-out loss is
scored the seed's way (charlm.model.held_out_scorer) every `--eval-every`
steps (default: every epoch of the recipe). Loss per step does not depend on
the hardware, so it tunes GPU recipes on a CPU; seconds here are CPU seconds
(2 TensorFlow threads, as a one-worker run), and `train_s` excludes scoring.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shared files beside the checkout (or beside the worktrees' directory).
_CANDIDATES = [os.path.join(ROOT, "..", "shared"), os.path.join(ROOT, "..", "..", "shared")]
SHARED = next((d for d in _CANDIDATES if os.path.isdir(d)), _CANDIDATES[0])
DEFAULT_CORPUS = os.path.normpath(os.path.join(SHARED, "data", "nietzsche.txt"))
SEED_SCRIPT = os.path.normpath(os.path.join(SHARED, "baseline", "seed_reference.py"))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
SEED_BUDGET_EPOCHS = 20  # the yardstick: the seed recipe's own 20-epoch time
TARGETS = {1000: 1.45, 2000: 1.40}  # the gpu preset's: held-out loss within N steps


# --- one recipe (child process) ---------------------------------------------

def child(spec: dict) -> None:
    """Train one recipe; one JSON line per evaluation on stdout."""
    from charlm import devices, runtime

    runtime.quiet(False)
    import numpy as np
    import tensorflow as tf

    from charlm.config import VAL_MAXLEN, VAL_STEP, make_config
    from charlm.data.corpus import load_corpus
    from charlm.data.stream import make_plan
    from charlm.data.windows import split, split_xy, window_starts, windows
    from charlm.model.network import averaged, build_model, compile_model, held_out_scorer
    from charlm.training.inputs import without_autotune

    devices.set_threads(devices.training_threads(False, spec["threads"]))
    tf.keras.utils.set_random_seed(spec["seed"])
    config = make_config(spec["preset"], **spec["overrides"])
    corpus = load_corpus(spec["corpus"], min_chars=config.maxlen + 1)
    train_ids, val_ids = split(corpus.ids, config.val_frac, config.maxlen, VAL_MAXLEN)
    starts = window_starts(len(train_ids), config.maxlen, config.step)
    per_epoch = make_plan([len(train_ids)], config).steps  # the trainer's steps per epoch
    total = config.epochs * per_epoch  # the schedule's length, as the trainer sets it
    steps = min(spec["steps"] or total, total)
    every = spec["eval_every"] or per_epoch

    model = build_model(config, len(corpus.vocab))
    compile_model(model, config, total_steps=total)
    ids = tf.constant(train_ids.astype(np.int32))
    offsets = tf.range(config.maxlen + 1, dtype=tf.int64)
    data = without_autotune(
        tf.data.Dataset.from_tensor_slices(starts)
        .shuffle(len(starts), seed=spec["seed"], reshuffle_each_iteration=True)
        .batch(config.batch_size, drop_remainder=True).take(per_epoch).repeat()
        .map(lambda s: split_xy(tf.gather(ids, s[:, None] + offsets), config.objective))
        .prefetch(2))
    score = held_out_scorer(model)
    val = windows(val_ids, VAL_MAXLEN, VAL_STEP)
    print(json.dumps({"config": config.to_dict(), "steps_per_epoch": per_epoch,
                      "schedule_steps": total, "eval_every": every,
                      "params": model.count_params()}), flush=True)

    clock = {"train_s": 0.0, "started": 0.0}

    def begin(_epoch, _logs):
        clock["started"] = time.perf_counter()

    def end(epoch, logs):
        clock["train_s"] += time.perf_counter() - clock["started"]
        t0 = time.perf_counter()
        with averaged(model):  # the weights the trainer scores (--weight-average)
            val_loss = score(val)
        print(json.dumps({"step": (epoch + 1) * every, "loss": float(logs["loss"]),
                          "val_loss": round(val_loss, 4), "train_s": round(clock["train_s"], 2),
                          "eval_s": round(time.perf_counter() - t0, 2)}), flush=True)

    # One fit over one iterator (each epoch of it one evaluation interval): a
    # new iterator per interval would restart the shuffled order.
    model.fit(data, steps_per_epoch=every, epochs=-(-steps // every), verbose=0, callbacks=[
        tf.keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end)])


# --- the parent: run, collect, summarise --------------------------------------

def _env() -> dict[str, str]:
    from charlm.runtime import worker_env

    env = {**os.environ, **worker_env(False)}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_recipe(name: str, preset: str, overrides: dict, args: argparse.Namespace) -> dict:
    spec = {"preset": preset, "overrides": overrides, "steps": args.steps, "corpus": args.corpus,
            "eval_every": args.eval_every, "threads": args.threads, "seed": args.seed}
    cmd = [sys.executable, "-m", "benchmarks.recipes", "--child", json.dumps(spec)]
    print(f"[{name}] {preset} {json.dumps(overrides)}", flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    run: dict = {"name": name, "preset": preset, "overrides": overrides, "evals": []}
    for line in proc.stdout:
        row = json.loads(line)
        if "step" in row:
            run["evals"].append(row)
            print(f"[{name}] step {row['step']:>5}  loss {row['loss']:.4f}  "
                  f"val_loss {row['val_loss']:.4f}  train {row['train_s']:.0f}s", flush=True)
        else:
            run.update(row)
    if proc.wait() != 0:
        raise SystemExit(f"error: recipe {name} exited with {proc.returncode}; "
                         "see its stderr above")
    run["wall_s"] = round(time.perf_counter() - started, 1)
    return summarise(run)


def summarise(run: dict) -> dict:
    evals = run["evals"]
    best = min(evals, key=lambda r: r["val_loss"])
    run["best"] = {"step": best["step"], "val_loss": best["val_loss"]}
    run["within_steps"] = {str(n): min((r["val_loss"] for r in evals if r["step"] <= n),
                                       default=None) for n in TARGETS}
    # Seconds per step: the median over evaluation intervals after the first
    # (which traces the step), robust to the shared machine's stalls.
    rates, prev = [], (0, 0.0)
    for r in evals:
        if prev[0]:
            rates.append((r["train_s"] - prev[1]) / (r["step"] - prev[0]))
        prev = (r["step"], r["train_s"])
    run["s_per_step"] = round(statistics.median(rates), 4) if rates else None
    return run


def run_seed(args: argparse.Namespace) -> dict:
    """The seed recipe for --seed-epochs epochs: its seconds per epoch give the
    20-epoch budget (training and its per-epoch held-out evaluation)."""
    cmd = [sys.executable, SEED_SCRIPT, "--corpus", args.corpus, "--epochs", str(args.seed_epochs),
           "--val-frac", "0.1", "--gen-chars", "0"]
    print(f"[seed] {' '.join(cmd[1:])}", flush=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_USE_LEGACY_KERAS", None)
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for r in rows:
        print(f"[seed] epoch {r['epoch']}  train {r['train_s']:.1f}s  val_loss {r['val_loss']}")
    # Epoch 1 traces; later epochs are the steady cost (all of them if only 1).
    steady = [r["train_s"] for r in rows[1:]] or [rows[0]["train_s"]]
    per_epoch = statistics.median(steady)
    return {"epochs": rows, "epoch_s": per_epoch,
            "budget_s": round(SEED_BUDGET_EPOCHS * per_epoch, 1)}


def within_budget(run: dict, budget_s: float) -> dict:
    """Best held-out loss whose training time fits the budget, measured
    (train_s, which is noisy here) and estimated as steps × median s/step."""
    measured = [r for r in run["evals"] if r["train_s"] <= budget_s]
    steps = int(budget_s / run["s_per_step"]) if run["s_per_step"] else 0
    estimated = [r for r in run["evals"] if r["step"] <= steps]
    return {
        "budget_s": budget_s,
        "best_measured": min((r["val_loss"] for r in measured), default=None),
        "budget_steps_estimated": steps,
        "best_estimated": min((r["val_loss"] for r in estimated), default=None),
    }


def plot(runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for run in runs:
        ax.plot([r["step"] for r in run["evals"]], [r["val_loss"] for r in run["evals"]],
                label=f"{run['name']} (best {run['best']['val_loss']:.3f})")
    for steps, target in TARGETS.items():
        ax.plot([0, steps], [target, target], "k:", linewidth=1)
    ax.set(xlabel="optimizer step", ylabel="held-out loss (nats, seed scoring)",
           title="charlm recipes on nietzsche: held-out loss per step", ylim=(1.25, 2.2))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="gpu,fast", help="comma-separated presets to run")
    p.add_argument("--recipe", action="append", default=[],
                   help="NAME:PRESET:JSON overrides, e.g. 'adam:gpu:{\"learning_rate\": 0.02}' "
                        "(repeatable; runs after --presets)")
    p.add_argument("--steps", type=int, default=2000,
                   help="optimizer steps per recipe (0: the whole preset)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="steps between held-out scores (default: one epoch of the recipe)")
    p.add_argument("--seed-epochs", type=int, default=0,
                   help="also run the seed recipe this many epochs for the 20-epoch budget")
    p.add_argument("--corpus", default=DEFAULT_CORPUS)
    p.add_argument("--threads", type=int, default=2, help="CPUs for TensorFlow (as one worker)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=os.path.join(RESULTS, "recipes.json"))
    p.add_argument("--png", default=None, help="plot (default: beside --json)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return
    recipes = [(p, p, {}) for p in args.presets.split(",") if p]
    for r in args.recipe:
        name, preset, overrides = r.split(":", 2)
        recipes.append((name, preset, json.loads(overrides)))
    results: dict = {"args": {k: v for k, v in vars(args).items() if k != "child"},
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.seed_epochs:
        results["seed"] = run_seed(args)
    results["runs"] = []
    for name, preset, overrides in recipes:
        run = run_recipe(name, preset, overrides, args)
        if "seed" in results:
            run["within_seed_budget"] = within_budget(run, results["seed"]["budget_s"])
        results["runs"].append(run)
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:  # after every recipe: a long run keeps what it has
            json.dump(results, f, indent=1)
    plot(results["runs"], args.png or os.path.splitext(args.json)[0] + ".png")
    print(f"{'recipe':<16}{'best':>8}{'at step':>9}" + "".join(
        f"{'<= ' + str(n):>10}" for n in TARGETS) + f"{'s/step':>9}")
    for run in results["runs"]:
        print(f"{run['name']:<16}{run['best']['val_loss']:>8.4f}{run['best']['step']:>9}" + "".join(
            f"{v if v is not None else math.nan:>10.4f}" for v in run["within_steps"].values())
            + f"{run['s_per_step'] or math.nan:>9.3f}")
        if "within_seed_budget" in run:
            print(f"  within the seed's 20 epochs: {json.dumps(run['within_seed_budget'])}")
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
