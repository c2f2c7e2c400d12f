"""Runs side by side (`jobs.report --runs`), and what a directory of runs
stands for: its runs, and its best checkpoint. A run is a directory that
jobs.train wrote (its history.parquet, its checkpoints); a sweep directory,
or any directory, holds runs one level down."""

from __future__ import annotations

import math
import posixpath

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from charlm import charts, storage
from charlm.errors import CharlmError
from charlm.model import checkpoint

HISTORY = "history.parquet"  # as charlm.training.metrics writes it, one row per epoch


def _subdirectories(uri: str) -> list[str]:
    fs, path = storage.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return [storage.join(uri, posixpath.basename(i.path.rstrip("/"))) for i in
            sorted(infos, key=lambda i: i.path) if i.type == pafs.FileType.Directory]


def _missing(uri: str, what: str) -> CharlmError:
    return CharlmError(f"{uri} {what}; pass a run directory written by jobs.train, or a "
                       "directory of runs such as a sweep's")


def runs_in(uri: str) -> list[str]:
    """`uri` itself if it is a run, else the runs directly under it."""
    uri = storage.normalize(uri)
    if not storage.exists(uri):
        raise _missing(uri, "does not exist")
    if storage.exists(storage.join(uri, HISTORY)):
        return [uri]
    runs = [d for d in _subdirectories(uri) if storage.exists(storage.join(d, HISTORY))]
    if not runs:
        raise _missing(uri, f"holds no run (no {HISTORY} in it or one level down)")
    return runs


def best_checkpoint(uri: str) -> str:
    """A checkpoint as it is; a run's best checkpoint (charlm.model.checkpoint);
    for a directory of runs, such as a sweep's, the best of its runs' best:
    the lowest finite val_loss."""
    uri = storage.normalize(uri)
    if not storage.exists(uri):
        raise _missing(uri, "does not exist")
    if storage.exists(storage.join(uri, checkpoint.META)) or checkpoint.in_run(uri):
        return checkpoint.locate(uri)
    scored = []
    for run in _subdirectories(uri):
        if not checkpoint.in_run(run):
            continue
        try:
            best = checkpoint.locate(run)
        except CharlmError:  # a run that diverged from its first epoch
            continue
        val_loss = checkpoint.read_meta(best)["metrics"]["val_loss"]
        if val_loss is not None and math.isfinite(val_loss):
            scored.append((val_loss, best))
    if not scored:
        raise _missing(uri, "holds no checkpoint with a finite val_loss")
    return min(scored)[1]


def read_history(run: str) -> pd.DataFrame:
    """The run's epochs; `time`: its jobs' elapsed seconds, added up across
    resumes (each job counts from its own start)."""
    frame = storage.read_table(storage.join(run, HISTORY)).to_pandas()
    if "step" not in frame:
        raise CharlmError(f"run {run} records no optimizer steps in its {HISTORY}; it was "
                          "written by an older charlm: train it again to compare it")
    elapsed = frame["elapsed_s"].to_numpy(dtype=float)
    restarts = np.flatnonzero(np.diff(elapsed) < 0) + 1
    offset = np.zeros_like(elapsed)
    for start in restarts:
        offset[start:] += elapsed[start - 1]
    return frame.assign(time=elapsed + offset)


def summary(run: str, history: pd.DataFrame) -> dict:
    """One row of the table: where the run's best val_loss was reached, and its speed."""
    finite = history[np.isfinite(history["val_loss"].to_numpy(dtype=float))]
    best = finite.loc[finite["val_loss"].idxmin()] if not finite.empty else None
    kept = checkpoint.in_run(run)
    preset = checkpoint.read_meta(kept[-1])["config"].get("preset") if kept else None
    return {"run": run, "preset": preset,
            "best_val_loss": best["val_loss"] if best is not None else math.nan,
            "best_val_bpc": best["val_bpc"] if best is not None else math.nan,
            "step": int(best["step"]) if best is not None else None,
            "time_s": best["time"] if best is not None else math.nan,
            "epochs": len(history),
            "windows_per_s": float(history["windows_per_s"].median())}


def names(runs: list[str]) -> list[str]:
    """Each run's last path component, with its parent's where two would clash."""
    short = [posixpath.basename(r.rstrip("/")) for r in runs]
    return [posixpath.join(*r.rstrip("/").split("/")[-2:]) if short.count(s) > 1 else s
            for r, s in zip(runs, short, strict=True)]


def compare(paths: list[str], chart_path: str | None = None) -> str:
    """Print the runs' table, draw their val_loss against step and against
    wall time (default `<first path>.runs.png`); returns the chart's path."""
    runs = list(dict.fromkeys(r for p in paths for r in runs_in(p)))
    histories = [read_history(r) for r in runs]
    frame = pd.DataFrame([summary(r, h) for r, h in zip(runs, histories, strict=True)])
    frame.insert(0, "name", names(runs))
    frame["step"] = frame["step"].astype("Int64")  # none for a run with no finite val_loss
    print(frame.drop(columns="run").to_string(index=False, na_rep="-", formatters={
        "best_val_loss": "{:.4f}".format, "best_val_bpc": "{:.3f}".format,
        "time_s": "{:,.0f}".format, "windows_per_s": "{:,.0f}".format}), flush=True)
    chart_path = storage.normalize(chart_path or f"{storage.normalize(paths[0]).rstrip('/')}"
                                                 ".runs.png")
    draw(dict(zip(frame["name"], histories, strict=True)), chart_path)
    print(f"chart: {chart_path}", flush=True)
    return chart_path


def draw(histories: dict[str, pd.DataFrame], path: str) -> None:
    """val_loss against step and against wall time, one line per run."""
    fig, (by_step, by_time) = charts.pyplot().subplots(1, 2, figsize=(12, 5), sharey=True)
    for name, history in histories.items():
        by_step.plot(history["step"], history["val_loss"], marker="o", markersize=3, label=name)
        by_time.plot(history["time"], history["val_loss"], marker="o", markersize=3, label=name)
    charts.focus(by_step, [v for h in histories.values() for v in h["val_loss"]])
    by_step.set_xlabel("step")
    by_time.set_xlabel("wall time (s)")
    by_step.set_ylabel("val_loss (nats/char)")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    by_step.legend(fontsize="small")
    fig.suptitle("charlm runs: held-out loss")
    charts.save(fig, path, "pass --chart with a writable path")
