"""What rank 0 records after each epoch: the epoch line, `history.parquet`
and TensorBoard event files, all under the run directory (local or s3://)."""

from __future__ import annotations

import math
import os
import shutil
import tempfile

from charlm import storage

HISTORY = "history.parquet"
TENSORBOARD = "tensorboard"  # event files: <run_dir>/tensorboard
# `step`: optimizer steps done by the epoch's end, over the whole run.
COLUMNS = ("epoch", "step", "loss", "val_loss", "val_bpc", "learning_rate", "windows_per_s",
           "elapsed_s")
SCALARS = ("loss", "val_loss", "val_bpc", "learning_rate", "windows_per_s")


def bits_per_char(nats: float) -> float:
    """Cross-entropy in bits per character, the unit papers report."""
    return nats / math.log(2)


def epoch_line(m: dict, epochs: int) -> str:
    return (f"epoch {m['epoch']}/{epochs}  loss {m['loss']:.4f}  val_loss {m['val_loss']:.4f}  "
            f"val_bpc {m['val_bpc']:.3f}  {m['windows_per_s']:,.0f} windows/s  "
            f"{m['elapsed_s']:.0f}s")


def append_history(run_dir: str, metrics: dict) -> None:
    """Per-epoch history beside the checkpoints, rewritten whole (it is tiny).
    Rows of epochs at or after this one (a run resumed from an earlier
    checkpoint) are replaced."""
    row = {k: metrics.get(k) for k in COLUMNS}
    rows = [{k: r.get(k) for k in COLUMNS} for r in read_history(run_dir)
            if r["epoch"] < row["epoch"]]
    storage.write_rows(storage.join(run_dir, HISTORY), rows + [row])


def read_history(run_dir: str) -> list[dict]:
    """The run's history rows so far (none for a new run)."""
    return storage.read_rows(storage.join(run_dir, HISTORY))


class TensorBoard:
    """Per-epoch scalars as TensorBoard event files in <run_dir>/tensorboard.

    TensorFlow cannot write s3://: a run on object storage (s3://, gs://)
    writes its files to a local directory and copies them, whole, after each
    epoch with pyarrow (event files are small). A resumed run adds a new event
    file beside the earlier ones; TensorBoard reads them all."""

    def __init__(self, run_dir: str):
        import tensorflow as tf

        self.target = storage.join(run_dir, TENSORBOARD)
        self.remote = storage.is_uri(run_dir)
        self.local = tempfile.mkdtemp(prefix="charlm-tb-") if self.remote else self.target
        self.writer = tf.summary.create_file_writer(self.local)

    def write(self, metrics: dict) -> None:
        import tensorflow as tf

        with self.writer.as_default(step=int(metrics["epoch"])):
            for name in SCALARS:
                if metrics.get(name) is not None:
                    tf.summary.scalar(name, float(metrics[name]))
        self.writer.flush()
        if self.remote:
            self._upload()

    def _upload(self) -> None:
        import pyarrow.fs as pafs

        fs, path = storage.resolve(self.target)
        local = pafs.LocalFileSystem()
        for name in os.listdir(self.local):
            pafs.copy_files(os.path.join(self.local, name), f"{path}/{name}",
                            source_filesystem=local, destination_filesystem=fs)

    def close(self) -> None:
        self.writer.close()
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)
