"""Configurations side by side, one after another (never concurrently) on the
same corpus: the figures each run gives (median windows/s, time to quality),
the ratios between them, the table, and the command line that throughput.py
and quality.py share.

Time to quality is wall time from the process's creation to the end of the
first epoch whose held-out loss reaches a target, so imports, data
preparation and Ray start-up all count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from benchmarks.common import (
    DEFAULT_CORPUS,
    OUT,
    SEED_SCRIPT,
    exit_if_failed,
    fmt,
    session,
    write_json,
)
from benchmarks.configs import run_charlm, run_plain, run_seed, train_rss

ORDER = ["seed", "plain", "charlm1", "charlm2", "fast"]  # the order they run in
SEED_BUDGET_EPOCHS = 20  # the issue's yardstick: "within the seed's 20-epoch time"
QUICK_LIMIT = 60_000  # characters: ~16K seed windows, a few seconds per seed epoch
QUICK_STEPS = 8


def steady(run: dict | None) -> list[dict]:
    """Epochs after the first when there are several: the first also pays for
    graph tracing and warm-up, which time to quality already counts."""
    epochs = (run or {}).get("epochs") or []
    return epochs[1:] if len(epochs) > 1 else epochs


def median_wps(run: dict | None) -> float | None:
    vals = [e["windows_per_s"] for e in steady(run)]
    return statistics.median(vals) if vals else None


def median_epoch_s(run: dict | None) -> float | None:
    vals = [e["epoch_s"] for e in steady(run) if e.get("epoch_s") is not None]
    return statistics.median(vals) if vals else None


def time_to_quality(run: dict, targets: list[float]) -> dict:
    """For each target: seconds from process creation to the end of the first
    epoch whose held-out loss is at or below it (None: not reached)."""
    out = {}
    for target in targets:
        hit = next((e for e in run.get("epochs", [])
                    if e.get("val_loss") is not None and e["val_loss"] <= target), None)
        out[str(target)] = {"s": hit["at_s"], "epoch": hit["epoch"]} if hit else None
    return out


def seed_budget_s(seed: dict | None) -> tuple[float | None, bool]:
    """The seed's time to finish SEED_BUDGET_EPOCHS epochs, whole process;
    extrapolated from the epochs run when fewer (then flagged estimated)."""
    if not seed or not seed.get("epochs"):
        return None, False
    ep = seed["epochs"]
    if len(ep) >= SEED_BUDGET_EPOCHS:
        return ep[SEED_BUDGET_EPOCHS - 1]["at_s"], False
    if len(ep) >= 2:
        per = (ep[-1]["at_s"] - ep[0]["at_s"]) / (len(ep) - 1)
    else:
        per = ep[0]["epoch_s"]
    return round(ep[-1]["at_s"] + per * (SEED_BUDGET_EPOCHS - len(ep)), 1), True


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def ratios(runs: dict, targets: list[float]) -> dict:
    """The comparisons the issue asks for; None where a side was not run or
    did not get there."""
    seed, c1, c2, plain = (runs.get(k) for k in ("seed", "charlm1", "charlm2", "plain"))
    budget, estimated = seed_budget_s(seed)
    out = {
        "charlm1_windows_per_s_vs_seed": _ratio(median_wps(c1), median_wps(seed)),
        "charlm1_worker_peak_rss_vs_seed_peak_rss": _ratio(train_rss(c1), train_rss(seed)),
        "charlm1_windows_per_s_vs_plain": _ratio(median_wps(c1), median_wps(plain)),
        "charlm2_windows_per_s_vs_charlm1": _ratio(median_wps(c2), median_wps(c1)),
        "seed_budget_epochs": SEED_BUDGET_EPOCHS,
        "seed_budget_s": budget, "seed_budget_estimated": estimated,
    }
    seed_ttq = time_to_quality(seed, targets) if seed else {}
    for t in targets:
        key = str(t)
        base = (seed_ttq.get(key) or {}).get("s")
        out[f"time_to_{key}_vs_seed"] = {
            n: _ratio((r["time_to_quality"].get(key) or {}).get("s"), base)
            for n, r in runs.items() if n != "seed"}
        out[f"reached_{key}_within_seed_budget"] = {
            n: (None if budget is None else
                bool(r["time_to_quality"].get(key)) and r["time_to_quality"][key]["s"] <= budget)
            for n, r in runs.items()}
    return out


def print_table(runs: dict, rat: dict, targets: list[float]) -> None:
    """Configurations side by side, then the ratios."""
    order = [n for n in ("seed", "charlm1", "charlm2", "plain", "fast") if n in runs]
    if not order:
        return

    def last(run, key):
        return run["epochs"][-1][key] if run.get("epochs") else None

    def best_val(run):
        vals = [e["val_loss"] for e in run.get("epochs", []) if e.get("val_loss") is not None]
        return min(vals) if vals else None

    def workers_rss(run):
        m = run["memory"]
        if m["root_role"] != "driver":
            return fmt(m["root_peak_rss_mb"])
        return " / ".join(fmt(w["peak_rss_mb"]) for w in m["train_workers"]) or "-"

    def root_if(run, role):
        return run["memory"]["root_peak_rss_mb"] if run["memory"]["root_role"] == role else None

    def first_at(run):
        return run["epochs"][0]["at_s"] if run.get("epochs") else None

    def ttq_getter(target):
        return lambda run: fmt((run["time_to_quality"].get(str(target)) or {}).get("s"), ".1f")

    def raylet(run):
        r = run["memory"]["raylet"]
        return f"{r['peak_rss_mb']:,.0f}" if r else "-"

    def other_max(run):
        o = run["memory"]["others"]
        return f"{o[0]['peak_rss_mb']:,.0f} {o[0]['label'][:12]}" if o else "-"

    rows = [
        ("epochs run", lambda r: str(len(r.get("epochs", [])))),
        ("exit code", lambda r: str(r["returncode"])),
        ("windows/epoch", lambda r: fmt(r.get("windows_per_epoch"))),
        ("windows/s (median*)", lambda r: fmt(median_wps(r))),
        ("epoch s (median*)", lambda r: fmt(median_epoch_s(r), ".1f")),
        ("loss (last epoch)", lambda r: fmt(last(r, "loss"), ".4f")),
        ("val_loss (last epoch)", lambda r: fmt(last(r, "val_loss"), ".4f")),
        ("val_loss (best)", lambda r: fmt(best_val(r), ".4f")),
        ("1st epoch done at s", lambda r: fmt(first_at(r), ".1f")),
        ("process wall s", lambda r: fmt(r["wall_s"], ".1f")),
        ("peak RSS trainer MB", workers_rss),
        ("peak RSS driver MB", lambda r: fmt(root_if(r, "driver"))),
        ("peak RSS raylet MB", raylet),
        ("object store peak MB", lambda r: fmt(r["memory"].get("object_store_peak_mb"))),
        ("peak RSS other Ray MB", other_max),
        ("tree peak MB (sum)", lambda r: fmt(r["memory"]["tree_peak_rss_mb"])),
        ("ru_maxrss MB (wait4)", lambda r: fmt(r["memory"]["ru_maxrss_mb"])),
        *[(f"time to val<={t} s", ttq_getter(t)) for t in targets],
        ("load avg before", lambda r: f"{r['load_avg_before'][0]:.2f}"),
    ]
    w = 18
    print("\n" + "".ljust(26) + "".join(n.rjust(w) for n in order))
    for label, get in rows:
        print(label.ljust(26) + "".join(get(runs[n]).rjust(w) for n in order))

    print("* median over epochs 2.. when more than one ran (epoch 1 includes warm-up)")
    print("\nper epoch: loss / val_loss / windows/s / epoch s / done at s")
    for n in order:
        for e in runs[n].get("epochs", []):
            print(f"  {n:8} {e['epoch']:3d}  {fmt(e['loss'], '.4f')}  "
                  f"{fmt(e['val_loss'], '.4f')}  {fmt(e['windows_per_s'])}  "
                  f"{fmt(e['epoch_s'], '.1f')}  {fmt(e['at_s'], '.1f')}")

    print("\nratios")
    for key, value in rat.items():
        print(f"  {key:44} {value}")


def run_config(name: str, args: argparse.Namespace, corpus: str, tmp: str) -> dict:
    """One configuration by its name in ORDER."""
    storage = os.path.join(tmp, "runs")
    if name == "seed":
        return run_seed(args.seed_script, corpus, args.epochs, tmp)
    if name == "plain":
        return run_plain(corpus, args.epochs, args.max_steps, tmp)
    if name in ("charlm1", "charlm2"):
        return run_charlm(name, "seed", int(name[-1]), args.epochs, corpus, args.max_steps,
                          storage, tmp)
    from charlm.config import PRESETS
    return run_charlm("fast", "fast", 1, args.fast_epochs or PRESETS["fast"]["epochs"], corpus,
                      args.max_steps, storage, tmp)


def parse_args(argv: list[str] | None, prog: str, doc: str, configs: list[str], epochs: int,
               json_name: str) -> argparse.Namespace:
    """The flags throughput.py and quality.py share; `configs` are the ones the
    benchmark runs by default (and the only ones it knows), `epochs` its default."""
    default_json = os.path.join(OUT, json_name)
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    p.add_argument("--epochs", type=int,
                   help=f"epochs for every configuration (default {epochs}; 1 with --quick)")
    p.add_argument("--corpus", default=DEFAULT_CORPUS, help=f"text file (default {DEFAULT_CORPUS})")
    p.add_argument("--configs", default=",".join(configs),
                   help=f"comma list of {','.join(configs)} (default: all)")
    if "fast" in configs:
        p.add_argument("--fast-epochs", type=int,
                       help="epochs for the fast preset (default: the preset's own; "
                            "--epochs with --quick)")
    p.add_argument("--targets", default="1.55,1.35", help="held-out losses for time to quality")
    p.add_argument("--max-steps", type=int,
                   help="cap on steps per epoch for all but the seed (which cannot be capped)")
    p.add_argument("--limit", type=int, help="use only the first N characters of the corpus")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: --epochs 1, --limit {QUICK_LIMIT}, --max-steps {QUICK_STEPS}")
    p.add_argument("--seed-script", default=SEED_SCRIPT, help="the seed recipe script")
    p.add_argument("--json", default=default_json, help=f"results file (default {default_json})")
    args = p.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(args.configs) - set(configs)
    if unknown or not args.configs:
        p.error(f"--configs: unknown {', '.join(sorted(unknown)) or 'none given'}; "
                f"choose from {', '.join(configs)}")
    args.epochs = args.epochs or (1 if args.quick else epochs)
    if args.quick:
        args.limit = args.limit or QUICK_LIMIT
        args.max_steps = args.max_steps or QUICK_STEPS
        if "fast" in configs:
            args.fast_epochs = args.fast_epochs or args.epochs
    args.targets = [float(t) for t in args.targets.split(",") if t]
    return args


def main(argv: list[str] | None, *, prog: str, doc: str, configs: list[str], epochs: int,
         json_name: str) -> None:
    """Runs the chosen configurations in ORDER, writing the results after each,
    then prints them side by side."""
    args = parse_args(argv, prog, doc, configs, epochs, json_name)
    if not os.path.isfile(args.corpus):
        sys.exit(f"error: corpus {args.corpus} does not exist; pass --corpus PATH")
    with session(args) as (results, tmp):
        runs: dict = {}
        results["runs"] = runs
        corpus = args.corpus
        if args.limit:  # every configuration reads the same truncated copy
            corpus = os.path.join(tmp, "corpus.txt")
            with open(args.corpus, encoding="utf-8") as f:
                text = f.read(args.limit)
            with open(corpus, "w", encoding="utf-8") as f:
                f.write(text)
        results["corpus"] = {"path": args.corpus, "limit": args.limit,
                             "bytes": os.path.getsize(corpus)}
        for name in [c for c in ORDER if c in args.configs]:
            run = run_config(name, args, corpus, tmp)
            run["time_to_quality"] = time_to_quality(run, args.targets)
            runs[name] = run
            results["ratios"] = ratios(runs, args.targets)
            write_json(args.json, results)
        print_table(runs, results["ratios"], args.targets)
    exit_if_failed(list(runs.values()), args.json)
