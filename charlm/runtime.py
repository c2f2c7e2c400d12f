"""Where a job runs: joining a Ray cluster or starting an embedded one, the
environment of every Ray worker, TensorFlow and Ray quiet unless --verbose,
and the checks a cluster needs before anything is written (paths every node
can reach, GPUs that can come) and its one placement deadline."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile
import warnings

from charlm import internals
from charlm.errors import CharlmError, chain


def worker_env(verbose: bool) -> dict[str, str]:
    """Environment for every Ray worker (and the driver): tf-keras, GPUs
    hidden from work that reserves none, so that a job without --use-gpu never
    touches a GPU node's devices, and no log noise unless `verbose`."""
    # Two malloc arenas: TensorFlow's threads otherwise each keep their own,
    # and freed activations linger in them, adding to a worker's peak. A 64 MB
    # top pad: without it, the memory a training step's slice frees
    # (charlm.model.network.CharLM) goes back to the kernel and is faulted
    # in again by the next slice.
    env = {"TF_USE_LEGACY_KERAS": "1", "MALLOC_ARENA_MAX": "2", "MALLOC_TOP_PAD_": str(64 << 20),
           **internals.hide_unreserved_gpus()}
    if not verbose:
        # Ray Data logs the stack trace of a failure it raises (an actor pool
        # that cannot start) at ERROR; the failure itself still reaches the
        # job, which says it in one line.
        env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore",
                   RAY_DATA_LOG_LEVEL="CRITICAL")
    return env


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
    """Also the Ray worker_process_setup_hook of runtime_env, so it runs in
    every worker on a cluster."""
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, _MuteTensorflowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _MuteTensorflowImport())


