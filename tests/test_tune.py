"""jobs.tune end to end: a sweep of real charlm runs on Ray Tune, its
storage on S3, Ctrl-C'd here after its first trial ends, then resumed by
the same command submitted to the local multi-node cluster (as `ray job
submit` sends it), which ends it and writes its table to S3; bad input; and
what a diverged trial reports."""

from __future__ import annotations

import math
import os
import re
import signal
import threading
import time

import pandas as pd
import pyarrow.fs as pafs
import pytest
import ray
from raycluster import BUCKET, Cluster, environ, printed, run_main, submit

from charlm.model import checkpoint
from charlm.tuning import sweep as sweeps
from charlm.tuning import table
from jobs import report as report_job
from jobs import tune as job

TINY = ["--units", "16", "--maxlen", "32", "--step", "32", "--batch-size", "32",
        "--objective", "all", "--max-steps", "2", "--cpus-per-worker", "1"]
# Two trials at once, seeded alike and run to their end (fifo): an absurd
# rate, whose loss is no longer finite after its first epoch, beside a good
# one with most of its epochs to go when the absurd one has failed and Tune
# has stopped on Ctrl-C (these epochs last a fifth of a second; the absurd
# run's end and Tune's stop take a few seconds). The good one, resumed, goes
# on from its own checkpoint under its own flags; that such a resume equals
# a run done in one go is tests/test_training.py's.
EPOCHS = 20
SWEEPS = f"s3://{BUCKET}/sweeps"
SWEEP = [*TINY, "--epochs", str(EPOCHS), "--search", "learning-rate=grid:1e38,0.01",
         "--search", "seed=grid:7", "--scheduler", "fifo", "--max-concurrent", "2",
         "--storage-path", SWEEPS, "--name", "rates"]
DIVERGED = ("training loss is nan at epoch 1; lower --learning-rate",
            "training loss is inf at epoch 1; lower --learning-rate")


def run_job(*argv: str) -> tuple[int, str, str]:
    """jobs.tune in-process: (exit status, stdout, stderr)."""
    return run_main(job.main, *argv)


def interrupt_when_a_trial_ends(sweep_dir: str) -> threading.Thread:
    """Ctrl-C, as a user presses it, once the table shows an ended trial and
    a running one whose run has kept a checkpoint."""
    def kept(row: dict) -> bool:
        return row["status"] == "running" and table.run_summary(row["run"])["checkpoint"]

    def watch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                rows = table.read_table(sweep_dir)
                ready = any(r["status"] in table.ENDED for r in rows) and any(map(kept, rows))
            except (OSError, ValueError):  # not written yet, or being written
                ready = False
            if ready:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def drivers_stopped(timeout: float = 120) -> None:
    """Until no trial's driver is left in this process's Ray: a Ctrl-C'd
    trial's run stops once its driver sees the trial gone."""
    deadline = time.monotonic() + timeout
    while any(a["namespace"] == sweeps.DRIVERS
              for a in ray.util.list_named_actors(all_namespaces=True)):
        assert time.monotonic() < deadline, "a trial's driver outlived the sweep"
        time.sleep(0.2)


def size(uri: str) -> int:
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs.get_file_info(path).size


@pytest.fixture(scope="module")
def sweep(ray_local, multinode: Cluster, s3_env: dict[str, str], corpus: str) -> dict:
    """The sweep, started in this process (its own Ray), Ctrl-C'd after its
    first trial ends, then resumed by the same command submitted to the
    cluster; its table and runs read back from S3."""
    argv = [*SWEEP, "--corpus", corpus]
    sweep_dir = f"{SWEEPS}/rates"
    with environ(s3_env):  # pandas and pyarrow read s3:// in this process
        watcher = interrupt_when_a_trial_ends(sweep_dir)
        first = run_job(*argv)
        watcher.join()
        at_interrupt = pd.DataFrame(table.read_table(sweep_dir))
        drivers_stopped()
        cut = at_interrupt["run"].iloc[1]  # the good trial's run, as it stopped
        cut_history = pd.read_parquet(f"{cut}/history.parquet")
        cut_config = checkpoint.read_meta(checkpoint.in_run(cut)[-1])["config"]
        second = submit(multinode, "tune-resumed", *argv, module="tune")
        frame = pd.read_parquet(f"{sweep_dir}/{table.TABLE}")
        histories = {run: pd.read_parquet(f"{run}/history.parquet") for run in frame["run"]}
        chart = size(f"{sweep_dir}/{table.CHART}")
    return {"dir": sweep_dir, "first": first, "second": second, "at_interrupt": at_interrupt,
            "cut_history": cut_history, "cut_config": cut_config, "table": frame,
            "histories": histories, "chart": chart}


def test_interrupted_sweep_says_how_to_resume(sweep: dict) -> None:
    status, out, err = sweep["first"]
    assert status == 130 and err.strip().endswith("interrupted"), (out, err)
    assert "sweep interrupted with 1 of 2 trial(s) unfinished; rerun the same command" in out
    rows = sweep["at_interrupt"]
    assert rows.iloc[0]["learning_rate"] == 1e38 and rows.iloc[0]["status"] == table.FAILED
    # The good run beside it was stopped mid-run, its checkpoints kept.
    assert rows.iloc[1]["status"] == "unfinished" and 1 <= rows.iloc[1]["epoch"] < EPOCHS


