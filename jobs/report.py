"""Per-temperature table and PNG chart of a jobs.generate output:
`python -m jobs.report --help`."""

from __future__ import annotations

import argparse

from charlm.cli import job_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("output", help="the --output of jobs.generate (local directory, s3:// or gs://)")
    a("--chart", help="where to write the PNG (default: <output>.report.png)")


def run(args: argparse.Namespace) -> str:
    from charlm.generation.report import report

    return report(args.output, args.chart)


def main(argv: list[str] | None = None) -> None:
    job_main("report", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
