"""Training throughput, memory and time to quality: the seed recipe against
charlm's Ray Train trainer (1 and 2 workers) and a plain single-process Keras
trainer, one after another (never concurrently) on the same corpus.

    .venv/bin/python -m benchmarks.train --quick          # smoke test, a few minutes
    .venv/bin/python -m benchmarks.train --epochs 20 --configs seed,plain,charlm1,charlm2,fast
    .venv/bin/python -m benchmarks.train --big            # worker memory on a ~100 MB corpus

Every configuration runs as its own process, so its memory is its own: a
polling thread samples the RSS of the process and all its descendants every
0.2 s (for charlm: the job driver, each Ray Train worker, the raylet and Ray's
other processes, reported separately, plus the object store's own size, which
shows in the RSS of the processes that write or read objects, not the
raylet's). Time to quality is wall time from the process's creation to the
end of the first epoch whose held-out loss reaches a target, so imports, data
preparation and Ray start-up all count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CORPUS = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "nietzsche.txt"))
SEED_SCRIPT = os.path.normpath(os.path.join(ROOT, "..", "shared", "baseline", "seed_reference.py"))
DEFAULT_JSON = os.path.join(ROOT, "benchmarks", "results", "train.json")
BIG_JSON = os.path.join(ROOT, "benchmarks", "results", "train-big.json")
ALL_CONFIGS = ["seed", "plain", "charlm1", "charlm2", "fast"]
DEFAULT_CONFIGS = "seed,plain,charlm1,charlm2"
SEED_BUDGET_EPOCHS = 20  # the issue's yardstick: "within the seed's 20-epoch time"
QUICK_LIMIT = 60_000  # characters: ~16K seed windows, a few seconds per seed epoch
QUICK_STEPS = 8
MB = 1024 * 1024
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the prefix of forwarded worker lines


# --- memory -----------------------------------------------------------------

def _label(cmdline: list[str], name: str) -> str:
    """A short name for a process: Ray's title (ray::RayTrainWorker...), else
    its script or executable."""
    if cmdline and cmdline[0].startswith("ray::"):
        return cmdline[0].split()[0]
    for arg in cmdline:
        if arg.endswith(".py"):
            return os.path.basename(arg)
    return os.path.basename(cmdline[0]) if cmdline else name


def _plasma_file(pid: int) -> str | None:
    """/proc path of the raylet's open object store file (deleted /dev/shm/plasma*)."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            path = f"/proc/{pid}/fd/{fd}"
            try:
                if "plasma" in os.readlink(path):
                    return path
            except OSError:
                continue
    except OSError:
        pass
    return None


