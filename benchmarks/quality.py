"""Time to quality: the seed recipe's 20 epochs against charlm's fast preset
(1 worker), each as its own process on the same corpus; wall time from the
process's creation to the first epoch whose held-out loss reaches each target.

    .venv/bin/python -m benchmarks.quality --quick        # smoke test, a few minutes
    .venv/bin/python -m benchmarks.quality --json benchmarks/results/train-quality.json
"""

from __future__ import annotations

from benchmarks import compare


def main(argv: list[str] | None = None) -> None:
    compare.main(argv, prog="python -m benchmarks.quality", doc=__doc__,
                 configs=["seed", "fast"], epochs=compare.SEED_BUDGET_EPOCHS,
                 json_name="train-quality.json")


if __name__ == "__main__":
    main()
