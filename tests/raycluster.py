"""Local Ray clusters for tests, built as `ray up` builds them: a head started
with `ray start --head`, worker nodes joined with `ray start --address`, all on
127.0.0.1 with free ports, token auth and one temp dir; plus an S3-compatible
server (moto) as object storage, and `ray job submit` as a user runs it.

Processes are stopped by killing exactly the ones under the cluster's temp dir
(each node has its own below it): `ray stop` would also stop any other Ray on
this machine (other test runs start embedded ones).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
RAY = os.path.join(BIN, "ray")
# The working dir is uploaded to the head on every submission: code only.
EXCLUDES = [".venv", ".git", "**/__pycache__", ".pytest_cache", ".ruff_cache", "runs", "out",
            "*.egg-info", "build", "benchmarks/logs"]
JOB_TIMEOUT_S = 300
# Ray's settings for test sessions, in the session's own Ray (conftest) and on
# every test cluster's nodes; none changes what charlm does:
# - no preemption watcher per Ray Train run (no test preempts a node): one
#   process fewer to start;
# - the log monitor lists the logs directory every 0.5 s, not every 0.1 s (a
#   new worker's output is forwarded up to 0.5 s later);
# - each node's dashboard agent samples every process's stats once a minute,
#   not every 5 s (no test reads them).
SESSION = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
           "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
           "REPORTER_UPDATE_INTERVAL_MS": "60000"}
POLL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
# A job that proves wiring, not learning: one tiny epoch, two seeds.
TINY = ["--train.epochs", "1", "--train.max-steps", "4", "--train.units", "16",
        "--train.maxlen", "32", "--train.step", "32", "--train.batch-size", "32",
        "--generate.num-seeds", "2", "--generate.length", "20"]


@dataclass
class Node:
    temp_dir: str  # its own, below the cluster's: the mark of its processes
    cpus: int
    gpus: int


@dataclass
class Cluster:
    temp_dir: str  # <RAY_TMPDIR>/ray, where `ray start` records the head's address
    address: str  # the dashboard's, for `ray job` and `ray list`
    gcs: str  # host:port, for `ray start --address`
    env: dict[str, str]
    workers: list[Node] = field(default_factory=list)


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


def processes_under(mark: str) -> list[psutil.Process]:
    """The processes with `mark` in an argument, and their descendants: Ray's
    daemons name their node's temp dir; workers and job drivers descend from them."""
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        if any(mark in arg for arg in p.info["cmdline"] or ()):
            roots.append(p)
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update((c.pid, c) for c in p.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return list(found.values())


def kill(procs: list[psutil.Process], sig: int = signal.SIGTERM) -> None:
    """`sig`, then SIGKILL for whatever is still alive after 5 s."""
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def kill_node(node: Node) -> None:
    """A node lost at once: its raylet and every process under it, SIGKILL."""
    kill(processes_under(node.temp_dir + os.sep), signal.SIGKILL)


def replace_node(cluster: Cluster, node: Node) -> None:
    """A lost node replaced by a new one with the same resources, as an
    autoscaler would: the cluster is whole again for the tests that share it."""
    i = cluster.workers.index(node)
    fresh = Node(f"{node.temp_dir}-{len(cluster.workers)}", node.cpus, node.gpus)
    _start([[f"--address={cluster.gcs}", *_node_ports(free_ports(6)), f"--num-cpus={fresh.cpus}",
             f"--num-gpus={fresh.gpus}", f"--temp-dir={fresh.temp_dir}"]], cluster.env)
    cluster.workers[i] = fresh


def _node_ports(ports: list[int]) -> list[str]:
    node_manager, object_manager, agent_http, agent_grpc, runtime_env_agent, metrics = ports
    return [f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
            f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env_agent}", f"--metrics-export-port={metrics}",
            "--min-worker-port=0", "--max-worker-port=0"]  # workers: any free port


def _start(commands: list[list[str]], env: dict[str, str], retries: int = 1) -> None:
    """`ray start` with each command's flags, all at once; each must succeed.
    `ray start` gives a raylet 30 s to register (Ray 2.60's node.py, not
    configurable): on a loaded 2-core machine a node that misses it is
    stopped (its processes, by its --temp-dir) and started again, `retries`
    times."""
    procs = [subprocess.Popen([RAY, "start", *cmd, "--node-ip-address=127.0.0.1",
                               "--object-store-memory=200000000", "--disable-usage-stats"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True) for cmd in commands]
    again = []
    for cmd, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=180)
        if proc.returncode != 0 and retries and "timed out during startup" in err:
            temp_dir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--temp-dir="))
            kill(processes_under(temp_dir + os.sep), signal.SIGKILL)
            again.append(cmd)
            continue
        assert proc.returncode == 0, out[-2000:] + err[-3000:]
    if again:
        _start(again, env, retries - 1)


