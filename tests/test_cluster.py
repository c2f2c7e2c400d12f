"""The cluster path, on the session's multi-node cluster (conftest.multinode):
shaped like cluster.yaml's, a head with 0 CPUs, two CPU worker nodes and one
that advertises a GPU TensorFlow cannot see, joined with `ray start
--address`; an S3-compatible server (moto) as the only storage; the pipeline
sent with `ray job submit --working-dir .` as a user runs it, the other jobs
as that command sends them (raycluster.submit). The jobs are tiny: they prove
wiring.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pandas as pd
import psutil
import pyarrow.fs as pafs
import pytest
from raycluster import (
    RUNS,
    TINY,
    Cluster,
    Jobs,
    Node,
    environ,
    error_lines,
    job_id,
    kill_node,
    printed,
    processes_under,
    replace_node,
    state,
    submit,
    wait_for,
)

# Each training worker on a node of its own, with room on the third (the GPU
# node's CPUs) to re-place one after a node is lost (Ray Data's tasks run
# beside them).
SPREAD = ["--train.num-workers", "2", "--train.placement-strategy", "STRICT_SPREAD"]
# TINY's training, as jobs.train's own flags; TWO_NODES is SPREAD for jobs.train.
TRAIN_TINY = ["--preset", "quick",  # the pipeline's default: a resume must match the recipe
              *[f.replace("--train.", "--") for f in TINY[:TINY.index("--generate.num-seeds")]]]
TWO_NODES = [f.replace("--train.", "--") for f in SPREAD]


@pytest.fixture(scope="module")
def cluster(multinode: Cluster, s3_env: dict[str, str]) -> Iterator[Cluster]:
    with environ(s3_env):  # pandas and pyarrow read s3:// in this process too
        yield multinode


def s3_exists(uri: str) -> bool:
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def history_epochs(run: str) -> list[int]:
    return pd.read_parquet(f"{run}/history.parquet")["epoch"].tolist()


def train_worker_nodes(cluster: Cluster, submission_id: str) -> list[str]:
    """The node of every Ray Train worker the job started, from Ray's state API."""
    actors = state(cluster, "actors", class_name="RayTrainWorker",
                   job_id=job_id(cluster, submission_id))
    return [a["node_id"] for a in actors]


@pytest.fixture(scope="module")
def wired(cluster: Cluster, corpus: str) -> str:
    """The pipeline, trained on two nodes into S3; returns its logs."""
    status, log = submit(cluster, "pipeline-s3", "--corpus", corpus, "--storage-path", RUNS,
                         "--name", "wired", *TINY, *SPREAD, cli=True)
    assert status == "succeeded", log[-5000:]
    return log


def test_pipeline_trains_on_two_nodes_and_writes_s3(cluster: Cluster, wired: str) -> None:
    run = f"{RUNS}/wired"
    # The job's output (after the ray CLI's own coloured header) holds the
    # driver's lines: no worker prefix, no colour.
    job_output = wired.split("Running entrypoint for job", 1)[-1]
    assert re.search(r"^epoch 1/1  loss .* val_bpc ", job_output, flags=re.MULTILINE), wired
    assert "pid=" not in job_output and "\x1b[" not in job_output, wired[-5000:]
    nodes = train_worker_nodes(cluster, "pipeline-s3")
    assert len(nodes) == 2 and len(set(nodes)) == 2, nodes

    checkpoint = printed(wired, "best checkpoint")
    assert checkpoint.startswith(f"{run}/checkpoint_"), checkpoint
    assert s3_exists(f"{checkpoint}/charlm.json")
    assert history_epochs(run) == [1]

    output = printed(wired, "generations")
    assert output == f"{run}/generations"
    frame = pd.read_parquet(output)
    assert set(frame["temperature"]) == {0.2, 0.5, 1.0, 1.2}
    assert frame["seed_text"].nunique() >= 2 and set(frame["checkpoint"]) == {checkpoint}
    chart = printed(wired, "chart")
    assert chart.startswith("s3://") and s3_exists(chart)


