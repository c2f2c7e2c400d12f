"""Joining a Ray cluster or starting an embedded one, with TensorFlow and Ray
quiet unless --verbose."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile
import time
import warnings

from charlm.errors import CharlmError


def worker_env(verbose: bool) -> dict[str, str]:
    """Environment for every Ray worker: tf-keras, and no C++ log noise by default."""
    # Two malloc arenas: TensorFlow's threads otherwise each keep their own,
    # and freed activations linger in them (peak memory per worker). A 64 MB
    # top pad: without it a training step's slices (model.CharLM) return
    # their memory to the kernel and fault it back in every slice, which ran
    # a worker at a third of its speed.
    env = {"TF_USE_LEGACY_KERAS": "1", "MALLOC_ARENA_MAX": "2", "MALLOC_TOP_PAD_": str(64 << 20)}
    if not verbose:
        env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore", RAY_DATA_LOG_LEVEL="ERROR")
    return env


def set_training_threads(cpus: int) -> tuple[int, int]:
    """TensorFlow threads for training on `cpus` cores: two ops at a time (an
    LSTM step's matmuls are largely independent: input and recurrent forward,
    weight and state gradients backward; and a worker waiting on an all-reduce
    can compute meanwhile), each split over half the cores. On 2 cores, one
    worker ran the seed preset 20% faster with 1 intra-op thread × 2 inter-op
    than with 2 × 2, and two 1-CPU workers 3% faster with 2 inter-op threads
    than with 1 (BENCHMARKS.md). Returns (intra-op, inter-op)."""
    import tensorflow as tf

    intra, inter = max(1, cpus // 2), 2
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    return intra, inter


@contextlib.contextmanager
def _stderr_muted():
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _MutedLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with _stderr_muted():
            self.loader.exec_module(module)


class _MuteTensorflowImport(importlib.abc.MetaPathFinder):
    """TensorFlow 2.21 logs through absl as its native library loads, before
    TF_CPP_MIN_LOG_LEVEL applies; mute file descriptor 2 for that one import,
    whoever imports it (Ray Train imports TensorFlow before our code runs)."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _MutedLoader(spec.loader)
        return spec


def mute_tensorflow_import() -> None:
    """Also the Ray worker_process_setup_hook, so it runs in every worker."""
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, _MuteTensorflowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _MuteTensorflowImport())


def quiet(verbose: bool) -> None:
    """Apply worker_env to this process and silence Python-side loggers."""
    os.environ.update(worker_env(verbose))
    if verbose:
        return
    warnings.filterwarnings("ignore")
    for name in ("tensorflow", "absl", "ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    mute_tensorflow_import()


def runtime_env(verbose: bool) -> dict:
    """The runtime_env for charlm's Ray workers (jobs, trainers, actors)."""
    env: dict = {"env_vars": worker_env(verbose)}
    if not verbose:
        env["worker_process_setup_hook"] = "charlm.runtime.mute_tensorflow_import"
    return env


def quiet_worker(verbose: bool) -> str | None:
    """In a Ray worker, send file descriptor 2 (TensorFlow's C++ logs, Ray's
    worker logs) to a file instead of the console; errors still reach the
    driver as exceptions. Returns that file's path."""
    quiet(verbose)
    if verbose:
        return None
    logs = os.path.join(tempfile.gettempdir(), "charlm-logs")
    os.makedirs(logs, exist_ok=True)
    path = os.path.join(logs, f"worker-{os.getpid()}.err")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    return path


def on_cluster() -> bool:
    """True under `ray job submit` or with RAY_ADDRESS set: join, don't start."""
    return bool(os.environ.get("RAY_ADDRESS"))


def init_ray(verbose: bool = False, cpus_needed: int = 1) -> None:
    """Locally, give Ray more logical CPUs than the training workers hold, or
    Ray Data's tasks never schedule beside them."""
    import ray

    quiet(verbose)
    if ray.is_initialized():
        return
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no ANSI codes in logs and files
    # Workers' output is not forwarded unless --verbose: the driver prints
    # rank 0's lines itself (charlm.progress), and errors come back as
    # exceptions. This also keeps Ray's own actors' log lines out, such as
    # the core worker's "constructor arguments in the object store and
    # max_restarts > 0" error for Ray Train's PreemptionWatcher.
    kwargs = dict(logging_level=logging.INFO if verbose else logging.ERROR,
                  runtime_env=runtime_env(verbose), log_to_driver=verbose)
    if on_cluster():
        ray.init(**kwargs)  # Ray reads RAY_ADDRESS itself
    else:
        # Ray starts workers at nice 15 by default: on a small machine any
        # normal-priority process (dashboard, metrics) then halves training.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=max(os.cpu_count() or 1, cpus_needed + 2),
                 dashboard_host="127.0.0.1", **kwargs)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose


def require_gpus(count: int, wait_s: float = 900.0) -> None:
    """Fail clearly instead of hanging on GPU workers that can never be placed.

    An embedded Ray has the GPUs it has. A cluster may still have to start GPU
    nodes: ask the autoscaler for them and wait, then withdraw the request
    (it would otherwise keep the nodes up after the job)."""
    import ray

    have = int(ray.cluster_resources().get("GPU", 0))
    if have >= count:
        return
    if on_cluster():
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{"GPU": 1}] * count)
        try:
            deadline = time.monotonic() + wait_s
            while have < count and time.monotonic() < deadline:
                time.sleep(5)
                have = int(ray.cluster_resources().get("GPU", 0))
        finally:
            request_resources(bundles=[])
    if have < count:
        where = "this Ray cluster" if on_cluster() else "this machine"
        raise CharlmError(f"--use-gpu needs {count} GPU(s) but {where} has {have}; "
                          "drop --use-gpu or run on GPU nodes (see docs/cluster.md)")
