"""Is this Ray cluster ready for charlm? One check on every alive node, one
table: `python -m jobs.doctor --help`."""

from __future__ import annotations

import argparse

from charlm.cli import job_main, options_from
from charlm.cluster.doctor import DoctorOptions

D = DoctorOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--use-gpu", action="store_true",
      help="check the GPUs: each GPU node's check holds its GPUs, TensorFlow must compute on "
           "them with cuDNN's LSTM kernel, and two or more GPUs all-reduce over NCCL")
    a("--gpus", type=int, default=D.gpus, metavar="N",
      help="with --use-gpu: first bring up N GPUs if fewer are up (an autoscaler adds "
           "nodes), then check them all (default %(default)s)")
    a("--storage-path", metavar="URI",
      help="write, read back and delete a small file here from every node (s3://, gs:// "
           "or a local path)")
    a("--json", metavar="FILE", help="also write the rows as JSON (local path or URI)")
    a("--placement-timeout", type=float, default=D.placement_timeout, metavar="SECONDS",
      help="fail a node whose check has not ended within this time (default %(default)g)")
    a("--steps", type=int, default=D.steps,
      help="timed training steps at the seed's and the gpu preset's shapes "
           "(default %(default)s; 0: none)")
    a("--verbose", action="store_true", help="show TensorFlow's, NCCL's and Ray's logs")


def run(args: argparse.Namespace) -> list[dict]:
    from charlm.cluster.doctor import doctor

    return doctor(options_from(DoctorOptions, args))


def main(argv: list[str] | None = None) -> None:
    job_main("doctor", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