class RssPoller(threading.Thread):
    """Peak RSS of a process and each of its descendants, sampled every
    `interval` seconds: short-lived peaks between samples are missed, so the
    root's peak is cross-checked against the kernel's ru_maxrss."""

    def __init__(self, root_pid: int, root_role: str, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root_pid, self.root_role, self.interval = root_pid, root_role, interval
        self.procs: dict[int, dict] = {}
        self.tree_peak = 0
        self.store_peak = 0  # bytes: the object store's shared-memory file, allocated pages
        self._store_file: str | None = None
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
        except psutil.NoSuchProcess:
            return
        while not self._halt.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            total = 0
            for p in tree:
                try:
                    total += self._sample(p)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            self.tree_peak = max(self.tree_peak, total)
            self._sample_store()
            self.samples += 1
            self._halt.wait(self.interval)

    def _sample(self, p: psutil.Process) -> int:
        mem, cmdline, name = p.memory_info(), p.cmdline(), p.name()  # may raise: nothing recorded
        rec = self.procs.get(p.pid)
        if rec is None or rec["proc"].create_time() != p.create_time():  # a reused pid
            rec = self.procs[p.pid] = {"proc": p, "role": "other", "label": "",
                                       "peak": 0, "shared": 0}
        label = _label(cmdline, name)
        # Ray workers retitle themselves (ray::IDLE → ray::RayTrainWorker...):
        # a process that was ever a training worker stays one.
        if p.pid == self.root_pid:
            rec["role"] = self.root_role
        elif "RayTrainWorker" in " ".join(cmdline):
            rec["role"] = "train_worker"
        elif name == "raylet" or label == "raylet":
            rec["role"] = "raylet"
        if label != "ray::IDLE" or not rec["label"]:
            rec["label"] = label
        if mem.rss > rec["peak"]:
            rec["peak"], rec["shared"] = mem.rss, getattr(mem, "shared", 0)
        if rec["role"] == "raylet" and self._store_file is None:
            self._store_file = _plasma_file(p.pid)
        return mem.rss

    def _sample_store(self) -> None:
        """The raylet's own RSS does not grow with the object store (objects are
        written and read through the clients' mappings), so measure the store
        itself: the pages allocated in its /dev/shm file, held open by the raylet."""
        if self._store_file is None:
            return
        try:
            self.store_peak = max(self.store_peak, os.stat(self._store_file).st_blocks * 512)
        except OSError:
            pass

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def summary(self) -> dict:
        """Peaks in MB by role; 'shared' is the shared part (libraries, object
        store pages) of the RSS at its peak."""
        def row(pid: int, r: dict) -> dict:
            return {"pid": pid, "label": r["label"], "peak_rss_mb": round(r["peak"] / MB, 1),
                    "shared_mb_at_peak": round(r["shared"] / MB, 1)}

        by_role: dict[str, list[dict]] = {}
        for pid, r in self.procs.items():
            by_role.setdefault(r["role"], []).append(row(pid, r))
        for rows in by_role.values():
            rows.sort(key=lambda x: -x["peak_rss_mb"])
        root = by_role.get(self.root_role, [None])[0]
        return {
            "interval_s": self.interval, "samples": self.samples,
            "root_role": self.root_role,
            "root_peak_rss_mb": root["peak_rss_mb"] if root else None,
            "train_workers": by_role.get("train_worker", []),
            "raylet": (by_role.get("raylet") or [None])[0],
            "object_store_peak_mb": (round(self.store_peak / MB, 1)
                                     if self._store_file else None),
            "others": by_role.get("other", []),
            # Summed at one sample: pages shared between processes count in each.
            "tree_peak_rss_mb": round(self.tree_peak / MB, 1),
        }

    def leftovers(self) -> list[psutil.Process]:
        """Descendants that outlived the root (ours: started by our child)."""
        alive = []
        for pid, r in self.procs.items():
            if pid != self.root_pid and r["proc"].is_running():  # is_running checks pid reuse
                alive.append(r["proc"])
        return alive


# --- running one configuration ---------------------------------------------

def run_process(name: str, cmd: list[str], env: dict[str, str], logdir: str,
                root_role: str) -> dict:
    """Run cmd to completion with its memory polled; returns its stdout lines,
    each stamped with seconds since the process was created."""
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    load = os.getloadavg()
    stderr_path = os.path.join(logdir, f"{name}.stderr")
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err,
                                text=True, bufsize=1, start_new_session=True)
    created = psutil.Process(proc.pid).create_time()
    poller = RssPoller(proc.pid, root_role)
    poller.start()
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:
            line = ANSI.sub("", line.rstrip())
            lines.append((time.time() - created, line))
            print(f"  [{name}] {line}", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)  # wait4: this child's own ru_maxrss
    except KeyboardInterrupt:
        os.killpg(proc.pid, 15)
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - created
    reader.join(timeout=10)
    poller.stop()
    _reap(poller.leftovers())
    with open(stderr_path, "rb") as f:
        tail = f.read()[-3000:].decode("utf-8", "replace")
    if proc.returncode != 0:
        print(f"  [{name}] FAILED (exit {proc.returncode}); stderr tail:\n{tail}", flush=True)
    memory = poller.summary()
    # KB on Linux: the larger of the process's own peak and its reaped children's.
    memory["ru_maxrss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return {"config": name, "command": cmd, "returncode": proc.returncode,
            "wall_s": round(wall, 1), "load_avg_before": [round(x, 2) for x in load],
            "lines": lines, "memory": memory,
            "stderr_tail": tail if proc.returncode else None}


def _reap(procs: list[psutil.Process], grace: float = 15.0) -> None:
    """Ray tears its processes down as the driver exits; give it time, then
    end what is left so the next configuration starts on a quiet machine."""
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _json_lines(run: dict) -> list[tuple[float, dict]]:
    out = []
    for t, line in run.pop("lines"):
        if line.startswith("{"):
            try:
                out.append((t, json.loads(line)))
            except json.JSONDecodeError:
                pass
    return out


