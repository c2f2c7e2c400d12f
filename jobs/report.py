"""Per-temperature table and PNG chart of a jobs.generate output, or runs
side by side with --runs: `python -m jobs.report --help`."""

from __future__ import annotations

import argparse

from charlm.cli import job_main
from charlm.errors import CharlmError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("output", nargs="?", help="the --output of jobs.generate (local directory, s3:// or gs://)")
    a("--runs", nargs="+", metavar="RUN",
      help="instead, compare runs: run directories, or directories of runs such as a "
           "sweep's (local or s3://): a table, and val_loss against step and wall time in "
           "one PNG")
    a("--chart", help="where to write the PNG (default: <output>.report.png, or with --runs "
                      "<first RUN>.runs.png)")


def run(args: argparse.Namespace) -> str:
    if (args.output is None) == (args.runs is None):
        raise CharlmError("pass either a jobs.generate output or --runs RUN [RUN ...]; "
                          "see python -m jobs.report --help")
    if args.runs:
        from charlm.evaluation.runs import compare

        return compare(args.runs, args.chart)
    from charlm.generation.report import report

    return report(args.output, args.chart)


def main(argv: list[str] | None = None) -> None:
    job_main("report", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
