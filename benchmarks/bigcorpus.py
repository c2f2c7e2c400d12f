"""Memory at scale: one slice of an epoch (charlm's seed preset, 1 worker) on a
generated ~100 MB corpus (benchmarks/corpus100mb.py): does a training worker
stay under 2 GB, and what do the driver and the object store carry?

    .venv/bin/python -m benchmarks.bigcorpus --quick     # smoke test: 5 steps
    .venv/bin/python -m benchmarks.bigcorpus --val-frac 0.01 \
        --json benchmarks/results/train-big.json
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks.common import OUT, exit_if_failed, fmt, session
from benchmarks.configs import run_charlm, train_rss


def run_big(mb: float, steps: int, val_frac: float | None, tmp: str) -> dict:
    """One slice of an epoch on a ~100 MB corpus, 1 worker, seed preset: does
    a training worker stay under 2 GB, and what do the driver and the object
    store (raylet) carry?"""
    from benchmarks.corpus100mb import build

    path = os.path.join(tmp, "big.txt")
    t0 = time.perf_counter()
    size = build(path, mb)
    print(f"\nbuilt {size:,}-byte corpus in {time.perf_counter() - t0:.1f} s: {path}", flush=True)
    extra = ["--val-frac", str(val_frac)] if val_frac else []
    run = run_charlm("big", "seed", 1, 1, path, steps, os.path.join(tmp, "runs"),
                     tmp, extra=extra)
    os.remove(path)
    worker = train_rss(run)
    run.update({"corpus_bytes": size, "max_steps": steps, "val_frac": val_frac or 0.1,
                "worker_peak_rss_mb": worker,
                "worker_under_2gb": None if worker is None else worker < 2048})
    m = run["memory"]
    print(f"\nbig corpus ({size / 1e6:.0f} MB, {steps} steps, 1 worker): exit {run['returncode']}, "
          f"wall {run['wall_s']:.0f} s")
    print(f"  train worker peak RSS   {fmt(worker)} MB  (< 2048 MB: {run['worker_under_2gb']})")
    for w in m["train_workers"]:
        print(f"    pid {w['pid']}: {w['peak_rss_mb']:,.0f} MB, of it shared "
              f"{w['shared_mb_at_peak']:,.0f} MB")
    print(f"  driver peak RSS         {fmt(m['root_peak_rss_mb'])} MB")
    if m["raylet"]:
        print(f"  raylet peak RSS         {m['raylet']['peak_rss_mb']:,.0f} MB")
    print(f"  object store peak       {fmt(m['object_store_peak_mb'])} MB "
          "(allocated pages of its shared-memory file; counted in the RSS of the "
          "processes that wrote or read them, not the raylet's)")
    for o in m["others"][:5]:
        print(f"  {o['label'][:22]:22}  {o['peak_rss_mb']:,.0f} MB")
    print(f"  whole tree (sum)        {m['tree_peak_rss_mb']:,.0f} MB;  "
          f"ru_maxrss (wait4) {m['ru_maxrss_mb']:,.0f} MB")
    return run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    default_json = os.path.join(OUT, "train-big.json")
    p = argparse.ArgumentParser(prog="python -m benchmarks.bigcorpus",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=100.0, help="size of the corpus in MB (default 100)")
    p.add_argument("--steps", type=int, help="training steps (default 50; 5 with --quick)")
    p.add_argument("--val-frac", type=float,
                   help="held-out fraction (default charlm's 0.1: ~3.3M held-out windows "
                        "scored at the end, minutes on 2 cores; 0.01 with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke test: --steps 5 --val-frac 0.01")
    p.add_argument("--json", default=default_json, help=f"results file (default {default_json})")
    args = p.parse_args(argv)
    if args.quick:
        args.steps = args.steps or 5
        args.val_frac = args.val_frac or 0.01
    args.steps = args.steps or 50
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with session(args) as (results, tmp):
        results["big"] = run_big(args.mb, args.steps, args.val_frac, tmp)
    exit_if_failed([results["big"]], args.json)


if __name__ == "__main__":
    main()
