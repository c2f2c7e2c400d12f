"""What a process pays to import TensorFlow, side by side in one run: charlm's
training worker's imports (tensorflow, tf_keras) and the seed script's
(tensorflow, keras), each with the installed ml_dtypes and with the ml_dtypes
found in `--other-ml-dtypes` (a `pip install --no-deps --target DIR
ml_dtypes==X` directory), interleaved, `--repeats` fresh processes each.

    pip install --no-deps --target /tmp/ml_dtypes-0.7.0 ml_dtypes==0.7.0
    .venv/bin/python -m benchmarks.imports --other-ml-dtypes /tmp/ml_dtypes-0.7.0 \
        --json benchmarks/results/imports.json

Every Ray worker that imports TensorFlow (training workers, generation and
scoring actors, the doctor's node checks) pays this once.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

from benchmarks.common import machine, write_json

IMPORTS = {"charlm worker": "tensorflow, tf_keras", "seed script": "tensorflow, keras"}


def one(modules: str, path: str | None) -> tuple[float, float, str]:
    """(CPU seconds, wall seconds, ml_dtypes version) of one fresh process."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    if "tf_keras" not in modules:  # the seed script's Keras 3
        env.pop("TF_USE_LEGACY_KERAS")
    if path:
        env["PYTHONPATH"] = path
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", f"import {modules}, ml_dtypes; "
                          "print(ml_dtypes.__version__)"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other-ml-dtypes", required=True, help="a --target directory")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.repeats):
        for name, modules in IMPORTS.items():
            for path in (None, args.other_ml_dtypes):
                cpu, wall, version = one(modules, path)
                samples.setdefault((name, version), []).append((cpu, wall))
    rows = [{"imports": name, "ml_dtypes": version,
             "cpu_s": statistics.median(c for c, _ in runs),
             "wall_s": statistics.median(w for _, w in runs), "repeats": len(runs)}
            for (name, version), runs in samples.items()]
    print(f"{'imports':<14} {'ml_dtypes':<10} {'CPU s':>6} {'wall s':>7}  (medians of "
          f"{args.repeats})")
    for row in rows:
        print(f"{row['imports']:<14} {row['ml_dtypes']:<10} {row['cpu_s']:>6.2f} "
              f"{row['wall_s']:>7.2f}")
    if args.json:
        write_json(args.json, {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