def test_a_resubmitted_run_resumes_and_outlives_a_lost_node(cluster: Cluster,
                                                            corpus: str, wired: str) -> None:
    """Submitting `wired` again resumes it from its epoch 1 on S3; then a whole
    worker node is lost once epoch 2's checkpoint is registered, and Ray Train
    restarts the workers, which resume from the last one registered. The
    restore reads the optimizer's slots from Ray Train's temporary copy of the
    S3 checkpoint: the next epoch's first step must not need it."""
    run, epochs = f"{RUNS}/wired", 6  # room for the epochs that end before the kill lands
    submit(cluster, "train-s3-again", "--corpus", corpus, "--storage-path", RUNS,
           "--name", "wired", *TRAIN_TINY, *TWO_NODES, "--epochs", str(epochs),
           "--max-failures", "2", "--keep-checkpoints", "1", module="train", wait=False)
    fs, snapshot = pafs.FileSystem.from_uri(f"{run}/checkpoint_manager_snapshot.json")
    deadline = time.monotonic() + 240

    def registered() -> bool:
        try:
            with fs.open_input_stream(snapshot) as f:
                return "checkpoint_epoch_0002" in f.read().decode()
        except OSError:
            return False

    def victim() -> Node | None:
        """A node with a training worker and not the controller."""
        for node in cluster.workers:
            commands = [" ".join(p.cmdline()) for p in processes_under(node.temp_dir + "/")
                        if p.is_running()]
            if (any("RayTrainWorker" in c for c in commands)
                    and not any("TrainController" in c for c in commands)):
                return node
        return None

    # Chosen before epoch 2 ends (the workers live through the run), so the
    # kill follows the registration closely.
    while (node := victim()) is None:
        assert time.monotonic() < deadline, "no training worker started"
        time.sleep(0.5)
    while not registered():
        assert time.monotonic() < deadline, "no second checkpoint registered"
        time.sleep(0.1)
    kill_node(node)
    try:
        assert not [p for p in processes_under(node.temp_dir + "/")
                    if p.status() != psutil.STATUS_ZOMBIE]
        status, log = wait_for(cluster, "train-s3-again")
    finally:
        replace_node(cluster, node)
    assert status == "succeeded", log[-5000:]
    resumes = [int(e) for e in re.findall(r"^resumed from epoch (\d+) ", log, re.MULTILINE)]
    assert len(resumes) == 2 and resumes[0] == 1 and 2 <= resumes[1] < epochs, log[-5000:]
    assert history_epochs(run) == list(range(1, epochs + 1))
    best = printed(log, "best checkpoint")
    fs, path = pafs.FileSystem.from_uri(run)
    kept = [i.base_name for i in fs.get_file_info(pafs.FileSelector(path))
            if i.base_name.startswith("checkpoint_epoch_")]
    # --keep-checkpoints 1: the best and the latest, deleted from S3 as the run went.
    assert best.rsplit("/", 1)[1] in kept and f"checkpoint_epoch_{epochs:04d}" in kept
    assert len(kept) <= 2, kept


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """A path on this machine's disk, which is one node's of several."""
    return tmp_path_factory.mktemp("local") / "runs"


@pytest.fixture(scope="module")
def refused(cluster: Cluster, corpus: str, wired: str, local) -> Jobs:
    """The jobs that must fail before their first step or batch, all at once."""
    refused = Jobs(cluster)
    refused.submit("train-local", "--corpus", corpus, "--storage-path", str(local),
                   "--epochs", "1", module="train")
    refused.submit("generate-local", "--checkpoint", f"{RUNS}/wired", "--output",
                   str(local / "gen"), "--num-seeds", "1", module="generate")
    refused.submit("train-no-gpu", "--corpus", corpus, "--storage-path", RUNS, "--name",
                   "no-gpu", "--use-gpu", *TRAIN_TINY, module="train")
    refused.submit("generate-no-gpu", "--checkpoint", f"{RUNS}/wired", "--output",
                   f"{RUNS}/wired/gpu-generations", "--num-seeds", "1", "--use-gpu",
                   module="generate")
    return refused


def one_error(jobs: Jobs, name: str) -> tuple[str, str]:
    status, log, _ = jobs[name]
    errors = error_lines(log)
    assert status == "failed" and len(errors) == 1, log[-5000:]
    return errors[0], log


def test_local_paths_are_refused_on_a_multi_node_cluster(refused: Jobs, local) -> None:
    """Nothing written, one line naming the flag; --shared-filesystem is the way out."""
    error, _ = one_error(refused, "train-local")
    assert "--storage-path" in error and "--shared-filesystem" in error
    error, _ = one_error(refused, "generate-local")
    assert "--output" in error
    assert not local.exists()


def test_use_gpu_fails_fast_where_tensorflow_sees_no_gpu(cluster: Cluster,
                                                        refused: Jobs) -> None:
    """The fourth node advertises a GPU (`ray start --num-gpus 1`) that
    TensorFlow cannot see: the broken-CUDA case. Training and generation fail
    before their first step or batch, in one line naming the node and cause."""
    gpu_node = next(n["node_id"] for n in state(cluster, "nodes")
                    if n["resources_total"].get("GPU") and n["state"] == "ALIVE")
    error, log = one_error(refused, "train-no-gpu")
    assert re.search(rf"training worker 0 on node \S+ \({gpu_node[:12]}\)", error), error
    # The node has no CUDA wheels (nor driver): the first cause is the gpu extra.
    assert "TensorFlow sees no GPU" in error and "gpu extra" in error, error
    assert "epoch 1/1" not in log and not s3_exists(f"{RUNS}/no-gpu/history.parquet")

    error, log = one_error(refused, "generate-no-gpu")
    assert re.search(rf"generation actor on node \S+ \({gpu_node[:12]}\)", error), error
    assert "TensorFlow sees no GPU" in error and "gpu extra" in error, error
    assert not s3_exists(f"{RUNS}/wired/gpu-generations")
    # One line, as training's: the GPU is checked before Ray Data starts an
    # actor, so none of its failure's tracebacks reach the job's log.
    job_output = log.split("Running entrypoint for job", 1)[-1]
    assert "Traceback" not in job_output and "ActorDiedError" not in job_output, job_output
