"""A sweep of the quality preset's neighbourhood through `jobs.tune`, as users
run it, beside the seed recipe's epochs timed in the same invocation: what
the sweep finds, and its wall time against two seed-recipe runs (2 x 40
epochs).

    .venv/bin/python -m benchmarks.sweep --json benchmarks/results/sweep.json

The trials run one at a time (one worker each: the machine's cores), under
ASHA on val_loss per epoch after `--grace-period` epochs (past the two-layer
net's early plateau); every trial is the quality preset with `--epochs` (its
cosine schedule's length) and the searched values.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from benchmarks.common import DEFAULT_CORPUS, ROOT, session, write_json
from benchmarks.recipes import run_seed

SEED_RUN_EPOCHS = 40
SEARCH = ["learning-rate=loguniform:0.008:0.03", "dropout=uniform:0.2:0.4",
          "warmup-steps=choice:50,100,200"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--epochs", type=int, default=20, help="each trial's --epochs")
    p.add_argument("--grace-period", type=int, default=4, help="jobs.tune's --grace-period")
    p.add_argument("--search", action="append", default=None,
                   help=f"jobs.tune's --search (default: {' '.join(SEARCH)})")
    p.add_argument("--seed-epochs", type=int, default=2,
                   help="seed recipe epochs timed first (its steady epoch gives the budget)")
    p.add_argument("--corpus", default=DEFAULT_CORPUS)
    p.add_argument("--json", default=os.path.join(ROOT, "out", "benchmarks", "sweep.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import pandas as pd

    args = parse_args(argv)
    with session(args) as (results, tmp):
        seed = run_seed(args)
        results["seed"] = seed
        results["budget_s"] = round(2 * SEED_RUN_EPOCHS * seed["epoch_s"], 1)
        cmd = [sys.executable, "-m", "jobs.tune", "--corpus", args.corpus, "--preset", "quality",
               "--epochs", str(args.epochs), "--num-samples", str(args.num_samples),
               "--grace-period", str(args.grace_period),
               "--storage-path", tmp, "--name", "quality-sweep"]
        for spec in args.search or SEARCH:
            cmd += ["--search", spec]
        print(f"[sweep] {' '.join(cmd[2:])}", flush=True)
        started = time.monotonic()
        done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        results["wall_s"] = round(time.monotonic() - started, 1)
        results["output_tail"] = done.stdout[-3000:]
        if done.returncode != 0:
            write_json(args.json, results)
            raise SystemExit(f"error: jobs.tune exited with {done.returncode}:\n"
                             f"{done.stdout[-3000:]}")
        table = pd.read_parquet(os.path.join(tmp, "quality-sweep", "trials.parquet"))
        results["trials"] = table.drop(columns=[c for c in table.columns
                                                if table[c].dtype == object
                                                and c.endswith("uri")]).to_dict("records")
        best = table.loc[table["best_val_loss"].idxmin()]
        results["best"] = {k: (v.item() if hasattr(v, "item") else v)
                           for k, v in best.items()}
        write_json(args.json, results)
        print(table.to_string(), flush=True)
        print(f"best val_loss {best['best_val_loss']:.4f} in {results['wall_s']:.0f} s "
              f"(two seed-recipe runs: {results['budget_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