def ray_cli(cluster: Cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=cluster.env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@contextmanager
def ray_cluster(head_cpus: int, workers: list[tuple[int, int]] = (),
                env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A head with `head_cpus` CPUs and one worker node per (cpus, gpus); `env`
    reaches every node's processes (as an instance profile reaches a real node's)."""
    root = tempfile.mkdtemp(prefix="charlm-ray-", dir="/tmp")  # short: socket paths
    # Named as Ray names its default temp dir under RAY_TMPDIR: a process given
    # RAY_TMPDIR=<root> finds this cluster as one on a cluster's own head does.
    temp_dir = os.path.join(root, "ray")
    os.mkdir(temp_dir)
    token_path = os.path.join(root, "auth_token")
    with open(token_path, "w") as f:
        f.write(secrets.token_hex(32))
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("RAY_") and k.lower() not in ("http_proxy", "https_proxy")}
    # The job's `python` is the first on the head's PATH: this venv's.
    full_env.update(PATH=f"{BIN}{os.pathsep}{full_env.get('PATH', '')}",
                    NO_PROXY="127.0.0.1,localhost", RAY_AUTH_MODE="token",
                    RAY_AUTH_TOKEN_PATH=token_path, RAY_USAGE_STATS_ENABLED="0",
                    # A lost node is known in ~5 s, not Ray's default ~15 s
                    # (5 missed health checks, every 3 s); an alive one still
                    # has 10 s to answer each.
                    RAY_health_check_period_ms="1000", **SESSION,
                    # Workers at normal priority, as the embedded Ray's
                    # (runtime.init_ray): at Ray's nice 15 the other test
                    # worker's processes would starve the cluster's jobs.
                    RAY_worker_niceness="0", **(env or {}))
    gcs, dashboard, client, *node_ports = free_ports(9)
    cluster = Cluster(temp_dir, f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs}", full_env)
    try:
        _start([["--head", "--dashboard-host=127.0.0.1", f"--port={gcs}",
                 f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
                 *_node_ports(node_ports), f"--num-cpus={head_cpus}", "--num-gpus=0",
                 f"--temp-dir={temp_dir}"]], full_env)
        cluster.workers = [Node(os.path.join(temp_dir, f"worker{i}"), cpus, gpus)
                           for i, (cpus, gpus) in enumerate(workers)]
        ports = free_ports(6 * len(workers))
        _start([[f"--address={cluster.gcs}", *_node_ports(ports[6 * i:6 * i + 6]),
                 f"--num-cpus={n.cpus}", f"--num-gpus={n.gpus}", f"--temp-dir={n.temp_dir}"]
                for i, n in enumerate(cluster.workers)], full_env)
        deadline = time.monotonic() + 90
        while True:
            try:
                jobs_client(cluster)
                break
            except (ConnectionError, RuntimeError):  # the head's job API not up yet
                assert time.monotonic() < deadline, "the head's job API never came up"
                time.sleep(1)
        yield cluster
    finally:
        # Nothing of theirs outlives the dir. The head's Ray Client server,
        # started by `ray start` (which exits), names only the head's address.
        kill(processes_under(root) + processes_under(f"--address={cluster.gcs}"),
             signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def submit(cluster: Cluster, submission_id: str, *pipeline_args: str, module: str = "pipeline",
           wait: bool = True, env_vars: dict[str, str] | None = None,
           cli: bool = False) -> tuple[str, str]:
    """A job sent as `ray job submit --working-dir .` sends it: by Ray's job
    SDK in this process, or with `cli` by the ray CLI itself, as a user runs
    it (a new Python that imports Ray, then calls the same SDK). `env_vars`
    are set for the job, and the session's Ray Train poll interval (conftest)
    too: the cluster's default, 2 s, would add a poll's wait to every run's
    start, end and restart. With `wait`, returns the final status (succeeded,
    failed or stopped) and the job's logs."""
    env_vars = {k: os.environ[k] for k in (POLL,) if k in os.environ} | (env_vars or {})
    runtime_env = {"excludes": EXCLUDES, **({"env_vars": env_vars} if env_vars else {})}
    entrypoint = ["python", "-m", f"jobs.{module}", *pipeline_args]
    if cli:
        proc = ray_cli(cluster, "job", "submit", "--address", cluster.address, "--submission-id",
                       submission_id, "--working-dir", ".", "--runtime-env-json",
                       json.dumps(runtime_env), "--no-wait", "--", *entrypoint)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    else:
        jobs_client(cluster).submit_job(entrypoint=shlex.join(entrypoint),
                                        submission_id=submission_id,
                                        runtime_env={"working_dir": ROOT, **runtime_env})
    return wait_for(cluster, submission_id) if wait else ("submitted", "")


# The job SDK and the state API, in this process: each `ray job status` or
# `ray list` would be a new Python importing Ray, and the tests poll.
ENDED = {"SUCCEEDED": "succeeded", "FAILED": "failed", "STOPPED": "stopped"}


def _headers(cluster: Cluster) -> dict[str, str]:
    with open(cluster.env["RAY_AUTH_TOKEN_PATH"], encoding="utf-8") as f:
        return {"Authorization": f"Bearer {f.read().strip()}"}


def jobs_client(cluster: Cluster):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.address, headers=_headers(cluster))


