"""Training throughput and memory: the seed recipe against charlm's Ray Train
trainer with 1 and 2 workers and a plain single-process Keras trainer, each as
its own process, one after another on the same corpus.

    .venv/bin/python -m benchmarks.throughput --quick     # smoke test, a few minutes
    .venv/bin/python -m benchmarks.throughput --json benchmarks/results/train-throughput.json
"""

from __future__ import annotations

from benchmarks import compare


def main(argv: list[str] | None = None) -> None:
    compare.main(argv, prog="python -m benchmarks.throughput", doc=__doc__,
                 configs=["seed", "plain", "charlm1", "charlm2"], epochs=4,
                 json_name="train-throughput.json")


if __name__ == "__main__":
    main()