def test_sweep_resumed_on_a_cluster_has_every_trial_on_s3_and_pandas_picks_the_best(
        sweep: dict) -> None:
    status, log = sweep["second"]
    assert status == "succeeded", log[-5000:]
    assert f"resuming sweep {sweep['dir']}: 1 of 2 trial(s) ended" in log, log[-5000:]
    assert printed(log, "table") == f"{sweep['dir']}/{table.TABLE}"
    assert printed(log, "chart") == f"{sweep['dir']}/{table.CHART}" and sweep["chart"] > 0
    frame = sweep["table"]
    assert len(frame) == 2 and frame["trial"].is_unique and set(frame["seed"]) == {7}
    absurd = frame.iloc[0]
    assert absurd["status"] == table.FAILED and pd.isna(absurd["checkpoint"])
    assert absurd["error"].startswith(DIVERGED) and absurd["epoch"] == 1
    assert frame["status"].iloc[1] == table.FINISHED and frame["epoch"].iloc[1] == EPOCHS
    best = frame[frame["best_val_loss"] == frame["best_val_loss"].min()]
    # The searched seed is named once, in the table as in the best trial's line.
    assert re.search(r"^best trial \S+: learning-rate=0\.01 seed=7: val_loss ", log, re.M), log
    header = next(line for line in log.splitlines() if "best_val_loss" in line.split())
    assert header.split().count("seed") == 1, header
    assert printed(log, "best checkpoint") in set(best["checkpoint"])
    for trial, uri in zip(best["trial"], best["checkpoint"], strict=True):
        assert uri.startswith(f"{sweep['dir']}/{trial}/checkpoint_")


def test_resumed_sweep_keeps_ended_trials_and_resumes_the_others_from_their_checkpoints(
        sweep: dict) -> None:
    """An ended trial's row is as it was; an unfinished trial's run goes on
    from its own latest checkpoint, under the flags it was started with, to
    its last epoch: its first epochs are not trained again."""
    before = sweep["at_interrupt"].set_index("trial")
    after = sweep["table"].set_index("trial")
    ended = before[before["status"].isin(table.ENDED)].index
    def cells(frame: pd.DataFrame) -> pd.DataFrame:  # a missing cell is None, however read
        return frame.loc[ended].astype(object).where(frame.loc[ended].notna(), None)

    pd.testing.assert_frame_equal(cells(before), cells(after), check_dtype=False)

    run = sweep["at_interrupt"]["run"].iloc[1]
    assert sweep["table"]["run"].iloc[1] == run
    resumed = sweep["histories"][run]
    assert list(resumed["epoch"]) == list(range(1, EPOCHS + 1))
    assert list(resumed["step"]) == list(range(2, 2 * EPOCHS + 1, 2))
    # Epoch 1 as recorded before the Ctrl-C, to its timing: not trained again.
    pd.testing.assert_series_equal(resumed.iloc[0], sweep["cut_history"].iloc[0])
    config = checkpoint.read_meta(sweep["table"]["checkpoint"].iloc[1])["config"]
    assert config == sweep["cut_config"]


def test_runs_of_a_sweep_side_by_side(sweep: dict, s3_env: dict[str, str], capsys) -> None:
    with environ(s3_env):
        report_job.main(["--runs", sweep["dir"]])
        out = capsys.readouterr().out
        for trial in sweep["table"]["trial"]:
            assert trial in out
        assert size(printed(out, "chart")) > 0


@pytest.mark.parametrize("flags, message", [
    (["--search", "lr=loguniform:0.001:0.1"], "lr is not a flag of jobs.train"),
    (["--search", "learning-rate=uniform:0.1:0.01"], "the range from 0.1 to 0.01 is empty"),
    (["--search", "dropout=uniform:0.1:1.5"], "--dropout is 1.5"),
    (["--num-samples", "0"], "--num-samples is 0"),
    (["--search", "units=choice:16,x"], "'x' is not a whole number"),
    (["--grace-period", "0"], "--grace-period is 0"),
    (["--search", "epochs=choice:2,4", "--grace-period", "5"],
     "--grace-period 5 is past the trials' 4 epochs"),
])
def test_bad_input_is_one_line_before_any_trial(flags: list[str], message: str, corpus: str,
                                                tmp_path) -> None:
    storage = tmp_path / "sweeps"
    status, out, err = run_job(*TINY, "--corpus", corpus, "--storage-path", str(storage),
                               *flags)
    assert status == 2 and out == "" and err.count("\n") == 1, (out, err)
    assert err.startswith("error: ") and message in err
    assert not storage.exists()


def test_a_diverged_epoch_reaches_tune_with_its_runs_error() -> None:
    """Tune's scheduler never sees a diverged epoch without the error that
    fails its trial (sweep.TrialReports)."""
    reported: list[dict] = []
    reports = sweeps.TrialReports(reported.append)
    reports.epoch({"epoch": 1, "loss": 3.2, "val_loss": 3.1})
    reports.epoch({"epoch": 2, "loss": math.nan, "val_loss": math.inf})
    assert reported == [{"epoch": 1, "loss": 3.2, "val_loss": 3.1}]
    reports.end("training loss is nan at epoch 2; lower --learning-rate or set --clipnorm")
    assert len(reported) == 2 and math.isnan(reported[1].pop("loss"))
    assert reported[1] == {"epoch": 2, "val_loss": math.inf, "failed": "training loss is nan "
                           "at epoch 2; lower --learning-rate or set --clipnorm"}

    reported.clear()  # a run that failed before its first epoch
    sweeps.TrialReports(reported.append).end("no room")
    assert len(reported) == 1 and reported[0]["failed"] == "no room"
    assert math.isnan(reported[0]["val_loss"])
