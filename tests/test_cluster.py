"""The cluster path, on a cluster shaped like cluster.yaml's: a head with 0 CPUs,
three CPU worker nodes and one that advertises a GPU TensorFlow cannot see,
joined with `ray start --address`; an S3-compatible server (moto) as the only
storage; every job sent with `ray job submit --working-dir .`. One cluster for
the whole module: the jobs are tiny, they prove wiring.
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
    TINY,
    Cluster,
    environ,
    error_lines,
    job_id,
    kill_node,
    printed,
    processes_under,
    ray_cluster,
    s3_server,
    state,
    submit,
    wait_for,
)

BUCKET = "charlm"
RUNS = f"s3://{BUCKET}/runs"
CPU_NODES = 3
# Each training worker on a node of its own, with room on the third to
# re-place one after a node is lost (Ray Data's tasks run beside them).
SPREAD = ["--train.num-workers", "2", "--train.placement-strategy", "STRICT_SPREAD"]
# TINY's training, as jobs.train's own flags; TWO_NODES is SPREAD for jobs.train.
TRAIN_TINY = ["--preset", "quick",  # the pipeline's default: a resume must match the recipe
              *[f.replace("--train.", "--") for f in TINY[:TINY.index("--generate.num-seeds")]]]
TWO_NODES = [f.replace("--train.", "--") for f in SPREAD]


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    with s3_server(BUCKET) as env, environ(env):
        yield env


@pytest.fixture(scope="module")
def cluster(s3: dict[str, str]) -> Iterator[Cluster]:
    # The S3 credentials reach every node's processes, as an instance profile would.
    with ray_cluster(head_cpus=0, workers=[(2, 0)] * CPU_NODES + [(1, 1)], env=s3) as c:
        yield c


def s3_exists(uri: str) -> bool:
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def history_epochs(run: str) -> list[int]:
    return pd.read_parquet(f"{run}/history.parquet")["epoch"].tolist()


def train_worker_nodes(cluster: Cluster, submission_id: str) -> list[str]:
    """The node of every Ray Train worker the job started, from Ray's state API."""
    actors = state(cluster, "actors", "class_name=RayTrainWorker",
                   f"job_id={job_id(cluster, submission_id)}")
    return [a["node_id"] for a in actors]


@pytest.fixture(scope="module")
def wired(cluster: Cluster, corpus: str) -> str:
    """The pipeline, trained on two nodes into S3; returns its logs."""
    status, log = submit(cluster, "pipeline-s3", "--corpus", corpus, "--storage-path", RUNS,
                         "--name", "wired", *TINY, *SPREAD)
    assert status == "succeeded", log[-5000:]
    return log


def test_pipeline_trains_on_two_nodes_and_writes_s3(cluster: Cluster, wired: str) -> None:
    run = f"{RUNS}/wired"
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


def test_resubmitting_the_name_resumes_from_s3(cluster: Cluster, corpus: str,
                                               wired: str) -> None:
    """The restore reads the optimizer's slots from Ray Train's temporary copy
    of the S3 checkpoint: the next epoch's first step must not need it."""
    run = f"{RUNS}/wired"
    status, log = submit(cluster, "train-s3-again", "--corpus", corpus, "--storage-path", RUNS,
                         "--name", "wired", *TRAIN_TINY, *TWO_NODES, "--epochs", "2",
                         module="train")
    assert status == "succeeded", log[-5000:]
    assert "resumed from epoch 1" in log, log[-5000:]
    assert history_epochs(run) == [1, 2]
    assert printed(log, "best checkpoint").startswith(f"{run}/checkpoint_epoch_")


