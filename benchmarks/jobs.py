"""Recipes measured the way users run them: whole `python -m jobs.train` jobs,
over several seeds (and precisions), beside the seed recipe's own epochs timed
in the same invocation.

    .venv/bin/python -m benchmarks.jobs --presets quality --seeds 0,1,2 --seed-epochs 2 \\
        --json benchmarks/results/jobs-quality.json
    .venv/bin/python -m benchmarks.jobs --runs seed:fp32:0,seed:bf16:0,quality:bf16:0 \\
        --json benchmarks/results/jobs-precision.json

Each run is one job (embedded Ray, one worker, the preset's own flags plus
--seed and --precision), started after the last has ended. A run stops at the
budget: the seed recipe's 20-epoch wall time (`--seed-epochs` measures its
epochs first), or `--budget-s`. Times are the job's own `elapsed_s` (from the
job process's creation: imports, Ray start-up and held-out scoring included),
read from the run's history.parquet; per-step figures come from its `step`.
Per preset and precision the summary gives the mean and the worst over seeds.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import time

from benchmarks.common import DEFAULT_CORPUS, ROOT, session, write_json
from benchmarks.recipes import run_seed
from charlm.training.metrics import read_history

TARGETS = (1.55, 1.45, 1.40, 1.30)  # held-out losses whose first time is reported
POLL_S = 2.0


def run_job(preset: str, seed: int, precision: str, budget_s: float, args: argparse.Namespace,
            storage: str) -> dict:
    """One whole job, stopped (SIGINT, as Ctrl-C) once an epoch ends past the budget."""
    name = f"{preset}-{precision}-s{seed}"
    cmd = [sys.executable, "-m", "jobs.train", "--corpus", args.corpus, "--preset", preset,
           "--seed", str(seed), "--storage-path", storage, "--name", name,
           "--precision", precision, *args.extra]
    print(f"[{name}] {' '.join(cmd[2:])}", flush=True)
    run_dir = os.path.join(storage, name)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    shown = 0
    stopped_at_budget = False
    while proc.poll() is None:
        time.sleep(POLL_S)
        rows = read_history(run_dir)
        for r in rows[shown:]:
            print(f"[{name}] epoch {r['epoch']:>3}  step {r.get('step', '?'):>5}  "
                  f"loss {r['loss']:.4f}  val_loss {r['val_loss']:.4f}  "
                  f"{r['elapsed_s']:.0f}s", flush=True)
        shown = len(rows)
        if rows and rows[-1]["elapsed_s"] > budget_s and not stopped_at_budget:
            proc.send_signal(signal.SIGINT)  # the job's process, as Ctrl-C reaches a driver
            stopped_at_budget = True
    output = proc.stdout.read()
    rows = read_history(run_dir)
    # Ended (0), or stopped at the budget as Ctrl-C stops it (130).
    if not rows or proc.returncode not in (0, 130):
        raise SystemExit(f"error: job {name} exited with {proc.returncode}:\n{output[-3000:]}")
    return summarise({"name": name, "preset": preset, "seed": seed, "precision": precision,
                      "budget_s": budget_s, "wall_s": round(time.monotonic() - started, 1),
                      "stopped_at_budget": stopped_at_budget, "history": rows})


def summarise(run: dict) -> dict:
    rows = run["history"]
    inside = [r for r in rows if r["elapsed_s"] <= run["budget_s"]]
    best = min(inside or rows[:1], key=lambda r: r["val_loss"])
    run["best_within_budget"] = {k: best.get(k) for k in ("epoch", "step", "val_loss",
                                                          "elapsed_s")}
    run["first_below"] = {str(t): next(({"step": r.get("step"), "elapsed_s": r["elapsed_s"]}
                                        for r in rows if r["val_loss"] <= t), None)
                          for t in TARGETS}
    speeds = [r["windows_per_s"] for r in rows[1:]] or [rows[0]["windows_per_s"]]
    run["windows_per_s"] = round(statistics.median(speeds), 1)
    return run


def aggregate(runs: list[dict]) -> list[dict]:
    """Per (preset, precision): mean and worst best-within-budget over seeds,
    and held-out loss at the steps every seed reached."""
    out = []
    for key in sorted({(r["preset"], r["precision"]) for r in runs}):
        group = [r for r in runs if (r["preset"], r["precision"]) == key]
        bests = [r["best_within_budget"]["val_loss"] for r in group]
        common = set.intersection(*({h.get("step") for h in r["history"]} for r in group))
        at_steps = {str(s): [next(h["val_loss"] for h in r["history"] if h.get("step") == s)
                             for r in group] for s in sorted(x for x in common if x)}
        out.append({"preset": key[0], "precision": key[1], "seeds": [r["seed"] for r in group],
                    "best_within_budget_mean": round(statistics.fmean(bests), 4),
                    "best_within_budget_worst": round(max(bests), 4),
                    "windows_per_s_median": statistics.median(r["windows_per_s"] for r in group),
                    "val_loss_at_step": {s: {"mean": round(statistics.fmean(v), 4),
                                             "worst": round(max(v), 4)}
                                         for s, v in at_steps.items()}})
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="quality", help="comma-separated presets")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated --seed values")
    p.add_argument("--precisions", default="fp32", help="comma-separated --precision values")
    p.add_argument("--runs", default="",
                   help="comma-separated preset:precision:seed, instead of every combination "
                        "of --presets, --precisions and --seeds")
    p.add_argument("--seed-epochs", type=int, default=2,
                   help="time the seed recipe's epochs first for the 20-epoch budget (0: skip)")
    p.add_argument("--budget-s", type=float, default=0,
                   help="stop each job at this wall time instead (0: the seed's 20 epochs)")
    p.add_argument("--corpus", default=DEFAULT_CORPUS)
    p.add_argument("--json", default=os.path.join(ROOT, "out", "benchmarks", "jobs.json"))
    p.add_argument("extra", nargs="*", help="more jobs.train flags, after --")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with session(args) as (results, tmp):
        if args.seed_epochs:
            results["seed"] = run_seed(args)
        budget = args.budget_s or results.get("seed", {}).get("budget_s") or math.inf
        results["budget_s"] = budget
        results["runs"] = []
        runs = ([r.split(":") for r in args.runs.split(",")] if args.runs else
                [(preset, precision, seed) for preset in args.presets.split(",")
                 for precision in args.precisions.split(",") for seed in args.seeds.split(",")])
        for preset, precision, seed in runs:
            results["runs"].append(run_job(preset, int(seed), precision, budget, args, tmp))
            results["summary"] = aggregate(results["runs"])
            write_json(args.json, results)
        for s in results["summary"]:
            print(f"{s['preset']:<10}{s['precision']:<6} best within {budget:.0f} s: mean "
                  f"{s['best_within_budget_mean']:.4f}, worst {s['best_within_budget_worst']:.4f}"
                  f" (seeds {s['seeds']}); {s['windows_per_s_median']:,.0f} windows/s")


if __name__ == "__main__":
    main()
