"""Jobs on a head that can place nothing: 0 CPUs and no worker nodes, as
cluster.yaml's head is until its GPU nodes come (or when they never come).
Every wait ends at the placement deadline with one `error:` line and nothing
written: training from a file, from a directory corpus, and generation. All
run at once, as `ray job submit` and as a job started on the head itself
(which joins its cluster); this single-node cluster keeps their local paths.

The head comes from tests/raycluster.py: free ports, its own temp dir and auth
token, stopped by killing exactly its processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from raycluster import (
    ROOT,
    TINY,
    Cluster,
    error_lines,
    ray_cluster,
    seconds_ran,
    state,
    submit,
    wait_for,
)

from charlm.config import TrainConfig
from jobs.pipeline import route

# Short: what these jobs do before their waits needs no CPU (a file corpus is
# read and sampled in the driver, Ray Train's controller asks for none), so
# each job waits out the deadline whatever it is.
DEADLINE = 5
# Past the deadline: the job's start (Python, Ray, TensorFlow imports) on a
# 2-core machine loaded by the other test worker too, and the deadline's own
# polling. Far short of never.
MARGIN = 60
TRAIN = [f.replace("--train.", "--") for f in TINY[:TINY.index("--generate.num-seeds")]]


@pytest.fixture(scope="module")
def head() -> Iterator[Cluster]:
    with ray_cluster(head_cpus=0) as cluster:
        yield cluster


class Stuck:
    """The jobs, all started at once; each one's (status, log, seconds it
    ran), waited for when first asked."""

    def __init__(self, head: Cluster, corpus: str, root) -> None:
        self.head, self.outputs, self.found = head, root / "out", {}
        pieces = root / "pieces"  # a directory corpus: read by Ray Data tasks
        pieces.mkdir()
        text = open(corpus, encoding="utf-8").read()
        for i in range(2):
            (pieces / f"{i}.txt").write_text(text[i * len(text) // 2:(i + 1) * len(text) // 2])
        checkpoint = root / "checkpoint"  # what generation's driver reads; no actor starts
        checkpoint.mkdir()
        (checkpoint / "charlm.json").write_text(json.dumps({
            "format": 1, "run": "stuck", "epoch": 1, "vocab": " abcdefghijklmnopqrstuvwxyz",
            "config": TrainConfig(units=16).to_dict()}))
        runs, deadline = str(self.outputs / "runs"), ["--placement-timeout", str(DEADLINE)]
        submit(head, "train-dir", "--corpus", str(pieces), "--storage-path", runs,
               "--name", "dir", *TRAIN, *deadline, module="train", wait=False)
        submit(head, "generate", "--checkpoint", str(checkpoint), "--output",
               str(self.outputs / "gen"), "--seed", "the quick", "--no-recipe-seed", *deadline,
               module="generate", wait=False)
        submit(head, "bad-argument", "--corpus", corpus, "--storage-path", runs,
               "--train.num-workers", "0", wait=False)
        # After `ray attach`, a job run on the head joins the cluster that `ray
        # start` recorded there, without RAY_ADDRESS (an embedded Ray would train).
        env = {k: v for k, v in head.env.items() if k != "RAY_ADDRESS"}
        env["RAY_TMPDIR"] = os.path.dirname(head.temp_dir)
        self.log_path = root / "on-head.log"
        self.started, self.finished = time.monotonic(), []
        with open(self.log_path, "w") as log:
            self.on_head = subprocess.Popen(
                [sys.executable, "-m", "jobs.train", "--corpus", corpus, "--storage-path", runs,
                 "--name", "file", *TRAIN, *deadline],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._wait_on_head, daemon=True).start()

    def _wait_on_head(self) -> None:
        self.on_head.wait()
        self.finished.append(time.monotonic())

    def __getitem__(self, name: str) -> tuple[str, str, float]:
        if name not in self.found:
            try:
                self.found[name] = self._train_file() if name == "train-file" \
                    else self._job(name)
            except BaseException as e:  # pytest.fail's too: a job waited for once
                self.found[name] = e
        if isinstance(self.found[name], BaseException):
            raise self.found[name]
        return self.found[name]

    def _job(self, name: str) -> tuple[str, str, float]:
        status, log = wait_for(self.head, name, timeout=DEADLINE + MARGIN + 60)
        return status, log, seconds_ran(self.head, name)

    def _train_file(self) -> tuple[str, str, float]:
        try:
            self.on_head.wait(timeout=max(1.0, self.started + DEADLINE + MARGIN + 60
                                          - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.on_head.kill()
            pytest.fail(f"jobs.train on the head did not end:\n{self.log_path.read_text()}")
        while not self.finished:
            time.sleep(0.1)
        return ("failed" if self.on_head.returncode else "succeeded", self.log_path.read_text(),
                self.finished[0] - self.started)


@pytest.fixture(scope="module")
def stuck(head: Cluster, corpus: str, tmp_path_factory) -> Stuck:
    return Stuck(head, corpus, tmp_path_factory.mktemp("stuck"))


def one_placement_error(stuck: Stuck, name: str, what: str) -> str:
    status, log, seconds = stuck[name]
    errors = error_lines(log)
    assert status == "failed" and len(errors) == 1, log[-5000:]
    assert f"could not be placed on the cluster within {DEADLINE} s" in errors[0], errors
    assert what in errors[0] and "Traceback" not in log.split("entrypoint", 1)[-1], log[-5000:]
    assert seconds <= DEADLINE + MARGIN, f"{name} ran {seconds:.0f} s"
    return errors[0]


def test_training_from_a_file_fails_at_the_deadline(stuck: Stuck, head: Cluster) -> None:
    """A file corpus is read and sampled in the driver; Train's workers wait
    for the deadline."""
    error = one_placement_error(stuck, "train-file", "training workers")
    assert "the cluster lacks the CPUs asked for" in error, error
    drivers = [j for j in state(head, "jobs") if j["type"] == "DRIVER"
               and "jobs.train" in (j.get("entrypoint") or "")]
    assert drivers, "the job ran on an embedded Ray, not on the cluster"


def test_generation_fails_at_the_deadline(stuck: Stuck) -> None:
    one_placement_error(stuck, "generate", "generation actors")


def test_bad_argument_fails_with_one_line_error(stuck: Stuck) -> None:
    status, log, _ = stuck["bad-argument"]
    errors = error_lines(log)
    assert status == "failed" and len(errors) == 1 and "--num-workers" in errors[0], log[-5000:]
    assert "Traceback" not in log


def test_training_from_a_directory_fails_at_the_deadline(stuck: Stuck) -> None:
    """Ray Data's read tasks would wait for a CPU forever."""
    one_placement_error(stuck, "train-dir", "the corpus's read tasks")


def test_nothing_is_written_on_a_cluster_that_places_nothing(stuck: Stuck) -> None:
    for name in ("train-file", "generate", "bad-argument", "train-dir"):
        stuck[name]
    found = [os.path.join(d, f) for d, _, files in os.walk(stuck.outputs) for f in files]
    assert not found, found


def test_route_sends_prefixed_flags_to_their_job() -> None:
    own, routed = route(["--corpus", "a.txt", "--train.epochs", "2", "--generate.temperatures",
                         "0.5", "-1.0", "--use-gpu", "--report.dpi=80", "--train.use-gpu"])
    assert own == ["--corpus", "a.txt", "--use-gpu"]
    assert routed == {"train": ["--epochs", "2", "--use-gpu"],
                      "generate": ["--temperatures", "0.5", "-1.0"],
                      "report": ["--dpi=80"]}
