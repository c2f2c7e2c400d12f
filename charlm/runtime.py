"""Joining a Ray cluster or starting an embedded one, with TensorFlow and Ray
quiet unless --verbose."""

from __future__ import annotations

import logging
import os
import time
import warnings

from charlm.errors import CharlmError


def worker_env(verbose: bool) -> dict[str, str]:
    """Environment for every Ray worker: tf-keras, and no C++ log noise by default."""
    env = {"TF_USE_LEGACY_KERAS": "1"}
    if not verbose:
        env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    return env


def quiet(verbose: bool) -> None:
    """Apply worker_env to this process and silence Python-side loggers."""
    os.environ.update(worker_env(verbose))
    if verbose:
        return
    warnings.filterwarnings("ignore")
    for name in ("tensorflow", "absl", "ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)


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
    kwargs = dict(logging_level=logging.INFO if verbose else logging.ERROR,
                  runtime_env={"env_vars": worker_env(verbose)})
    if on_cluster():
        ray.init(**kwargs)  # Ray reads RAY_ADDRESS itself
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, cpus_needed + 2),
                 include_dashboard=False, **kwargs)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose


def require_gpus(count: int, wait_s: float = 900.0) -> None:
    """Fail clearly instead of hanging on GPU workers that can never be placed.

    An embedded Ray has the GPUs it has; a cluster may still be scaling up,
    so wait there before giving up."""
    import ray

    deadline = time.monotonic() + (wait_s if on_cluster() else 0.0)
    while True:
        have = int(ray.cluster_resources().get("GPU", 0))
        if have >= count:
            return
        if time.monotonic() >= deadline:
            where = "this Ray cluster" if on_cluster() else "this machine"
            raise CharlmError(f"--use-gpu needs {count} GPU(s) but {where} has {have}; "
                              "drop --use-gpu or run on GPU nodes (see README, On a cluster)")
        time.sleep(5)
