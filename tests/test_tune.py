"""jobs.tune end to end: a sweep of real charlm runs on Ray Tune, Ctrl-C'd
after its first trial ends and resumed; bad input; and a sweep submitted to
the local multi-node cluster, whose ASHA stops a bad trial and whose table
lands on S3."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time

import pandas as pd
import pyarrow.fs as pafs
import pytest
from raycluster import BUCKET, Cluster, environ, printed, submit

from charlm.tuning import table
from jobs import report as report_job
from jobs import tune as job

TINY = ["--units", "16", "--maxlen", "32", "--step", "32", "--batch-size", "32",
        "--objective", "all", "--max-steps", "2", "--cpus-per-worker", "1"]
# Four trials, two at a time, every one seeded alike and run to its end
# (fifo). The first pair: an absurd rate, whose loss is no longer finite
# after its first epoch, beside a good one with most of its epochs to go
# when the absurd one fails (these epochs last half a second); that good one,
# Ctrl-C'd and resumed, must end as its twin (the same rate again) ends,
# trained straight in the second pair.
EPOCHS = 15
SWEEP = [*TINY, "--epochs", str(EPOCHS), "--search", "learning-rate=grid:1e38,0.01,0.01,0.02",
         "--search", "seed=grid:7", "--scheduler", "fifo", "--max-concurrent", "2",
         "--name", "rates"]


def run_job(*argv: str) -> tuple[int, str, str]:
    """jobs.tune in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            job.main(list(argv))
            status = 0
        except SystemExit as e:
            status = e.code
    return status, out.getvalue(), err.getvalue()


def interrupt_when_a_trial_ends(sweep_dir: str) -> threading.Thread:
    """Ctrl-C, as a user presses it, once the table shows an ended trial."""
    def watch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                rows = table.read_table(sweep_dir)
            except (OSError, ValueError):  # not written yet
                rows = []
            if any(r["status"] in table.ENDED for r in rows):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def sweep(ray_local, corpus: str, tmp_path_factory) -> dict:
    """The sweep, interrupted after its first trial ends, then resumed."""
    storage = str(tmp_path_factory.mktemp("sweeps"))
    argv = [*SWEEP, "--corpus", corpus, "--storage-path", storage]
    sweep_dir = os.path.join(storage, "rates")
    watcher = interrupt_when_a_trial_ends(sweep_dir)
    first = run_job(*argv)
    watcher.join()
    at_interrupt = pd.DataFrame(table.read_table(sweep_dir))
    second = run_job(*argv)
    return {"dir": sweep_dir, "first": first, "second": second, "at_interrupt": at_interrupt,
            "table": pd.read_parquet(os.path.join(sweep_dir, table.TABLE))}


def test_interrupted_sweep_says_how_to_resume(sweep: dict) -> None:
    status, out, err = sweep["first"]
    assert status == 130 and err.strip().endswith("interrupted"), (out, err)
    assert "sweep interrupted with 3 of 4 trial(s) unfinished; rerun the same command" in out
    rows = sweep["at_interrupt"]
    assert rows.iloc[0]["learning_rate"] == 1e38 and rows.iloc[0]["status"] == table.FAILED
    # The good run beside it was stopped mid-run, its checkpoints kept.
    assert rows.iloc[1]["status"] == "unfinished" and 1 <= rows.iloc[1]["epoch"] < EPOCHS


def test_resumed_sweep_has_every_trial_and_pandas_picks_the_best(sweep: dict) -> None:
    status, out, err = sweep["second"]
    assert status == 0, (out, err)
    assert out.startswith(f"resuming sweep {sweep['dir']}: 1 of 4 trial(s) ended"), out
    frame = sweep["table"]
    assert len(frame) == 4 and frame["trial"].is_unique and set(frame["seed"]) == {7}
    absurd = frame.iloc[0]
    assert absurd["status"] == table.FAILED and pd.isna(absurd["checkpoint"])
    assert absurd["error"].startswith(("training loss is nan at epoch 1; lower --learning-rate",
                                       "training loss is inf at epoch 1; lower --learning-rate"))
    assert list(frame["status"][1:]) == [table.FINISHED] * 3
    assert list(frame["epoch"][1:]) == [EPOCHS] * 3
    best = frame.loc[frame["best_val_loss"].idxmin()]
    assert out.rstrip().endswith(f"best checkpoint: {best['checkpoint']}")
    assert best["checkpoint"].startswith(os.path.join(sweep["dir"], best["trial"]) + os.sep)
    assert os.path.getsize(os.path.join(sweep["dir"], table.CHART)) > 0


