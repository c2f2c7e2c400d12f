"""What every training benchmark shares: paths, the machine's description,
the results file (written after every configuration) and table cells."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CORPUS = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "nietzsche.txt"))
SEED_SCRIPT = os.path.normpath(os.path.join(ROOT, "..", "shared", "baseline", "seed_reference.py"))
OUT = os.path.join(ROOT, "out", "benchmarks")  # default results; BENCHMARKS.md's are in results/
MB = 1024 * 1024


def machine() -> dict:
    """What the figures were measured on."""
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor())

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {"nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
            "cpu_model": model, "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            **{pkg: version(pkg) for pkg in ("tensorflow", "tf_keras", "keras", "ray", "numpy")},
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}


def write_json(path: str, results: dict) -> None:
    """Atomically, after every configuration: a late failure keeps the rest."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


def fmt(v, spec: str = ",.0f") -> str:
    """A table cell: '-' for a figure that was not measured."""
    return "-" if v is None else format(v, spec)


@contextmanager
def session(args: argparse.Namespace) -> Iterator[tuple[dict, str]]:
    """The results (machine, start time, arguments) and a scratch directory
    for one invocation; on a clean exit, stamps the end and writes args.json."""
    tmp = tempfile.mkdtemp(prefix="charlm-trainbench-")
    results: dict = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "args": vars(args)}
    print(json.dumps(results["machine"]))
    try:
        yield results, tmp
        results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        write_json(args.json, results)
        print(f"\nwrote {args.json}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def exit_if_failed(runs: list[dict], path: str) -> None:
    """Non-zero exit when a configuration failed; its stderr tail is in the results."""
    failed = [r["config"] for r in runs if r["returncode"] != 0]
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (stderr tails in {path})")
