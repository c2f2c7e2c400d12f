"""Train, generate and report as one job: `python -m jobs.pipeline --help`.

Each job's own flags pass through by prefix, so that the pipeline never
duplicates their definitions: `--train.epochs 3` reaches jobs.train as
`--epochs 3`. The pipeline only sets defaults and hands each job's result to
the next.
"""

from __future__ import annotations

import argparse
import posixpath
import sys

from charlm import storage
from charlm.cli import run_job
from jobs import generate, report, train

JOBS = {"train": train, "generate": generate, "report": report}
# Alone, the pipeline is a short demo: the quick preset, then the recipe's
# seed and 32 held-out seeds at each of generation's default temperatures.
DEFAULTS = {"train": ["--preset", "quick"], "generate": ["--num-seeds", "32"]}
PENDING = "<pending>"  # stands for a path that an earlier job has not produced yet

EPILOG = """\
each job's flags, routed by prefix (--train.epochs 1 is jobs.train's --epochs 1):
  --train.<flag>     python -m jobs.train; here --preset defaults to quick
  --generate.<flag>  python -m jobs.generate; here --num-seeds defaults to 32,
                     --checkpoint is training's best and --output defaults to
                     <storage-path>/<name>/generations
  --report.<flag>    python -m jobs.report, given generation's output
--train.help, --generate.help and --report.help list each job's flags.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that more than one job needs, given once."""
    a = parser.add_argument
    a("--corpus", help="training text (see --train.help; default: jobs.train's)")
    a("--storage-path", help="local directory or s3:// URI for runs (default: jobs.train's)")
    a("--name", help="run name; outputs land in <storage-path>/<name> (default: jobs.train's)")
    a("--use-gpu", action="store_true", help="train and generate on GPUs")
    a("--shared-filesystem", action="store_true",
      help="a local --storage-path is a mount that every node of the cluster shares")
    a("--verbose", action="store_true", help="show TensorFlow and Ray logs")


def route(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Split argv into the pipeline's own flags and each job's, by prefix.

    A value follows the flag before it, so `--train.epochs 3` moves as a pair."""
    own: list[str] = []
    routed: dict[str, list[str]] = {name: [] for name in JOBS}
    dest = own
    for token in argv:
        if token.startswith("--"):
            prefix, dot, rest = token[2:].partition(".")
            if dot and prefix in routed:
                dest, token = routed[prefix], f"--{rest}"
            else:
                dest = own
        elif token.startswith("-") and not _is_number(token):
            dest = own
        dest.append(token)
    return own, routed


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def job_parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m jobs.pipeline --{name}.<flag>",
                                     description=JOBS[name].__doc__)
    JOBS[name].add_arguments(parser)
    return parser


def shared(args: argparse.Namespace, *flags: str) -> list[str]:
    """The given common flags as a job's arguments, only where set."""
    argv: list[str] = []
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is True:
            argv.append(flag)
        elif value not in (None, False):
            argv += [flag, value]
    return argv


def run(argv: list[str]) -> tuple[str, str, str]:
    """Returns the best checkpoint, the Parquet output and the chart."""
    own, routed = route(argv)
    parser = argparse.ArgumentParser(prog="python -m jobs.pipeline", description=__doc__,
                                     epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(own)
    parsers = {name: job_parser(name) for name in JOBS}

    def generate_argv(checkpoint: str, output: str) -> list[str]:
        return [*DEFAULTS["generate"], "--checkpoint", checkpoint, "--output", output,
                *shared(args, "--use-gpu", "--shared-filesystem", "--verbose"),
                *routed["generate"]]

    def report_argv(output: str) -> list[str]:
        return [output, *routed["report"]]

    # Every job's flags are parsed before training starts, so that a typo in
    # --generate.* fails in seconds rather than after the training.
    train_args = parsers["train"].parse_args([
        *DEFAULTS["train"],
        *shared(args, "--corpus", "--storage-path", "--name", "--use-gpu", "--shared-filesystem",
                "--verbose"),
        *routed["train"]])
    parsers["generate"].parse_args(generate_argv(PENDING, PENDING))
    parsers["report"].parse_args(report_argv(PENDING))

    checkpoint = train.run(train_args)
    run_dir = posixpath.dirname(checkpoint.rstrip("/"))
    gen_args = parsers["generate"].parse_args(
        generate_argv(checkpoint, storage.join(run_dir, "generations")))
    output = generate.run(gen_args)
    chart = report.run(parsers["report"].parse_args(report_argv(output)))
    return checkpoint, output, chart


def main(argv: list[str] | None = None) -> None:
    def pipeline() -> None:
        checkpoint, output, chart = run(sys.argv[1:] if argv is None else argv)
        print(f"best checkpoint: {checkpoint}\ngenerations: {output}\nchart: {chart}", flush=True)

    run_job(pipeline)


if __name__ == "__main__":
    main()
