"""The configurations measured, each run as its own process (the seed recipe,
the plain single-process trainer, charlm's training job), turned into one
record: exit code, wall time, memory, and per-epoch loss, held-out loss,
windows/s and the time since the process was created."""

from __future__ import annotations

import os
import re
import resource
import sys

from benchmarks.process import json_lines, run_process


def run_seed(script: str, corpus: str, epochs: int, logdir: str) -> dict:
    """The seed recipe untouched, as its own process. It runs on TensorFlow's
    default Keras, as it would standalone: charlm's tf-keras switch is removed
    from its environment."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    cmd = [sys.executable, script, "--corpus", corpus, "--epochs", str(epochs),
           "--val-frac", "0.1", "--gen-chars", "0"]
    run = run_process("seed", cmd, env, logdir, "seed")
    rows = json_lines(run)
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

    cmd = [sys.executable, "-m", "benchmarks.plain", "--corpus", corpus, "--epochs", str(epochs)]
    if max_steps:
        cmd += ["--max-steps", str(max_steps)]
    env = {**os.environ, **worker_env(verbose=False)}
    run = run_process("plain", cmd, env, logdir, "plain")
    rows = json_lines(run)
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


def train_rss(run: dict | None) -> float | None:
    """Peak RSS of the process that trains: the seed or plain process, or the
    largest Ray Train worker."""
    if not run:
        return None
    m = run["memory"]
    if m["root_role"] in ("seed", "plain"):
        return m["root_peak_rss_mb"]
    return max((w["peak_rss_mb"] for w in m["train_workers"]), default=None)