def quiet(verbose: bool) -> None:
    """Apply worker_env to this process and silence Python-side loggers."""
    os.environ.update(worker_env(verbose))
    if verbose:
        return
    warnings.filterwarnings("ignore")
    for name in ("tensorflow", "absl", "ray", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(os.environ["RAY_DATA_LOG_LEVEL"])
    mute_tensorflow_import()


_embedded = False  # init_ray started this process's Ray


def runtime_env(verbose: bool) -> dict:
    """The runtime_env for charlm's Ray workers (jobs, trainers, actors). An
    embedded Ray's workers need none: they inherit the environment init_ray
    gave this process before it started Ray, and a worker with a runtime_env
    starts through Ray's setup process (one more Python that imports Ray)."""
    if _embedded:
        return {}
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


PLACEMENT_CAUSES = (
    "usual causes on AWS: the vCPU quota for G instances (Service Quotas, 'Running On-Demand "
    "G and VT instances'), the head's IAM role (iam:PassRole for the workers' profile, "
    "ssm:GetParameters for the AMI), or the worker image failing to pull; the autoscaler's "
    "log says which (`ray exec cluster.yaml 'tail -n 100 /tmp/ray/session_latest/logs/"
    "monitor.log'`)")


def on_cluster() -> bool:
    """True when a running cluster is there to join: under `ray job submit` or
    with RAY_ADDRESS set, and on a cluster's own nodes (after `ray attach` or
    `ray exec`), where `ray start` recorded the address that ray.init() finds."""
    return bool(os.environ.get("RAY_ADDRESS") or internals.recorded_ray_address())


def init_ray(verbose: bool = False, cpus_needed: int = 1) -> None:
    """Join the running cluster (on_cluster), else start an embedded Ray for
    this process's lifetime; a no-op if Ray is up. Every worker gets
    worker_env: through runtime_env on a cluster, from this process's
    environment in an embedded Ray. An embedded Ray gets more logical CPUs
    than the `cpus_needed` that training workers or actors hold, or Ray
    Data's tasks never schedule beside them."""
    import ray

    global _embedded
    quiet(verbose)
    if ray.is_initialized():
        return
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no ANSI codes in logs and files
    # Workers' output is not forwarded unless --verbose: the driver prints
    # rank 0's lines itself (charlm.training.progress), and errors come back
    # as exceptions. Ray's own actors' log lines stay out too
    # (docs/training.md, Logs and progress).
    kwargs = dict(logging_level=logging.INFO if verbose else logging.ERROR,
                  log_to_driver=verbose)
    if on_cluster():
        # Ray finds the address itself; a cluster has its own CPUs.
        ray.init(runtime_env=runtime_env(verbose), **kwargs)
    else:
        # Ray starts workers at nice 15 by default: on a small machine any
        # normal-priority process (dashboard, metrics) then slows training.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # No dashboard: nothing of charlm's reads it locally, and it is several
        # processes' memory (a joined cluster keeps its own, for job submission).
        ray.init(num_cpus=max(os.cpu_count() or 1, cpus_needed + 2),
                 include_dashboard=False, **kwargs)
        _embedded = True  # its workers inherit this environment (runtime_env)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose


def default_cpus(per: int) -> int:
    """CPUs for each of `per` training workers or generation actors: 1 on a
    cluster (its GPU nodes may have 4 vCPUs, and Ray Data runs beside), this
    machine's cores shared out locally."""
    return 1 if on_cluster() else max(1, (os.cpu_count() or 1) // per)


def can_add_nodes() -> bool:
    """Whether an autoscaler may add nodes to the joined cluster. KubeRay's and
    autoscaler v2 publish their node groups to the GCS (Ray Data reads them
    the same way); `ray up`'s autoscaler publishes its status, whose node types
    are the cluster config's, where a hand-started head's monitor names each
    node `node_<id>`."""
    if any(high == -1 or high > low for low, high in internals.autoscaler_node_groups()):
        return True
    return any(not t.startswith("node_") for t in internals.autoscaler_node_types())


def require_shared(path: str, flag: str, shared_filesystem: bool) -> None:
    """A local path is one node's disk: on a cluster of several nodes, or one an
    autoscaler can grow, each node would write (or look for) its own copy.
    Refused before anything is written, unless the user says it is a shared mount."""
    import ray

    from charlm import storage

    if storage.is_uri(path) or shared_filesystem or not on_cluster():
        return
    nodes = sum(1 for n in ray.nodes() if n["Alive"])
    if nodes > 1 or can_add_nodes():
        why = f"{nodes} nodes" if nodes > 1 else "an autoscaler that adds nodes"
        raise CharlmError(f"{flag} {path} is a local path, but this Ray cluster has {why}, each "
                          "with its own disk; use an s3:// or gs:// URI, or pass "
                          "--shared-filesystem if it is a mount that every node shares")


def require_gpus(count: int) -> None:
    """Fail at once where GPUs can never come: an embedded Ray, or a cluster
    without an autoscaler, that has fewer than `count`. A cluster that can add
    GPU nodes gets them from the demand of Train's placement group and Data's
    actors; charlm's placement deadline (--placement-timeout) bounds the wait."""
    import ray

    have = int(ray.cluster_resources().get("GPU", 0))
    if have >= count or (on_cluster() and can_add_nodes()):
        return
    where = "this Ray cluster (no autoscaler)" if on_cluster() else "this machine"
    raise CharlmError(f"--use-gpu needs {count} GPU(s) but {where} has {have}; "
                      "drop --use-gpu or run on GPU nodes (see docs/cluster.md)")


def explain_placement_timeout(error: BaseException, what: str, seconds: float,
                              gpus: bool) -> None:
    """Raises the deadline's one line if `error` is (or wraps) a ray.get
    deadline, Ray Train's worker-group start timeout or Ray Data's actor start
    timeout. The causes named are AWS's where nodes come on demand (GPUs, or
    an autoscaler), missing CPUs on a cluster that cannot grow."""
    from ray.exceptions import GetTimeoutError

    if any(isinstance(e, GetTimeoutError) or internals.is_worker_group_start_timeout(e)
           for e in chain(error)):
        causes = PLACEMENT_CAUSES if gpus or _grows() else "the cluster lacks the CPUs asked for"
        raise CharlmError(f"{what} could not be placed on the cluster within "
                          f"{seconds:.0f} s; {causes}; or raise --placement-timeout") from error


def _grows() -> bool:
    try:
        return on_cluster() and can_add_nodes()
    except Exception:  # the GCS unreachable: the deadline's line still goes out
        return False


def get_within(refs, seconds: float, what: str, gpus: bool = False):
    """ray.get(refs) with the placement deadline, which covers placing the
    work and running it. Past it, the work is cancelled and the deadline's
    one line raised; a CharlmError raised in the work comes back as itself,
    without Ray's traceback around it."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    try:
        return ray.get(refs, timeout=seconds)
    except GetTimeoutError as e:
        for ref in refs if isinstance(refs, list) else [refs]:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # done meanwhile, or not a task's
                pass
        explain_placement_timeout(e, what, seconds, gpus)
        raise
    except RayError as e:
        ours = next((c for c in chain(e) if isinstance(c, CharlmError)
                     and not isinstance(c, RayError)), None)
        if ours is None:
            raise
        raise CharlmError(str(ours)) from e