def test_losing_a_node_resumes_from_s3(cluster: Cluster, corpus: str) -> None:
    run = f"{RUNS}/node-lost"
    epochs = 3
    submit(cluster, "train-node-lost", "--corpus", corpus, "--storage-path", RUNS,
           "--name", "node-lost", *TRAIN_TINY, *TWO_NODES, "--epochs", str(epochs),
           "--max-failures", "2",
           module="train", wait=False)
    # Kill once Ray Train has registered epoch 1's checkpoint in its persisted
    # state: the restart must then resume from it.
    fs, snapshot = pafs.FileSystem.from_uri(f"{run}/checkpoint_manager_snapshot.json")
    deadline = time.monotonic() + 240

    def registered() -> bool:
        try:
            with fs.open_input_stream(snapshot) as f:
                return "checkpoint_epoch_0001" in f.read().decode()
        except OSError:
            return False

    while not registered():
        assert time.monotonic() < deadline, "no first checkpoint registered"
        time.sleep(0.5)
    victim = next(node for node in cluster.workers
                  if any("RayTrainWorker" in " ".join(p.cmdline())
                         for p in processes_under(node.temp_dir + "/")
                         if p.is_running()) and not any(
                      "TrainController" in " ".join(p.cmdline())
                      for p in processes_under(node.temp_dir + "/")))
    kill_node(victim)
    assert not [p for p in processes_under(victim.temp_dir + "/")
                if p.status() != psutil.STATUS_ZOMBIE]
    status, log = wait_for(cluster, "train-node-lost")
    assert status == "succeeded", log[-5000:]
    assert "resumed from epoch" in log, log[-5000:]
    assert history_epochs(run) == list(range(1, epochs + 1))


def test_local_paths_are_refused_on_a_multi_node_cluster(cluster: Cluster, corpus: str,
                                                         wired: str, tmp_path) -> None:
    """Nothing written, one line naming the flag; --shared-filesystem is the way out."""
    local = tmp_path / "runs"
    status, log = submit(cluster, "train-local", "--corpus", corpus, "--storage-path",
                         str(local), "--epochs", "1", module="train")
    errors = error_lines(log)
    assert status == "failed" and len(errors) == 1, log[-5000:]
    assert "--storage-path" in errors[0] and "--shared-filesystem" in errors[0]
    assert not local.exists()

    status, log = submit(cluster, "generate-local", "--checkpoint", f"{RUNS}/wired",
                         "--output", str(local / "gen"), "--num-seeds", "1", module="generate")
    errors = error_lines(log)
    assert status == "failed" and len(errors) == 1 and "--output" in errors[0], log[-5000:]
    assert not local.exists()


def test_use_gpu_fails_fast_where_tensorflow_sees_no_gpu(cluster: Cluster, corpus: str,
                                                        wired: str) -> None:
    """The fourth node advertises a GPU (`ray start --num-gpus 1`) that
    TensorFlow cannot see: the broken-CUDA case. Training and generation fail
    before their first step or batch, in one line naming the node and cause."""
    status, log = submit(cluster, "train-no-gpu", "--corpus", corpus, "--storage-path", RUNS,
                         "--name", "no-gpu", "--use-gpu", *TRAIN_TINY, module="train")
    errors = error_lines(log)
    assert status == "failed" and len(errors) == 1, log[-5000:]
    gpu_node = next(n["node_id"] for n in state(cluster, "nodes")
                    if n["resources_total"].get("GPU"))
    assert re.search(rf"training worker 0 on node \S+ \({gpu_node[:12]}\)", errors[0]), errors
    assert "TensorFlow sees no GPU" in errors[0], errors
    assert "epoch 1/1" not in log and not s3_exists(f"{RUNS}/no-gpu/history.parquet")

    output = f"{RUNS}/wired/gpu-generations"
    status, log = submit(cluster, "generate-no-gpu", "--checkpoint", f"{RUNS}/wired",
                         "--output", output, "--num-seeds", "1", "--use-gpu",
                         module="generate")
    errors = error_lines(log)
    assert status == "failed" and len(errors) == 1, log[-5000:]
    assert re.search(rf"generation actor on node \S+ \({gpu_node[:12]}\)", errors[0]), errors
    assert "TensorFlow sees no GPU" in errors[0], errors
    assert not s3_exists(output)



def test_workers_that_cannot_be_placed_fail_at_the_deadline(cluster: Cluster,
                                                             corpus: str) -> None:
    """No node has 64 CPUs and no autoscaler can add one: Ray Train alone would
    retry forever; charlm's deadline ends the job in one line."""
    status, log = submit(cluster, "train-unplaceable", "--corpus", corpus, "--storage-path",
                         RUNS, "--name", "unplaceable", *TRAIN_TINY, "--cpus-per-worker", "64",
                         "--placement-timeout", "5", module="train")
    errors = error_lines(log)
    assert status == "failed" and len(errors) == 1, log[-5000:]
    assert "training workers could not be placed on the cluster within 5 s" in errors[0], errors
