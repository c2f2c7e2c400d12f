"""Memory flat in corpus size: the same short training slice (1 worker, seed
preset, 20 steps) on directory corpora of 100 MB and 1 GB, each job's process
tree polled for RSS.

    .venv/bin/python -m benchmarks.memory                 # 100 MB and 1 GB
    .venv/bin/python -m benchmarks.memory --sizes 100     # 100 MB only

A corpus is a directory of ~10 MB .txt files built offline
(benchmarks.corpus100mb, one seed per file), so each file is also cut into
stretches. Every process's peak RSS, the largest sum over the tree at one
sample (shared pages count in each process that maps them), the object
store's allocated pages, and when the corpus was ready, training began and
the slice ended, in seconds since the job process started.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from benchmarks.common import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILE_MB = 10
STEPS = 20
MB = 1 << 20
EPOCH = re.compile(r"epoch 1/1 .* ([\d,]+) windows/s")


def build_corpus(directory: str, mb: int) -> int:
    from benchmarks.corpus100mb import build

    os.makedirs(directory, exist_ok=True)
    total = 0
    for i in range(-(-mb // FILE_MB)):
        total += build(os.path.join(directory, f"part-{i:04d}.txt"), min(FILE_MB, mb - i * FILE_MB),
                       seed=i)
    return total


class Poller(threading.Thread):
    """Peak RSS per process of a tree, the tree's peak sum, and the object
    store's allocated bytes (its /dev/shm file, open in the raylet)."""

    def __init__(self, pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peaks: dict[int, tuple[int, str]] = {}
        self.shared: dict[int, int] = {}  # shared pages (libraries, Ray's store) at the peak
        self.tree_peak = self.store_peak = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        root = psutil.Process(self.pid)
        while not self.stop_event.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in tree:
                try:
                    mem, cmd = p.memory_info(), p.cmdline()
                    rss = mem.rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                total += rss
                label = cmd[0].split()[0] if cmd and cmd[0].startswith("ray::") else \
                    " ".join(os.path.basename(a) for a in cmd[:3])[:60]
                old = self.peaks.get(p.pid, (0, label))
                if rss > old[0]:
                    self.shared[p.pid] = mem.shared
                # a Ray worker is retitled as it takes work: keep its busiest name
                self.peaks[p.pid] = (max(old[0], rss), label if rss >= old[0] or
                                     old[1].startswith("ray::IDLE") else old[1])
                if "raylet" in label:
                    self.store_peak = max(self.store_peak, _store_bytes(p.pid))
            self.tree_peak = max(self.tree_peak, total)
            self.stop_event.wait(self.interval)


def _store_bytes(pid: int) -> int:
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if "plasma" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                    return os.stat(f"/proc/{pid}/fd/{fd}").st_blocks * 512
            except OSError:
                continue
    except OSError:
        pass
    return 0


def run_slice(corpus: str, tmp: str) -> dict:
    # A run of its own per corpus: the same name would resume the last one.
    cmd = [sys.executable, "-m", "jobs.train", "--corpus", corpus, "--preset", "seed",
           "--num-workers", "1", "--epochs", "1", "--max-steps", str(STEPS),
           "--storage-path", os.path.join(tmp, "runs"), "--name", os.path.basename(corpus)]
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    started = psutil.Process(proc.pid).create_time()
    poller = Poller(proc.pid)
    poller.start()
    marks: dict[str, float] = {}
    tail: list[str] = []
    for line in proc.stdout:
        now = time.time() - started
        line = line.rstrip()
        tail = (tail + [line])[-20:]
        print(f"  [{now:6.1f}s] {line}", flush=True)
        if line.startswith("corpus "):
            marks["corpus_ready_s"] = now
        m = EPOCH.search(line)
        if m:
            marks["slice_end_s"] = now
            # The epoch's training time is its steps over its rate; the line
            # also waited for held-out scoring, so this is a bound from above.
            epoch_s = STEPS * 1024 / float(m.group(1).replace(",", ""))
            marks["training_starts_s"] = now - epoch_s
    proc.wait()
    poller.stop_event.set()
    poller.join()
    wall = time.time() - started
    procs = sorted(((rss, label, poller.shared.get(pid, 0))
                    for pid, (rss, label) in poller.peaks.items()), reverse=True)
    return {"returncode": proc.returncode, "wall_s": round(wall, 1),
            **{k: round(v, 1) for k, v in marks.items()},
            "largest_process_mb": round(procs[0][0] / MB), "largest_process": procs[0][1],
            "tree_peak_sum_mb": round(poller.tree_peak / MB),
            "object_store_peak_mb": round(poller.store_peak / MB),
            # [label, peak RSS MB, of it shared MB]
            "processes": [[label, round(rss / MB), round(shared / MB)]
                          for rss, label, shared in procs],
            "tail": tail if proc.returncode else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000", help="corpus sizes in MB (default 100,1000)")
    parser.add_argument("--tmp", default=None, help="where corpora and runs go")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results",
                                                       "memory.json"))
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="charlm-memory-", dir=args.tmp)
    results = {"load_avg_before": os.getloadavg(), "cpus": os.cpu_count(), "runs": {}}
    try:
        for mb in [int(s) for s in args.sizes.split(",")]:
            corpus = os.path.join(tmp, f"corpus-{mb}mb")
            t0 = time.perf_counter()
            size = build_corpus(corpus, mb)
            print(f"\nbuilt {size:,} bytes in {-(-mb // FILE_MB)} files in "
                  f"{time.perf_counter() - t0:.0f} s: {corpus}", flush=True)
            run = run_slice(corpus, tmp)
            run.update(corpus_bytes=size, load_avg_after=os.getloadavg())
            results["runs"][f"{mb}MB"] = run
            shutil.rmtree(corpus)
            print(json.dumps({k: v for k, v in run.items() if k != "tail"}, indent=1), flush=True)
        sizes = list(results["runs"].values())
        if len(sizes) == 2 and all(r["returncode"] == 0 for r in sizes):
            small, big = sizes
            results["largest_process_growth"] = round(
                big["largest_process_mb"] / small["largest_process_mb"] - 1, 3)
            print(f"largest process grows {results['largest_process_growth']:+.1%}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        write_json(args.json, results)
        print(f"results: {args.json}")


if __name__ == "__main__":
    main()
