"""Sample many seeds × temperatures from a checkpoint with Ray Data, into
Parquet: `python -m jobs.generate --help`."""

from __future__ import annotations

import argparse

from charlm.cli import job_main, options_from
from charlm.config import PRECISIONS
from charlm.generation.job import GenerateOptions, generate
from charlm.generation.options import CONTEXT_MODES, UNKNOWN_CHARS

D = GenerateOptions  # the defaults live there, for callers that skip the flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--checkpoint", required=True,
      help="a run directory (its best checkpoint is used) or a checkpoint_* directory; "
           "local, s3:// or gs://")
    a("--output", required=True, help="Parquet dataset to write: local directory, s3:// or gs://")
    a("--overwrite", action="store_true", help="replace an existing --output")
    a("--seed", action="append", default=[], metavar="TEXT",
      help="a seed text (repeatable)")
    a("--seeds-file", help="UTF-8 file, one seed per line (blank lines skipped)")
    a("--num-seeds", type=int, default=D.num_seeds, metavar="N",
      help="N of the held-out seeds the run recorded (maxlen characters each, spread "
           "over its held-out text)")
    a("--recipe-seed", action=argparse.BooleanOptionalAction, default=None,
      help="row 0 is the seed recipe's own seed, the corpus's first maxlen characters "
           "(default: on unless only --seed/--seeds-file are given)")
    a("--unknown-chars", choices=UNKNOWN_CHARS, default=D.unknown_chars,
      help="seed characters outside the vocabulary: fail (default) or drop them")
    a("--temperatures", default=D.temperatures,
      help="comma-separated; 0 is greedy (default: the seed's %(default)s)")
    a("--samples-per-seed", type=int, default=D.samples_per_seed,
      help="samples per seed and temperature (default %(default)s)")
    a("--length", type=int, default=D.length,
      help="characters generated per sample; bytes for a --vocab bytes checkpoint "
           "(default %(default)s)")
    a("--context-mode", choices=CONTEXT_MODES, default=D.context_mode,
      help="window: the seed's last-maxlen-characters window re-run every step; "
           "stateful: the LSTM state carried forward (much faster)")
    a("--top-k", type=int, default=D.top_k,
      help="draw only among the k likeliest characters (0: all)")
    a("--top-p", type=float, default=D.top_p, metavar="P",
      help="nucleus sampling: draw only among the likeliest characters whose probability "
           "(after temperature and top-k) first reaches P (default 1: all)")
    a("--precision", choices=list(PRECISIONS), default=D.precision,
      help="the LSTM stack's compute dtype: fp32 (default), bf16 or fp16; texts are "
           "deterministic per request within a precision, and differ across them")
    a("--rng-seed", type=int, default=D.rng_seed,
      help="base of every sample's own RNG seed (default %(default)s)")
    a("--concurrency", type=int, default=D.concurrency,
      help="generation actors (default %(default)s)")
    a("--batch-size", type=int, default=D.batch_size,
      help="requests generated together per call (default: up to 1,024, fewer if "
           "needed to give every actor a batch)")
    a("--cpus-per-actor", type=int,
      help="CPUs (and TF threads) per actor (default: this machine's cores / "
           "--concurrency; 1 on a cluster)")
    a("--use-gpu", action="store_true", help="one GPU per actor")
    a("--placement-timeout", type=float, default=D.placement_timeout, metavar="SECONDS",
      help="fail if the actors are not placed within this time (default %(default)g: "
           "a cold start of GPU nodes)")
    a("--shared-filesystem", action="store_true",
      help="local --checkpoint and --output paths are a mount that every node shares")
    a("--verbose", action="store_true", help="show TensorFlow and Ray logs")


def run(args: argparse.Namespace) -> str:
    return generate(options_from(GenerateOptions, args))


def main(argv: list[str] | None = None) -> None:
    job_main("generate", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