def run_seed(script: str, corpus: str, epochs: int, logdir: str) -> dict:
    """The seed recipe untouched, as its own process. It runs on TensorFlow's
    default Keras, as it would standalone: charlm's tf-keras switch is removed
    from its environment."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    cmd = [sys.executable, script, "--corpus", corpus, "--epochs", str(epochs),
           "--val-frac", "0.1", "--gen-chars", "0"]
    run = run_process("seed", cmd, env, logdir, "seed")
    rows = _json_lines(run)
    run["epochs"] = [{"epoch": r["epoch"], "loss": r["loss"], "val_loss": r.get("val_loss"),
                      "windows_per_s": r["windows_per_s"], "epoch_s": r["train_s"],
                      "at_s": round(t, 1)} for t, r in rows]
    run["windows_per_epoch"] = rows[0][1]["windows"] if rows else None  # partial last batch too
    # The check the issue asks for; the largest of all children reaped so far,
    # which is the seed's own figure as long as the seed runs first.
    run["memory"]["getrusage_children_mb"] = round(
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    return run


def run_plain(corpus: str, epochs: int, max_steps: int | None, logdir: str) -> dict:
    """charlm's model, trained by plain Keras in one process (no Ray), with
    the environment a Ray worker gets (malloc settings): the reference for
    what distribution costs."""
    from charlm.runtime import worker_env

    cmd = [sys.executable, "-m", "benchmarks.train", "--plain-child", "--corpus", corpus,
           "--epochs", str(epochs)]
    if max_steps:
        cmd += ["--max-steps", str(max_steps)]
    env = {**os.environ, **worker_env(verbose=False)}
    run = run_process("plain", cmd, env, logdir, "plain")
    rows = _json_lines(run)
    run["epochs"] = [{k: r[k] for k in ("epoch", "loss", "val_loss", "windows_per_s", "epoch_s")}
                     | {"at_s": round(t, 1)} for t, r in rows]
    run["windows_per_epoch"] = rows[0][1]["windows"] if rows else None
    run["threads"] = rows[0][1]["threads"] if rows else None
    return run


HEADER = re.compile(r"([\d,]+) training windows; (\d+) worker\(s\) × (\d+) steps per epoch")


def run_charlm(name: str, preset: str, workers: int, epochs: int, corpus: str,
               max_steps: int | None, storage: str, logdir: str,
               extra: list[str] | None = None) -> dict:
    """charlm's real job (`python -m jobs.train`) with an embedded Ray: per-epoch
    figures come from the run's history.parquet, written by worker 0."""
    import pyarrow.parquet as pq

    from charlm.config import make_config

    cmd = [sys.executable, "-m", "jobs.train", "--corpus", corpus, "--preset", preset,
           "--epochs", str(epochs), "--num-workers", str(workers),
           "--storage-path", storage, "--name", name, *(extra or [])]
    if max_steps:
        cmd += ["--max-steps", str(max_steps)]
    # Embedded Ray only: on a cluster the workers are not our descendants.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = run_process(name, cmd, env, logdir, "driver")
    header = next((HEADER.search(line) for _, line in run.pop("lines") if HEADER.search(line)),
                  None)
    steps = int(header.group(3)) if header else None
    batch = make_config(preset).batch_size
    per_worker = batch // workers
    run["windows_per_epoch"] = steps * per_worker * workers if steps else None
    history = os.path.join(storage, name, "history.parquet")
    rows = pq.read_table(history).to_pylist() if os.path.exists(history) else []
    run["epochs"] = [{
        "epoch": r["epoch"], "loss": round(r["loss"], 4), "val_loss": round(r["val_loss"], 4),
        "windows_per_s": round(r["windows_per_s"], 1),
        "epoch_s": (round(run["windows_per_epoch"] / r["windows_per_s"], 2)
                    if run["windows_per_epoch"] else None),
        "at_s": round(r["elapsed_s"], 1)} for r in rows]
    run["preset"], run["num_workers"] = preset, workers
    return run


# --- figures ----------------------------------------------------------------

def steady(run: dict | None) -> list[dict]:
    """Epochs after the first when there are several: the first also pays for
    graph tracing and warm-up, which time to quality already counts."""
    epochs = (run or {}).get("epochs") or []
    return epochs[1:] if len(epochs) > 1 else epochs


