"""What a Ray worker process costs to start, side by side in one run: with
charlm's runtime_env (as its jobs give one on a cluster) and without (an
embedded Ray's workers, which inherit the driver's environment). Each case is
a fresh process that starts its own embedded Ray and `--actors` actors that
ask for no CPU; their processes' CPU seconds are summed once all have
answered. The cases are interleaved, `--repeats` processes each.

    .venv/bin/python -m benchmarks.workers --json benchmarks/results/workers.json

A worker with a runtime_env starts through Ray's setup_worker, a Python that
imports Ray and then execs the worker.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks.common import machine, write_json

CASES = ("no runtime_env", "charlm's runtime_env")


def one(case: str, actors: int) -> float:
    """In this process: an embedded Ray, `actors` actors, their CPU seconds each."""
    import psutil
    import ray

    from charlm import runtime

    runtime.quiet(False)
    env = runtime.runtime_env(False) if case == CASES[1] else None
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)

    @ray.remote(num_cpus=0)
    class Idle:
        def pid(self) -> int:
            return os.getpid()

    handles = [Idle.remote() for _ in range(actors)]  # alive while held
    pids = ray.get([a.pid.remote() for a in handles])
    time.sleep(1)  # each has answered: its start is done
    cpu = sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)
    ray.shutdown()
    return cpu / actors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--one", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.actors)))
        return
    samples: dict[str, list[float]] = {case: [] for case in CASES}
    for _ in range(args.repeats):
        for case in CASES:
            out = subprocess.run([sys.executable, "-m", "benchmarks.workers", "--one", case,
                                  "--actors", str(args.actors)],
                                 capture_output=True, text=True, check=True).stdout
            samples[case].append(json.loads(out.strip().splitlines()[-1]))
    rows = [{"case": case, "cpu_s_per_worker": statistics.median(runs), "runs": runs,
             "actors": args.actors} for case, runs in samples.items()]
    print(f"{'case':<22} {'CPU s per worker':>17}  (medians of {args.repeats} runs of "
          f"{args.actors} actors)")
    for row in rows:
        print(f"{row['case']:<22} {row['cpu_s_per_worker']:>17.2f}")
    if args.json:
        write_json(args.json, {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
