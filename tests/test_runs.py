"""jobs.report --runs: runs side by side from their history.parquet, local
and on S3 (moto's server), a sweep directory standing for its runs. The
runs are written as training writes them (tests/test_tune.py reads real
ones); the generation report is tests/test_report.py's."""

from __future__ import annotations

import json
import math
import os

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from raycluster import environ, printed, s3_server

from jobs import report as job


def write_run(fs: pafs.FileSystem, run: str, rows: list[dict], preset: str | None) -> None:
    """A run directory: its history, and a checkpoint recording its config."""
    fs.create_dir(f"{run}/checkpoint_epoch_0001", recursive=True)
    columns = ("epoch", "step", "loss", "val_loss", "val_bpc", "learning_rate", "windows_per_s",
               "elapsed_s")
    table = pa.Table.from_pylist([{c: r.get(c, 0.01) for c in columns} for r in rows])
    pq.write_table(table, f"{run}/history.parquet", filesystem=fs)
    with fs.open_output_stream(f"{run}/checkpoint_epoch_0001/charlm.json") as f:
        f.write(json.dumps({"format": 2, "epoch": 1, "config": {"preset": preset},
                            "metrics": {"val_loss": rows[0]["val_loss"]}}).encode())


def epochs(val_losses: list[float], steps_per_epoch: int, seconds: list[float],
           speed: float) -> list[dict]:
    return [{"epoch": i + 1, "step": (i + 1) * steps_per_epoch, "val_loss": v,
             "val_bpc": v / math.log(2), "elapsed_s": s, "windows_per_s": speed}
            for i, (v, s) in enumerate(zip(val_losses, seconds, strict=True))]


@pytest.fixture
def sweep(tmp_path) -> str:
    """Two runs under one directory: `fast` reaches 1.5 at step 16 in 20 s;
    `resumed` was interrupted after epoch 2 (its second job counts its time
    from its own start) and reaches 1.4 at step 40."""
    fs = pafs.LocalFileSystem()
    root = str(tmp_path / "sweep")
    write_run(fs, f"{root}/fast", epochs([2.0, 1.5, 1.6], 8, [10, 20, 30], 900.0), "fast")
    write_run(fs, f"{root}/resumed", epochs([2.2, 1.9, 1.6, 1.4], 10, [50, 100, 40, 90], 400.0),
              "quality")
    fs.create_dir(f"{root}/tune")  # not a run: skipped
    return root


def test_runs_side_by_side(sweep: str, capsys) -> None:
    job.main(["--runs", sweep])
    out = capsys.readouterr().out
    table = out.split("chart:")[0]
    lines = [line.split() for line in table.strip().splitlines()]
    header, rows = lines[0], {line[0]: dict(zip(lines[0], line, strict=True))
                              for line in lines[1:]}
    assert header[:2] == ["name", "preset"] and set(rows) == {"fast", "resumed"}
    assert rows["fast"]["preset"] == "fast" and rows["resumed"]["preset"] == "quality"
    assert (rows["fast"]["best_val_loss"], rows["fast"]["step"], rows["fast"]["time_s"]) == \
        ("1.5000", "16", "20")
    # The resumed run's second job started its clock again: 100 s + 90 s.
    assert (rows["resumed"]["best_val_loss"], rows["resumed"]["step"],
            rows["resumed"]["time_s"]) == ("1.4000", "40", "190")
    chart = printed(out, "chart")
    assert chart == f"{sweep}.runs.png" and os.path.getsize(chart) > 0


def test_runs_on_s3_and_a_chart_there(tmp_path, capsys) -> None:
    with s3_server("runs") as env, environ(env):
        fs, _ = pafs.FileSystem.from_uri("s3://runs/x")
        write_run(fs, "runs/a", epochs([2.0, 1.8], 5, [5, 10], 100.0), None)
        write_run(fs, "runs/b", epochs([1.9, 1.7], 5, [6, 12], 120.0), "seed")
        job.main(["--runs", "s3://runs/a", "s3://runs/b", "--chart", "s3://runs/ab.png"])
        out = capsys.readouterr().out
        assert printed(out, "chart") == "s3://runs/ab.png"
        assert fs.get_file_info("runs/ab.png").size > 0
        frame = pd.DataFrame([line.split() for line in out.split("chart:")[0].splitlines()[1:]])
        assert list(frame[0]) == ["a", "b"] and list(frame[1]) == ["-", "seed"]


@pytest.mark.parametrize("argv, message", [
    (["--runs", "{empty}"], "holds no run"),
    (["--runs", "{empty}/nothing"], "does not exist"),
    ([], "pass either a jobs.generate output or --runs"),
    (["{empty}", "--runs", "{empty}"], "pass either a jobs.generate output or --runs"),
])
def test_bad_input_is_one_line(argv: list[str], message: str, tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exited:
        job.main([a.format(empty=empty) for a in argv])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and os.listdir(tmp_path) == ["empty"]