def wait_for(cluster: Cluster, submission_id: str,
             timeout: float = JOB_TIMEOUT_S) -> tuple[str, str]:
    """The job's final status and its logs, once it has ended."""
    client = jobs_client(cluster)
    deadline = time.monotonic() + timeout
    while (status := client.get_job_status(submission_id).value) not in ENDED:
        if time.monotonic() > deadline:
            client.stop_job(submission_id)
            pytest.fail(f"job {submission_id} not done after {timeout}s:\n"
                        + client.get_job_logs(submission_id)[-5000:])
        time.sleep(0.25)
    return ENDED[status], client.get_job_logs(submission_id)


def seconds_ran(cluster: Cluster, submission_id: str) -> float:
    info = jobs_client(cluster).get_job_info(submission_id)
    return (info.end_time - info.start_time) / 1000


class Jobs:
    """Jobs submitted at once (`ray job submit --no-wait`), so that their
    start-up overlaps; each one's (final status, logs, seconds it ran) is
    waited for when first asked, once."""

    def __init__(self, cluster: Cluster, timeout: float = JOB_TIMEOUT_S) -> None:
        self.cluster, self.timeout, self.found = cluster, timeout, {}

    def submit(self, submission_id: str, *args: str, module: str = "pipeline") -> Jobs:
        submit(self.cluster, submission_id, *args, module=module, wait=False)
        return self

    def __getitem__(self, submission_id: str) -> tuple[str, str, float]:
        if submission_id not in self.found:
            try:
                status, log = wait_for(self.cluster, submission_id, self.timeout)
                self.found[submission_id] = (status, log,
                                             seconds_ran(self.cluster, submission_id))
            except BaseException as e:  # pytest.fail's too: each job is waited for once
                self.found[submission_id] = e
        if isinstance(self.found[submission_id], BaseException):
            raise self.found[submission_id]
        return self.found[submission_id]


def printed(log: str, label: str) -> str:
    """The last `<label>: <path>` line the job printed."""
    found = re.findall(rf"^{label}: (.+)$", log, flags=re.MULTILINE)
    assert found, f"no '{label}:' line in the job's logs:\n{log[-5000:]}"
    return found[-1].strip()


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("error: ")]


def state(cluster: Cluster, kind: str, **equal: str) -> list[dict]:
    """Ray's state API (what `ray list <kind>` shows), dead entries included."""
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    client = StateApiClient(cluster.address, headers=_headers(cluster))
    options = ListApiOptions(limit=10000, detail=True,
                             filters=[(k, "=", v) for k, v in equal.items()])
    rows = client.list(StateResource(kind), options, raise_on_missing_output=False)
    return [row.dict() if hasattr(row, "dict") else dataclasses.asdict(row) for row in rows]


def job_id(cluster: Cluster, submission_id: str) -> str:
    jobs = state(cluster, "jobs", submission_id=submission_id)
    assert len(jobs) == 1, jobs
    return jobs[0]["job_id"]


# -- S3 ------------------------------------------------------------------------

BUCKET = "charlm"  # the shared multi-node cluster's (conftest.multinode)
RUNS = f"s3://{BUCKET}/runs"

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def s3_server(bucket: str) -> Iterator[dict[str, str]]:
    """moto's S3 server on a free port with `bucket` created; yields the
    environment that points pyarrow, pandas and boto3 at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_ports(1)[0]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    try:
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                     aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=bucket)
        yield env
    finally:
        server.stop()


@contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """`values` in this process's environment for the block (pandas reads s3:// here)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_main(main, *argv: str) -> tuple[int, str, str]:
    """A job's main(argv) in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
            status = 0
        except SystemExit as e:
            status = e.code
    return status, out.getvalue(), err.getvalue()
