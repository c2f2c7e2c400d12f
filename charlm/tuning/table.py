"""A sweep's record: one row per trial in `<sweep>/trials.parquet`, and
val_loss against step per trial in `<sweep>/trials.png`, both read from the
trials' own runs (their history.parquet and checkpoints)."""

from __future__ import annotations

import math

import pandas as pd

from charlm import charts, storage
from charlm.errors import CharlmError
from charlm.model import checkpoint
from charlm.training.metrics import read_history

TABLE = "trials.parquet"
CHART = "trials.png"
# A trial's status: pending or running while the sweep runs, unfinished
# after an interruption (a rerun resumes it), then ended: finished (all its
# epochs), stopped early (before its last epoch: by ASHA or --patience) or
# failed (the error column says why).
FINISHED, STOPPED, FAILED = "finished", "stopped early", "failed"
ENDED = (FINISHED, STOPPED, FAILED)


def history(run: str) -> pd.DataFrame:
    """A trial's run's history.parquet (empty before its first epoch). Its
    run may be rewriting it as the sweep reads it: it is replaced whole
    (storage.write_rows), so a read sees the old rows or the new."""
    return pd.DataFrame(read_history(run))


def run_summary(run: str) -> dict:
    """What a trial's run reached, from its history: best val_loss and
    val_bpc (and their epoch), the last epoch and step, and its best
    checkpoint's URI (None before the first finite one)."""
    history_ = history(run)
    summary = {"best_val_loss": math.nan, "best_val_bpc": math.nan, "best_epoch": None,
               "epoch": 0, "step": 0, "checkpoint": None}
    if history_.empty:
        return summary
    last = history_.iloc[-1]
    summary.update(epoch=int(last["epoch"]), step=int(last["step"]))
    finite = history_[history_["val_loss"].map(lambda v: v is not None and math.isfinite(v))]
    if not finite.empty:
        best = finite.loc[finite["val_loss"].idxmin()]
        summary.update(best_val_loss=float(best["val_loss"]), best_val_bpc=float(best["val_bpc"]),
                       best_epoch=int(best["epoch"]))
        try:
            summary["checkpoint"] = checkpoint.locate(run)
        except CharlmError:
            pass  # the epoch's checkpoint is not written yet
    return summary


def write_table(sweep_dir: str, rows: list[dict]) -> str:
    """The table, replaced whole: readers see the old or the new one."""
    return storage.write_rows(storage.join(sweep_dir, TABLE), rows)


def read_table(sweep_dir: str) -> list[dict]:
    """The rows written so far (none for a new sweep)."""
    return storage.read_rows(storage.join(sweep_dir, TABLE))


def draw(sweep_dir: str, curves: dict[str, pd.DataFrame]) -> str:
    """val_loss against step, one line per trial (label → its history)."""
    fig, ax = charts.pyplot().subplots(figsize=(9, 5.5))
    for label, history in curves.items():
        if not history.empty:
            ax.plot(history["step"], history["val_loss"], marker="o", markersize=3, label=label)
    charts.focus(ax, [v for h in curves.values() if not h.empty for v in h["val_loss"]])
    ax.set_xlabel("step")
    ax.set_ylabel("val_loss (nats/char)")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize="small")
    ax.set_title(f"sweep {sweep_dir.rstrip('/').rsplit('/', 1)[-1]}: held-out loss per trial")
    return charts.save(fig, storage.join(sweep_dir, CHART),
                       "check that the sweep's --storage-path is writable")
