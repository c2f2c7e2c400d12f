"""Real job submission: a Ray head started with `ray start` on 127.0.0.1, and
`python -m jobs.pipeline` sent to it with `ray job submit`, as on a cluster.

The head uses only free ports, its own temp dir and its own auth token, and is
stopped by killing exactly its processes: `ray stop` would also stop any other
Ray on this machine (other test runs start embedded ones).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import psutil
import pytest

from jobs.pipeline import route

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
RAY = os.path.join(BIN, "ray")
# The working dir is uploaded to the head on every submission: code only.
EXCLUDES = [".venv", ".git", "**/__pycache__", ".pytest_cache", ".ruff_cache", "runs", "out",
            "*.egg-info", "build", "benchmarks/logs"]
JOB_TIMEOUT_S = 240
TINY = ["--train.epochs", "1", "--train.max-steps", "4", "--train.units", "16",
        "--train.maxlen", "32", "--train.step", "32", "--train.batch-size", "32",
        "--generate.num-seeds", "2", "--generate.length", "20"]


@dataclass
class Head:
    address: str
    env: dict[str, str]


def free_ports(count: int) -> list[int]:
    """Distinct free ports: all held open until every one is chosen."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def head_processes(temp_dir: str) -> list[psutil.Process]:
    """The head's daemons name its temp dir; workers and job drivers descend from them."""
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        if any(temp_dir in arg for arg in p.info["cmdline"] or ()):
            roots.append(p)
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update((c.pid, c) for c in p.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return list(found.values())


def stop_head(temp_dir: str) -> None:
    procs = head_processes(temp_dir)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def ray_cli(head: Head, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=head.env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    temp_dir = tempfile.mkdtemp(prefix="charlm-ray-", dir="/tmp")  # short: socket paths
    token_path = os.path.join(temp_dir, "auth_token")
    with open(token_path, "w") as f:
        f.write(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_") and k.lower() not in ("http_proxy", "https_proxy")}
    # The job's `python` is the first on the head's PATH: this venv's.
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", NO_PROXY="127.0.0.1,localhost",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path,
               RAY_USAGE_STATS_ENABLED="0")
    gcs, dashboard, client, node_manager, object_manager, agent_http, agent_grpc, \
        runtime_env_agent, metrics = free_ports(9)
    start = [
        RAY, "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
        f"--port={gcs}", f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
        f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env_agent}", f"--metrics-export-port={metrics}",
        "--min-worker-port=0", "--max-worker-port=0",  # workers: any free port
        # More logical CPUs than training workers, or Ray Data's tasks never run.
        "--num-cpus=4", "--num-gpus=0", "--object-store-memory=300000000",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]
    head = Head(f"http://127.0.0.1:{dashboard}", env)
    try:
        proc = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120,
                              start_new_session=True)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        deadline = time.monotonic() + 60
        while ray_cli(head, "job", "list", "--address", head.address).returncode != 0:
            assert time.monotonic() < deadline, "the head's job API never came up"
            time.sleep(2)
        yield head
    finally:
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(head: Head, submission_id: str, *pipeline_args: str) -> tuple[str, str]:
    """Submit as a user would and wait for the end; returns the final status
    (succeeded, failed or stopped) and the job's logs."""
    cmd = ["job", "submit", "--address", head.address, "--submission-id", submission_id,
           "--working-dir", ".", "--runtime-env-json", json.dumps({"excludes": EXCLUDES}),
           "--", "python", "-m", "jobs.pipeline", *pipeline_args]
    try:
        ray_cli(head, *cmd, timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        ray_cli(head, "job", "stop", "--address", head.address, submission_id)
        pytest.fail(f"job {submission_id} not done after {JOB_TIMEOUT_S}s:\n"
                    + logs(head, submission_id)[-5000:])
    proc = ray_cli(head, "job", "status", "--address", head.address, submission_id)
    found = re.search(rf"Job '{submission_id}' (succeeded|failed|was stopped)",
                      proc.stdout + proc.stderr)
    assert found, proc.stdout[-2000:] + proc.stderr[-2000:]
    return found.group(1), logs(head, submission_id)


def logs(head: Head, submission_id: str) -> str:
    return ray_cli(head, "job", "logs", "--address", head.address, submission_id).stdout


def printed(log: str, label: str) -> str:
    """The last `<label>: <path>` line the job printed."""
    found = re.findall(rf"^{label}: (.+)$", log, flags=re.MULTILINE)
    assert found, f"no '{label}:' line in the job's logs:\n{log[-5000:]}"
    return found[-1].strip()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    words = ("the quick brown fox jumps over the lazy dog while a wizard quietly "
             "boxes seven jugs of plum jam ").split()
    text = " ".join(words[(i * 7) % len(words)] for i in range(4000))
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(text)
    return str(path)


def test_pipeline_job_succeeds_and_outputs_are_where_it_says(head: Head, corpus: str,
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


def test_bad_argument_fails_with_one_line_error(head: Head, corpus: str, tmp_path) -> None:
    status, log = submit(head, "charlm-bad-argument", "--corpus", corpus,
                         "--storage-path", str(tmp_path / "runs"), "--train.num-workers", "0")
    assert status == "failed", log[-5000:]
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "--num-workers" in errors[0], log[-5000:]
    assert "Traceback" not in log


def test_route_sends_prefixed_flags_to_their_job() -> None:
    own, routed = route(["--corpus", "a.txt", "--train.epochs", "2", "--generate.temperatures",
                         "0.5", "-1.0", "--use-gpu", "--report.dpi=80", "--train.use-gpu"])
    assert own == ["--corpus", "a.txt", "--use-gpu"]
    assert routed == {"train": ["--epochs", "2", "--use-gpu"],
                      "generate": ["--temperatures", "0.5", "-1.0"],
                      "report": ["--dpi=80"]}
