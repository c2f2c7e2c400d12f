"""Export a checkpoint as a TensorFlow SavedModel with a `generate` signature,
for TF Serving or tf.saved_model.load without charlm:
`python -m jobs.export --checkpoint RUN --output DIR`."""

from __future__ import annotations

import argparse

from charlm.cli import job_main, options_from
from charlm.config import PRECISIONS
from charlm.generation.export import ExportOptions, export
from charlm.generation.options import CONTEXT_MODES

D = ExportOptions  # the defaults live there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--checkpoint", required=True,
      help="a run directory (its best checkpoint is used) or a checkpoint_* directory; "
           "local, s3:// or gs://")
    a("--output", required=True, help="SavedModel directory to write: local, s3:// or gs://")
    a("--overwrite", action="store_true", help="replace an existing --output")
    a("--context-mode", choices=CONTEXT_MODES, default=D.context_mode,
      help="fixed in the exported graph, as in jobs.generate (default %(default)s)")
    a("--top-k", type=int, default=D.top_k, help="fixed in the exported graph (0: all)")
    a("--top-p", type=float, default=D.top_p, metavar="P",
      help="fixed in the exported graph (default 1: all)")
    a("--precision", choices=list(PRECISIONS), default=D.precision,
      help="the exported LSTM stack's compute dtype (default fp32)")
    a("--verbose", action="store_true", help="show TensorFlow logs")


def run(args: argparse.Namespace) -> str:
    return export(options_from(ExportOptions, args))


def main(argv: list[str] | None = None) -> None:
    job_main("export", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
