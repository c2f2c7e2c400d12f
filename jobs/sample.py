"""Stream one sample from a checkpoint to the terminal, without Ray:
`python -m jobs.sample --checkpoint RUN --prime "..."`. The text equals the
jobs.generate row for the same request."""

from __future__ import annotations

import argparse

from charlm.cli import job_main, options_from
from charlm.config import PRECISIONS
from charlm.generation.options import CONTEXT_MODES, UNKNOWN_CHARS
from charlm.generation.sampler import SampleOptions, sample

D = SampleOptions  # the defaults live there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--checkpoint", required=True,
      help="a run directory (its best checkpoint is used) or a checkpoint_* directory; "
           "local, s3:// or gs://")
    a("--prime", required=True, metavar="TEXT",
      help="the seed text to continue (normalised like the corpus)")
    a("--temperature", type=float, default=D.temperature,
      help="0 is greedy (default %(default)s)")
    a("--length", type=int, default=D.length,
      help="characters to generate; bytes for a --vocab bytes checkpoint "
           "(default %(default)s)")
    a("--context-mode", choices=CONTEXT_MODES, default=D.context_mode,
      help="as in jobs.generate (default %(default)s)")
    a("--top-k", type=int, default=D.top_k, help="as in jobs.generate (0: all)")
    a("--top-p", type=float, default=D.top_p, metavar="P",
      help="as in jobs.generate (default 1: all)")
    a("--precision", choices=list(PRECISIONS), default=D.precision,
      help="as in jobs.generate (default fp32)")
    a("--rng-seed", type=int, default=D.rng_seed,
      help="as jobs.generate's: with the prime, temperature and --sample-index it "
           "derives the request's own RNG seed (default %(default)s)")
    a("--sample-index", type=int, default=D.sample_index,
      help="which of jobs.generate's --samples-per-seed this is (default %(default)s)")
    a("--unknown-chars", choices=UNKNOWN_CHARS, default=D.unknown_chars,
      help="prime characters outside the vocabulary: fail (default) or drop them")
    a("--verbose", action="store_true", help="show TensorFlow logs")


def run(args: argparse.Namespace) -> str:
    return sample(options_from(SampleOptions, args))


def main(argv: list[str] | None = None) -> None:
    job_main("sample", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