def median_wps(run: dict | None) -> float | None:
    vals = [e["windows_per_s"] for e in steady(run)]
    return statistics.median(vals) if vals else None


def median_epoch_s(run: dict | None) -> float | None:
    vals = [e["epoch_s"] for e in steady(run) if e.get("epoch_s") is not None]
    return statistics.median(vals) if vals else None


def time_to_quality(run: dict, targets: list[float]) -> dict:
    """For each target: seconds from process creation to the end of the first
    epoch whose held-out loss is at or below it (None: not reached)."""
    out = {}
    for target in targets:
        hit = next((e for e in run.get("epochs", [])
                    if e.get("val_loss") is not None and e["val_loss"] <= target), None)
        out[str(target)] = {"s": hit["at_s"], "epoch": hit["epoch"]} if hit else None
    return out


def train_rss(run: dict | None) -> float | None:
    """Peak RSS of the process that trains: the seed or plain process, or the
    largest Ray Train worker."""
    if not run:
        return None
    m = run["memory"]
    if m["root_role"] in ("seed", "plain"):
        return m["root_peak_rss_mb"]
    return max((w["peak_rss_mb"] for w in m["train_workers"]), default=None)


def seed_budget_s(seed: dict | None) -> tuple[float | None, bool]:
    """The seed's time to finish SEED_BUDGET_EPOCHS epochs, whole process;
    extrapolated from the epochs run when fewer (then flagged estimated)."""
    if not seed or not seed.get("epochs"):
        return None, False
    ep = seed["epochs"]
    if len(ep) >= SEED_BUDGET_EPOCHS:
        return ep[SEED_BUDGET_EPOCHS - 1]["at_s"], False
    if len(ep) >= 2:
        per = (ep[-1]["at_s"] - ep[0]["at_s"]) / (len(ep) - 1)
    else:
        per = ep[0]["epoch_s"]
    return round(ep[-1]["at_s"] + per * (SEED_BUDGET_EPOCHS - len(ep)), 1), True


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def ratios(runs: dict, targets: list[float]) -> dict:
    """The comparisons the issue asks for; None where a side was not run or
    did not get there."""
    seed, c1, c2, plain = (runs.get(k) for k in ("seed", "charlm1", "charlm2", "plain"))
    budget, estimated = seed_budget_s(seed)
    out = {
        "charlm1_windows_per_s_vs_seed": _ratio(median_wps(c1), median_wps(seed)),
        "charlm1_worker_peak_rss_vs_seed_peak_rss": _ratio(train_rss(c1), train_rss(seed)),
        "charlm1_windows_per_s_vs_plain": _ratio(median_wps(c1), median_wps(plain)),
        "charlm2_windows_per_s_vs_charlm1": _ratio(median_wps(c2), median_wps(c1)),
        "seed_budget_epochs": SEED_BUDGET_EPOCHS,
        "seed_budget_s": budget, "seed_budget_estimated": estimated,
    }
    seed_ttq = time_to_quality(seed, targets) if seed else {}
    for t in targets:
        key = str(t)
        base = (seed_ttq.get(key) or {}).get("s")
        out[f"time_to_{key}_vs_seed"] = {
            n: _ratio((r["time_to_quality"].get(key) or {}).get("s"), base)
            for n, r in runs.items() if n != "seed"}
        out[f"reached_{key}_within_seed_budget"] = {
            n: (None if budget is None else
                bool(r["time_to_quality"].get(key)) and r["time_to_quality"][key]["s"] <= budget)
            for n, r in runs.items()}
    return out


