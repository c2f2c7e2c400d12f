"""Real job submission: a Ray head started with `ray start` on 127.0.0.1, and
`python -m jobs.pipeline` sent to it with `ray job submit`, as on a cluster.
A single-node cluster (a laptop's head) keeps local paths working.

The head comes from tests/raycluster.py: free ports, its own temp dir and auth
token, stopped by killing exactly its processes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pandas as pd
import pytest
from raycluster import (
    JOB_TIMEOUT_S,
    ROOT,
    TINY,
    Cluster,
    error_lines,
    printed,
    ray_cluster,
    state,
    submit,
)

from jobs.pipeline import route


@pytest.fixture(scope="module")
def head() -> Iterator[Cluster]:
    # More logical CPUs than training workers, or Ray Data's tasks never run.
    with ray_cluster(head_cpus=4) as cluster:
        yield cluster


def test_pipeline_job_succeeds_and_outputs_are_where_it_says(head: Cluster, corpus: str,
                                                            tmp_path) -> None:
    storage = tmp_path / "runs"
    status, log = submit(head, "charlm-pipeline", "--corpus", corpus,
                         "--storage-path", str(storage), "--name", "submitted", *TINY)
    assert status == "succeeded", log[-5000:]
    # The job's output (after the ray CLI's own coloured header) holds the
    # driver's lines: no worker prefix, no colour.
    job_output = log.split("Running entrypoint for job", 1)[-1]
    assert re.search(r"^epoch 1/1  loss .* val_bpc ", job_output, flags=re.MULTILINE), log
    assert "pid=" not in job_output and "\x1b[" not in job_output, log[-5000:]

    run_dir = storage / "submitted"
    checkpoint = printed(log, "best checkpoint")
    assert os.path.dirname(checkpoint) == str(run_dir)
    assert os.path.basename(checkpoint).startswith("checkpoint_")
    assert os.path.isfile(os.path.join(checkpoint, "charlm.json"))
    assert os.path.isfile(run_dir / "history.parquet")

    output = printed(log, "generations")
    assert output == str(run_dir / "generations")
    frame = pd.read_parquet(output)
    assert set(frame["temperature"]) == {0.2, 0.5, 1.0, 1.2}, "the seed's four temperatures"
    assert frame["seed_text"].nunique() >= 2
    assert set(frame["checkpoint"]) == {checkpoint}

    assert os.path.isfile(printed(log, "chart"))


def test_bad_argument_fails_with_one_line_error(head: Cluster, corpus: str, tmp_path) -> None:
    status, log = submit(head, "charlm-bad-argument", "--corpus", corpus,
                         "--storage-path", str(tmp_path / "runs"), "--train.num-workers", "0")
    assert status == "failed", log[-5000:]
    errors = error_lines(log)
    assert len(errors) == 1 and "--num-workers" in errors[0], log[-5000:]
    assert "Traceback" not in log


def test_a_job_run_on_the_head_joins_its_cluster(head: Cluster, corpus: str, tmp_path) -> None:
    """After `ray attach`, a job runs on the head without RAY_ADDRESS: it joins
    the cluster that `ray start` recorded there instead of starting its own."""
    env = {k: v for k, v in head.env.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = os.path.dirname(head.temp_dir)  # where this head recorded its address
    storage = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--corpus", corpus, "--storage-path", str(storage),
         "--name", "on-head", *[f.replace("--train.", "--") for f in TINY[:TINY.index(
             "--generate.num-seeds")]]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isfile(storage / "on-head" / "history.parquet")
    drivers = [j for j in state(head, "jobs") if j["type"] == "DRIVER"
               and "jobs.train" in (j.get("entrypoint") or "")]
    assert drivers, "the job ran on an embedded Ray, not on the cluster"


def test_route_sends_prefixed_flags_to_their_job() -> None:
    own, routed = route(["--corpus", "a.txt", "--train.epochs", "2", "--generate.temperatures",
                         "0.5", "-1.0", "--use-gpu", "--report.dpi=80", "--train.use-gpu"])
    assert own == ["--corpus", "a.txt", "--use-gpu"]
    assert routed == {"train": ["--epochs", "2", "--use-gpu"],
                      "generate": ["--temperatures", "0.5", "-1.0"],
                      "report": ["--dpi=80"]}
