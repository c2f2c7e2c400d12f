"""Train a char-LSTM with Ray Train: `python -m jobs.train --help`."""

from __future__ import annotations

import argparse

from charlm.cli import job_main
from charlm.config import (
    PLACEMENT_STRATEGIES,
    PLACEMENT_TIMEOUT_S,
    PRECISIONS,
    PRESETS,
    TrainConfig,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag defaults to None so that a preset fills in what is not given."""
    a = parser.add_argument
    a("--preset", help=f"starting values: {', '.join(PRESETS)} (default: seed)")
    a("--corpus", help="nietzsche, python-docs, a file, a directory of .txt, an http(s) URL, "
                       "or s3:// gs:// (default: nietzsche, else python-docs offline)")
    a("--keep-case", action="store_true", default=None, help="do not lower-case the text")
    a("--keep-newlines", action="store_true", default=None, help="do not turn newlines into spaces")
    a("--vocab", choices=["chars", "bytes"],
      help="chars: the corpus's characters (a counting pass; default); bytes: UTF-8 bytes, "
           "256 ids, no pass")
    a("--maxlen", type=int, help="window length in characters (seed: 40)")
    a("--step", type=int, help="characters between window starts (seed: 3)")
    a("--val-frac", type=float, help="held-out tail of the text (default 0.1)")
    a("--objective", choices=["last", "all"],
      help="last: the character after each window (seed); all: every next character")
    a("--units", type=int, help="LSTM units per layer (seed: 128)")
    a("--layers", type=int, help="LSTM layers (seed: 1)")
    a("--dropout", type=float, help="dropout on each LSTM layer's output")
    a("--learning-rate", type=float, help="peak learning rate (seed: 0.01)")
    a("--lr-schedule", choices=["constant", "cosine"],
      help="constant (seed) or cosine decay to 1/20 over the run")
    a("--clipnorm", type=float, help="clip each gradient tensor to this norm")
    a("--batch-size", type=int, help="global batch, split across workers (seed: 1024)")
    a("--micro-batch", type=int,
      help="CPU: compute each worker's batch in slices of at most this many windows, "
           "gradients summed (same step, less memory; default 512, 0: whole batches)")
    a("--epochs", type=int, help="epochs (seed: 40)")
    a("--max-steps", type=int, help="cap on steps per epoch (smoke tests, benchmark slices): "
                                    "an epoch is then the first N batches of its order")
    a("--num-workers", type=int, help="training workers: one per GPU on a cluster (default 1)")
    a("--use-gpu", action="store_true", default=None, help="one GPU per worker")
    a("--cpus-per-worker", type=int, help="CPUs (and TF threads) per worker "
                                          "(default: 1 on a cluster, the cores shared out locally)")
    a("--placement-strategy", choices=PLACEMENT_STRATEGIES,
      help="where Ray puts the workers: PACK (fewest nodes, default), SPREAD, "
           "STRICT_SPREAD (each on its own node), STRICT_PACK")
    a("--placement-timeout", type=float, metavar="SECONDS",
      help=f"fail if the workers are not placed within this time (default {PLACEMENT_TIMEOUT_S:g}: "
           "a cold start of GPU nodes)")
    a("--shared-filesystem", action="store_true", default=None,
      help="a local --storage-path is a mount that every node of the cluster shares")
    a("--storage-path", help="local directory or s3:// URI for runs (default ~/charlm/runs)")
    a("--name", help="run name; rerunning a name resumes it (default: <corpus>-lstm)")
    a("--keep-checkpoints", type=int, metavar="N",
      help="keep the N checkpoints with the lowest val_loss, plus the latest (to resume "
           "from); 0 keeps every one (default 3)")
    a("--max-failures", type=int, help="restarts of a worker group that lost a worker")
    a("--sample-every", type=int, help="print seed-style samples every N epochs")
    a("--seed", type=int, help="seeds the data order, weight initialisation and dropout "
                               "(default 0)")
    a("--verbose", action="store_true", default=None, help="show TensorFlow and Ray logs")
    a("--patience", type=int,
      help="stop after N epochs without a better val_loss (default 0: never)")
    a("--init-from", metavar="CHECKPOINT",
      help="fine-tune: start from this checkpoint's weights (a run: its best) on --corpus")
    a("--optimizer", choices=["rmsprop", "adam"], help="rmsprop (seed) or adam")
    a("--global-clipnorm", type=float,
      help="clip the whole gradient (all tensors, after the all-reduce) to this norm")
    a("--warmup-steps", type=int, help="linear warm-up from 0 to the learning rate (default 0)")
    a("--precision", choices=list(PRECISIONS),
      help="the LSTM stack's compute dtype: fp32 (default; the quality preset's: bf16), "
           "bf16 or fp16; weights, optimizer state, softmax and loss stay float32")
    a("--weight-average", type=float, metavar="MOMENTUM",
      help="score, checkpoint and generate from an exponential moving average of the "
           "weights with this momentum, e.g. 0.99 (default 0: off)")


def config_from(args: argparse.Namespace) -> TrainConfig:
    from charlm.config import make_config

    fields = {f: getattr(args, f, None) for f in TrainConfig.__dataclass_fields__
              if f != "preset"}
    return make_config(args.preset, **fields)


def run(args: argparse.Namespace) -> str:
    from charlm import runtime

    runtime.quiet(bool(args.verbose))
    from charlm.training.trainer import train

    return train(config_from(args))


def main(argv: list[str] | None = None) -> None:
    job_main("train", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