def test_resumed_sweep_keeps_ended_trials_and_resumed_ones_equal_straight_ones(
        sweep: dict) -> None:
    before = sweep["at_interrupt"].set_index("trial")
    after = sweep["table"].set_index("trial")
    ended = before[before["status"].isin(table.ENDED)].index
    pd.testing.assert_frame_equal(before.loc[ended], after.loc[ended], check_dtype=False)

    resumed, straight = (pd.read_parquet(os.path.join(run, "history.parquet"))
                         for run in sweep["table"]["run"][1:3])
    assert list(resumed["epoch"]) == list(range(1, EPOCHS + 1))
    assert list(resumed["step"]) == list(range(2, 2 * EPOCHS + 1, 2))
    assert resumed["val_loss"].tolist() == pytest.approx(straight["val_loss"].tolist(), abs=1e-6)
    assert resumed["loss"].tolist() == pytest.approx(straight["loss"].tolist(), abs=1e-6)


def test_runs_of_a_sweep_side_by_side(sweep: dict, capsys) -> None:
    report_job.main(["--runs", sweep["dir"]])
    out = capsys.readouterr().out
    for trial in sweep["table"]["trial"]:
        assert trial in out
    assert os.path.getsize(printed(out, "chart")) > 0


@pytest.mark.parametrize("flags, message", [
    (["--search", "lr=loguniform:0.001:0.1"], "lr is not a flag of jobs.train"),
    (["--search", "learning-rate=uniform:0.1:0.01"], "the range from 0.1 to 0.01 is empty"),
    (["--search", "dropout=uniform:0.1:1.5"], "--dropout is 1.5"),
    (["--num-samples", "0"], "--num-samples is 0"),
    (["--search", "units=choice:16,x"], "'x' is not a whole number"),
])
def test_bad_input_is_one_line_before_any_trial(flags: list[str], message: str, corpus: str,
                                                tmp_path) -> None:
    storage = tmp_path / "sweeps"
    status, out, err = run_job(*TINY, "--corpus", corpus, "--storage-path", str(storage),
                               *flags)
    assert status == 2 and out == "" and err.count("\n") == 1, (out, err)
    assert err.startswith("error: ") and message in err
    assert not storage.exists()


# -- the session's multi-node cluster (conftest.multinode), S3 the only storage --------

SWEEPS = f"s3://{BUCKET}/sweeps"


def test_sweep_submitted_to_a_cluster_stops_a_bad_trial_and_writes_to_s3(
        multinode: Cluster, s3_env: dict[str, str], corpus: str) -> None:
    """One trial at a time, so that ASHA has the good trial's first epoch to
    compare the bad one's against; epochs enough that the bad one's run is
    stopped before its end (Tune stops a trial an epoch or two after its
    decision, and these epochs last a second)."""
    status, log = submit(multinode, "tune-s3", "--corpus", corpus, *TINY, "--epochs", "20",
                         "--search", "learning-rate=grid:0.01,10", "--max-concurrent", "1",
                         "--storage-path", SWEEPS, "--name", "on-cluster", module="tune")
    assert status == "succeeded", log[-5000:]
    assert printed(log, "table") == f"{SWEEPS}/on-cluster/{table.TABLE}"
    with environ(s3_env):  # pandas and pyarrow read s3:// in this process
        frame = pd.read_parquet(printed(log, "table"))
        fs, chart = pafs.FileSystem.from_uri(printed(log, "chart"))
        assert fs.get_file_info(chart).size > 0
    good, bad = frame.iloc[0], frame.iloc[1]
    assert (good["learning_rate"], good["status"], good["epoch"]) == (0.01, table.FINISHED, 20)
    assert (bad["learning_rate"], bad["status"]) == (10, table.STOPPED) and bad["epoch"] < 20
    assert frame["seed"].is_unique  # each trial's own, drawn from the sweep's
    assert printed(log, "best checkpoint") == good["checkpoint"]
    assert good["checkpoint"].startswith(f"{SWEEPS}/on-cluster/{good['trial']}/checkpoint_")
