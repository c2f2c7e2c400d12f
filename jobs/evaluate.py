"""Score checkpoints on any text, into Parquet: `python -m jobs.evaluate --help`."""

from __future__ import annotations

import argparse

from charlm.cli import job_main, options_from
from charlm.evaluation.evaluate import SPLITS, EvaluateOptions, evaluate

D = EvaluateOptions  # the defaults live there, for callers that skip the flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--checkpoint", action="append", required=True, metavar="CHECKPOINT",
      help="a checkpoint_* directory, a run directory (its best checkpoint) or a directory "
           "of runs such as a sweep's (the best of them); local, s3:// or gs://; repeatable")
    a("--corpus", required=True,
      help="the text: a UTF-8 file, a directory or s3:// gs:// prefix of .txt files (a row "
           "each), an http(s) URL, nietzsche or python-docs")
    a("--output", required=True, help="Parquet dataset to write: local directory, s3:// or gs://")
    a("--overwrite", action="store_true", help="replace an existing --output")
    a("--split", choices=SPLITS, default=D.split,
      help="heldout: each file's held-out tail, cut as training cut it (default); all: "
           "the whole text")
    a("--stride", type=int, default=D.stride, metavar="N",
      help="score the character after windows of 40, one window every N characters, each "
           "from a zero state (default %(default)s: training's val_loss); 1: every character, "
           "the LSTM state carried through the text")
    a("--concurrency", type=int,
      help="evaluation actors (default: one per checkpoint)")
    a("--cpus-per-actor", type=int,
      help="CPUs (and TF threads) per actor (default: this machine's cores / --concurrency; "
           "1 on a cluster)")
    a("--use-gpu", action="store_true", help="one GPU per actor")
    a("--placement-timeout", type=float, default=D.placement_timeout, metavar="SECONDS",
      help="fail if the actors are not placed within this time (default %(default)g)")
    a("--shared-filesystem", action="store_true",
      help="local --checkpoint, --corpus and --output paths are a mount every node shares")
    a("--verbose", action="store_true", help="show TensorFlow and Ray logs")


def run(args: argparse.Namespace) -> str:
    return evaluate(options_from(EvaluateOptions, args))


def main(argv: list[str] | None = None) -> None:
    job_main("evaluate", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
