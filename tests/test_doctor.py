"""jobs.doctor through `ray job submit` on the session's multi-node cluster
(conftest.multinode: a 0-CPU head, two CPU nodes, and one node whose GPU
TensorFlow cannot see; S3 as storage), with --use-gpu and storage on S3. Its
timed steps (the same on every node) and its bad input, in-process."""

from __future__ import annotations

import json

import pytest
from raycluster import RUNS, Cluster, error_lines, state, submit

from charlm.cluster.node import TIMED_PRESETS, windows_per_s
from jobs.doctor import main


@pytest.fixture(scope="module")
def doctored(multinode: Cluster, tmp_path_factory) -> tuple[str, str, dict]:
    """(status, log, the --json report) of one run."""
    report = tmp_path_factory.mktemp("doctor") / "doctor.json"
    status, log = submit(multinode, "doctor", "--use-gpu", "--storage-path", f"{RUNS}/doctor",
                         "--steps", "0", "--placement-timeout", "120", "--json", str(report),
                         module="doctor")
    with open(report, encoding="utf-8") as f:
        return status, log, json.load(f)


@pytest.fixture(scope="module")
def gpu_node(multinode: Cluster) -> str:
    return next(n["node_id"] for n in state(multinode, "nodes")
                if n["state"] == "ALIVE" and n["resources_total"].get("GPU"))


def test_the_gpu_node_fails_with_its_cause_in_one_line(doctored, gpu_node: str) -> None:
    """Its check holds its GPU (CUDA_VISIBLE_DEVICES='0') and TensorFlow sees
    none: the node has no CUDA wheels, so the cause is the gpu extra."""
    status, log, report = doctored
    errors = error_lines(log)
    assert status == "failed" and len(errors) == 1, log[-5000:]
    assert f"({gpu_node[:12]}): TensorFlow sees no GPU" in errors[0], errors
    assert "gpu extra" in errors[0], errors
    assert "Traceback" not in log.split("Running entrypoint for job", 1)[-1], log[-5000:]
    row = next(r for r in report["rows"] if r["node_id"] == gpu_node)
    assert row["ray_gpus"] == ["0"] and row["cuda_visible_devices"] == "0" and not row["gpus"]
    assert report["errors"] == [e.removeprefix("error: ") for e in errors]


def test_work_without_gpus_sees_none_on_the_gpu_node(doctored, gpu_node: str) -> None:
    """Beside the check that holds the GPU, a task that reserves none sees
    CUDA_VISIBLE_DEVICES='': Ray hides the GPU from jobs without --use-gpu."""
    _, log, report = doctored
    row = next(r for r in report["rows"] if r["node_id"] == gpu_node)
    assert row["unreserved_sees"] == "", row


def test_every_other_node_is_ready(doctored, multinode: Cluster) -> None:
    """One row per alive node, each with S3 access (--steps 0: none timed)."""
    _, log, report = doctored
    alive = {n["node_id"] for n in state(multinode, "nodes") if n["state"] == "ALIVE"}
    rows = {r["node_id"]: r for r in report["rows"]}
    assert set(rows) == alive
    ready = [r for r in rows.values() if not r["ray_gpus"]]
    assert len(ready) == len(alive) - 1
    for row in ready:
        assert not row["problems"] and row["storage"] == "ok", row
        assert row["windows_per_s"] == {}, row
        assert row["lstm_kernel"] == "generic" and row["cuda_visible_devices"] == "", row
        assert row["disk_free_gb"] > 0 and row["memory_free_gb"] > 0, row
        assert f"{row['node']} ({row['node_id'][:12]})" in log, "the table names every node"
    assert report["all_reduce"] is None, "one GPU: nothing to all-reduce"


@pytest.mark.parametrize("preset", TIMED_PRESETS)
def test_a_timed_step_at_each_presets_shape(preset: str) -> None:
    """What every ready node reports with --steps N, here on this machine's CPU."""
    assert windows_per_s(preset, 1, on_gpu=False) > 0


@pytest.mark.parametrize("args", [["--placement-timeout", "0"], ["--steps", "-1"],
                                  ["--use-gpu", "--gpus", "0"]])
def test_bad_input_is_one_line_and_writes_nothing(args, tmp_path, capsys) -> None:
    report = tmp_path / "report.json"
    with pytest.raises(SystemExit) as stop:
        main([*args, "--json", str(report)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {args[-2]} ") and not report.exists(), err