def _fmt(v, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(runs: dict, rat: dict, targets: list[float]) -> None:
    """Configurations side by side, then the ratios."""
    order = [n for n in ("seed", "charlm1", "charlm2", "plain", "fast") if n in runs]
    if not order:
        return

    def last(run, key):
        return run["epochs"][-1][key] if run.get("epochs") else None

    def best_val(run):
        vals = [e["val_loss"] for e in run.get("epochs", []) if e.get("val_loss") is not None]
        return min(vals) if vals else None

    def workers_rss(run):
        m = run["memory"]
        if m["root_role"] != "driver":
            return _fmt(m["root_peak_rss_mb"])
        return " / ".join(_fmt(w["peak_rss_mb"]) for w in m["train_workers"]) or "-"

    def root_if(run, role):
        return run["memory"]["root_peak_rss_mb"] if run["memory"]["root_role"] == role else None

    def first_at(run):
        return run["epochs"][0]["at_s"] if run.get("epochs") else None

    def ttq_getter(target):
        return lambda run: _fmt((run["time_to_quality"].get(str(target)) or {}).get("s"), ".1f")

    def raylet(run):
        r = run["memory"]["raylet"]
        return f"{r['peak_rss_mb']:,.0f}" if r else "-"

    def other_max(run):
        o = run["memory"]["others"]
        return f"{o[0]['peak_rss_mb']:,.0f} {o[0]['label'][:12]}" if o else "-"

    rows = [
        ("epochs run", lambda r: str(len(r.get("epochs", [])))),
        ("exit code", lambda r: str(r["returncode"])),
        ("windows/epoch", lambda r: _fmt(r.get("windows_per_epoch"))),
        ("windows/s (median*)", lambda r: _fmt(median_wps(r))),
        ("epoch s (median*)", lambda r: _fmt(median_epoch_s(r), ".1f")),
        ("loss (last epoch)", lambda r: _fmt(last(r, "loss"), ".4f")),
        ("val_loss (last epoch)", lambda r: _fmt(last(r, "val_loss"), ".4f")),
        ("val_loss (best)", lambda r: _fmt(best_val(r), ".4f")),
        ("1st epoch done at s", lambda r: _fmt(first_at(r), ".1f")),
        ("process wall s", lambda r: _fmt(r["wall_s"], ".1f")),
        ("peak RSS trainer MB", workers_rss),
        ("peak RSS driver MB", lambda r: _fmt(root_if(r, "driver"))),
        ("peak RSS raylet MB", raylet),
        ("object store peak MB", lambda r: _fmt(r["memory"].get("object_store_peak_mb"))),
        ("peak RSS other Ray MB", other_max),
        ("tree peak MB (sum)", lambda r: _fmt(r["memory"]["tree_peak_rss_mb"])),
        ("ru_maxrss MB (wait4)", lambda r: _fmt(r["memory"]["ru_maxrss_mb"])),
        *[(f"time to val<={t} s", ttq_getter(t)) for t in targets],
        ("load avg before", lambda r: f"{r['load_avg_before'][0]:.2f}"),
    ]
    w = 18
    print("\n" + "".ljust(26) + "".join(n.rjust(w) for n in order))
    for label, get in rows:
        print(label.ljust(26) + "".join(get(runs[n]).rjust(w) for n in order))

    print("* median over epochs 2.. when more than one ran (epoch 1 includes warm-up)")
    print("\nper epoch: loss / val_loss / windows/s / epoch s / done at s")
    for n in order:
        for e in runs[n].get("epochs", []):
            print(f"  {n:8} {e['epoch']:3d}  {_fmt(e['loss'], '.4f')}  "
                  f"{_fmt(e['val_loss'], '.4f')}  {_fmt(e['windows_per_s'])}  "
                  f"{_fmt(e['epoch_s'], '.1f')}  {_fmt(e['at_s'], '.1f')}")

    print("\nratios")
    for key, value in rat.items():
        print(f"  {key:44} {value}")


# --- memory at scale --------------------------------------------------------

def run_big(mb: float, steps: int, val_frac: float | None, tmp: str) -> dict:
    """One slice of an epoch on a ~100 MB corpus, 1 worker, seed preset: does
    a training worker stay under 2 GB, and what do the driver and the object
    store (raylet) carry?"""
    from benchmarks.corpus100mb import build

    path = os.path.join(tmp, "big.txt")
    t0 = time.perf_counter()
    size = build(path, mb)
    print(f"\nbuilt {size:,}-byte corpus in {time.perf_counter() - t0:.1f} s: {path}", flush=True)
    extra = ["--val-frac", str(val_frac)] if val_frac else []
    run = run_charlm("big", "seed", 1, 1, path, steps, os.path.join(tmp, "runs"),
                     tmp, extra=extra)
    os.remove(path)
    worker = train_rss(run)
    run.update({"corpus_bytes": size, "max_steps": steps, "val_frac": val_frac or 0.1,
                "worker_peak_rss_mb": worker,
                "worker_under_2gb": None if worker is None else worker < 2048})
    m = run["memory"]
    print(f"\nbig corpus ({size / 1e6:.0f} MB, {steps} steps, 1 worker): exit {run['returncode']}, "
          f"wall {run['wall_s']:.0f} s")
    print(f"  train worker peak RSS   {_fmt(worker)} MB  (< 2048 MB: {run['worker_under_2gb']})")
    for w in m["train_workers"]:
        print(f"    pid {w['pid']}: {w['peak_rss_mb']:,.0f} MB, of it shared "
              f"{w['shared_mb_at_peak']:,.0f} MB")
    print(f"  driver peak RSS         {_fmt(m['root_peak_rss_mb'])} MB")
    if m["raylet"]:
        print(f"  raylet peak RSS         {m['raylet']['peak_rss_mb']:,.0f} MB")
    print(f"  object store peak       {_fmt(m['object_store_peak_mb'])} MB "
          "(allocated pages of its shared-memory file; counted in the RSS of the "
          "processes that wrote or read them, not the raylet's)")
    for o in m["others"][:5]:
        print(f"  {o['label'][:22]:22}  {o['peak_rss_mb']:,.0f} MB")
    print(f"  whole tree (sum)        {m['tree_peak_rss_mb']:,.0f} MB;  "
          f"ru_maxrss (wait4) {m['ru_maxrss_mb']:,.0f} MB")
    return run


# --- the plain trainer (child process) --------------------------------------

def plain_child(corpus_path: str, epochs: int, max_steps: int | None) -> None:
    """Runs in its own process: seed-preset model and train step from
    charlm.model, all windows in memory, Keras fit on fixed-size batches (as
    charlm's workers get them, so the step is sliced the same way, and with
    the same tf.data options), TF threads set as charlm's single worker sets
    them. One JSON line per epoch."""
    import charlm  # noqa: F401, I001  (first: selects tf-keras)
    import numpy as np
    import tensorflow as tf

    from charlm.config import VAL_MAXLEN, VAL_STEP, make_config
    from charlm.corpus import load_corpus
    from charlm.model import (build_model, compile_model, mean_log_loss, split_xy,
                              without_autotune)
    from charlm.runtime import set_training_threads
    from charlm.windows import split, windows

    threads = set_training_threads(os.cpu_count() or 1)
    config = make_config("seed", corpus=corpus_path, epochs=epochs)
    corpus = load_corpus(corpus_path, min_chars=config.maxlen + 1)
    train_ids, val_ids = split(corpus.ids, config.val_frac, config.maxlen, VAL_MAXLEN)
    x, y = split_xy(windows(train_ids, config.maxlen, config.step), config.objective)
    x, y = np.ascontiguousarray(x, np.int32), y.astype(np.int32)
    val = windows(val_ids, VAL_MAXLEN, VAL_STEP)
    steps = len(x) // config.batch_size  # full batches only, as charlm
    steps = min(steps, max_steps) if max_steps else steps
    model = build_model(config, len(corpus.vocab))
    compile_model(model, config)
    rng = np.random.default_rng(0)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x))[:steps * config.batch_size]  # fresh order per epoch
        data = without_autotune(tf.data.Dataset.from_tensor_slices((x[order], y[order]))
                                .batch(config.batch_size, drop_remainder=True).prefetch(2))
        t0 = time.perf_counter()
        hist = model.fit(data, epochs=1, verbose=0)
        train_s = time.perf_counter() - t0
        print(json.dumps({
            "epoch": epoch, "loss": round(float(hist.history["loss"][0]), 4),
            "val_loss": round(mean_log_loss(model, val), 4),
            "windows": steps * config.batch_size, "epoch_s": round(train_s, 3),
            "windows_per_s": round(steps * config.batch_size / train_s, 1),
            "threads": list(threads)}), flush=True)


