"""Sweep training settings with Ray Tune, one charlm run per trial:
`python -m jobs.tune --help`.

Every jobs.train flag is fixed for all trials; `--search` draws one per trial.
"""

from __future__ import annotations

import argparse

from charlm.cli import run_job
from charlm.config import TrainConfig
from jobs import train

# Flags of jobs.train that are the sweep's here, not a fixed training value.
SWEEP_FIELDS = ("preset", "name", "storage_path", "seed", "verbose")
SEARCH_HELP = ("a training flag searched, FLAG=KIND:VALUES (repeatable): choice:a,b "
               "(one drawn per trial), grid:a,b (each value), uniform:LOW:HIGH, "
               "loguniform:LOW:HIGH, randint:LOW:HIGH (both ends included); e.g. "
               "learning-rate=loguniform:0.003:0.03, layers=choice:1,2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """jobs.train's flags, then the sweep's; the parser must resolve conflicts
    (conflict_handler="resolve"): --name, --storage-path and --seed are the sweep's."""
    train.add_arguments(parser)
    a = parser.add_argument
    a("--search", action="append", default=[], metavar="FLAG=KIND:VALUES", help=SEARCH_HELP)
    a("--num-samples", type=int, default=1, metavar="N",
      help="trials drawn from the search (grid values each get N; default 1)")
    a("--max-concurrent", type=int, metavar="N",
      help="trials at a time (default: 1 locally; on a cluster, as many as its CPUs or "
           "GPUs hold now)")
    a("--scheduler", default="asha",
      help="asha: stop trials early on val_loss per epoch (default); fifo: run each to its end")
    a("--grace-period", type=int, default=1, metavar="EPOCHS",
      help="epochs every trial runs before ASHA may stop it (default 1); set it past the "
           "epochs a recipe's loss sits on its early plateau")
    a("--name", help="the sweep's name; rerunning a name resumes it (default: <corpus>-sweep)")
    a("--storage-path", default="~/charlm/sweeps",
      help="local directory or s3:// URI for sweeps (default %(default)s); each trial's run "
           "lives under <storage-path>/<name>")
    a("--seed", type=int, default=0,
      help="the sweep's seed: it draws the searched values and each trial's own --seed "
           "(default 0)")


def run(args: argparse.Namespace) -> str:
    from charlm.tuning.sweep import SweepOptions, sweep

    overrides = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__
                 if f not in SWEEP_FIELDS and getattr(args, f, None) is not None}
    return sweep(SweepOptions(
        search=args.search, overrides=overrides, preset=args.preset, name=args.name,
        storage_path=args.storage_path, seed=args.seed, num_samples=args.num_samples,
        max_concurrent=args.max_concurrent, scheduler=args.scheduler,
        grace_period=args.grace_period,
        verbose=bool(args.verbose)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.tune", description=__doc__,
                                     conflict_handler="resolve")
    add_arguments(parser)
    args = parser.parse_args(argv)
    run_job(lambda: run(args))


if __name__ == "__main__":
    main()