# --- machine and main ---------------------------------------------------------

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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=1,
                   help="epochs for every configuration (default 1)")
    p.add_argument("--corpus", default=DEFAULT_CORPUS, help=f"text file (default {DEFAULT_CORPUS})")
    p.add_argument("--configs", help=f"comma list of {','.join(ALL_CONFIGS)} "
                                     f"(default {DEFAULT_CONFIGS}; none with --big)")
    p.add_argument("--fast-epochs", type=int,
                   help="epochs for the fast preset (default: the preset's own; "
                        "--epochs with --quick)")
    p.add_argument("--targets", default="1.55,1.35", help="held-out losses for time to quality")
    p.add_argument("--max-steps", type=int,
                   help="cap on steps per epoch for plain and charlm (the seed cannot be capped)")
    p.add_argument("--limit", type=int, help="use only the first N characters of the corpus")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: --limit {QUICK_LIMIT} and --max-steps {QUICK_STEPS}")
    p.add_argument("--big", action="store_true",
                   help="memory at scale: one slice of an epoch on a generated ~100 MB corpus")
    p.add_argument("--big-mb", type=float, default=100.0, help="size of the --big corpus in MB")
    p.add_argument("--big-steps", type=int,
                   help="training steps in --big (default 50; 5 with --quick)")
    p.add_argument("--big-val-frac", type=float,
                   help="held-out fraction in --big (default charlm's 0.1: ~3.3M held-out "
                        "windows scored at the end, minutes on 2 cores; 0.01 with --quick)")
    p.add_argument("--seed-script", default=SEED_SCRIPT, help="the seed recipe script")
    p.add_argument("--json", help=f"results file (default {DEFAULT_JSON}, "
                                  f"or {BIG_JSON} for --big alone)")
    p.add_argument("--plain-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.configs is None:
        args.configs = "" if args.big else DEFAULT_CONFIGS
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(args.configs) - set(ALL_CONFIGS)
    if unknown:
        p.error(f"--configs: unknown {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(ALL_CONFIGS)}")
    if args.quick:
        args.limit = args.limit or QUICK_LIMIT
        args.max_steps = args.max_steps or QUICK_STEPS
        args.fast_epochs = args.fast_epochs or args.epochs
        args.big_steps = args.big_steps or 5
        args.big_val_frac = args.big_val_frac or 0.01
    args.big_steps = args.big_steps or 50
    if args.json is None:
        args.json = BIG_JSON if args.big and not args.configs else DEFAULT_JSON
    args.targets = [float(t) for t in args.targets.split(",") if t]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.plain_child:
        plain_child(args.corpus, args.epochs, args.max_steps)
        return
    if not os.path.isfile(args.corpus):
        sys.exit(f"error: corpus {args.corpus} does not exist; pass --corpus PATH")

    tmp = tempfile.mkdtemp(prefix="charlm-trainbench-")
    results: dict = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "args": {k: v for k, v in vars(args).items() if k != "plain_child"},
                     "runs": {}}
    print(json.dumps(results["machine"]))
    try:
        corpus = args.corpus
        if args.limit:  # every configuration reads the same truncated copy
            corpus = os.path.join(tmp, "corpus.txt")
            with open(args.corpus, encoding="utf-8") as f:
                text = f.read(args.limit)
            with open(corpus, "w", encoding="utf-8") as f:
                f.write(text)
        results["corpus"] = {"path": args.corpus, "limit": args.limit,
                             "bytes": os.path.getsize(corpus)}
        runs = results["runs"]
        fast_epochs = args.fast_epochs  # None: the preset's own
        for name in [c for c in ALL_CONFIGS if c in args.configs]:
            storage = os.path.join(tmp, "runs")
            if name == "seed":
                run = run_seed(args.seed_script, corpus, args.epochs, tmp)
            elif name == "plain":
                run = run_plain(corpus, args.epochs, args.max_steps, tmp)
            elif name in ("charlm1", "charlm2"):
                run = run_charlm(name, "seed", int(name[-1]), args.epochs, corpus,
                                 args.max_steps, storage, tmp)
            else:
                from charlm.config import PRESETS
                run = run_charlm("fast", "fast", 1, fast_epochs or PRESETS["fast"]["epochs"],
                                 corpus, args.max_steps, storage, tmp)
            run["time_to_quality"] = time_to_quality(run, args.targets)
            runs[name] = run
            results["ratios"] = ratios(runs, args.targets)
            write_json(args.json, results)
        if runs:
            print_table(runs, results["ratios"], args.targets)
        if args.big:
            results["big"] = run_big(args.big_mb, args.big_steps, args.big_val_frac, tmp)
        results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        write_json(args.json, results)
        print(f"\nwrote {args.json}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    failed = [r["config"] for r in [*results["runs"].values(), results.get("big") or {}]
              if r and r["returncode"] != 0]
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (stderr tails in {args.json})")


if __name__ == "__main__":
    sys.path.insert(0, ROOT)  # also runnable as `python benchmarks/train.py`
    main()
