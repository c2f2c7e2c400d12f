"""Where charlm computes: TensorFlow's view of the GPUs and why it sees none,
GPUs checked on the cluster before work starts, and the settings that follow
the device (all-reduce, steps per call, threads, generation batch)."""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys
from dataclasses import dataclass

from charlm import runtime
from charlm.errors import CharlmError

# -- choices by device ------------------------------------------------------------

# Bytes of gradients per all-reduce: every gradient of these models fits one
# pack, so each step is one collective.
ALL_REDUCE_PACK = 32 << 20
CPU_STEPS_PER_EXECUTION = 16  # several CPU workers; one worker runs 1
GPU_STEPS_PER_EXECUTION = 32
CPU_GENERATION_BATCH = 1024
GPU_GENERATION_BATCH = 4096


def communication_options(use_gpu: bool):
    """MultiWorkerMirroredStrategy's all-reduce, gradients packed into one
    collective per step. On GPUs, NCCL: TensorFlow picks NCCL only when asked
    by name, and its AUTO runs the gRPC ring, copying every gradient through
    the host. On CPUs, AUTO (that ring)."""
    import tensorflow as tf

    implementation = tf.distribute.experimental.CommunicationImplementation
    return tf.distribute.experimental.CommunicationOptions(
        bytes_per_pack=ALL_REDUCE_PACK,
        implementation=implementation.NCCL if use_gpu else implementation.AUTO)


def steps_per_execution(use_gpu: bool, num_workers: int) -> int:
    """Training steps per call into TensorFlow. A GPU finishes a step of these
    models in about the time Python takes to launch one, so it gets several
    per call. Several CPU workers save the per-step call and loss all-reduce
    with several; one CPU worker has nothing to save and would hold more memory."""
    if use_gpu:
        return GPU_STEPS_PER_EXECUTION
    return CPU_STEPS_PER_EXECUTION if num_workers > 1 else 1


def training_threads(use_gpu: bool, cpus: int) -> tuple[int, int] | None:
    """(intra-op, inter-op) TensorFlow threads for a training worker holding
    `cpus` cores, or None: TensorFlow's own choice, on a GPU, where host threads
    feed the device. On CPUs, two ops at a time (an LSTM step's matmuls are
    largely independent, and a worker waiting on an all-reduce can compute
    meanwhile), each over half the cores."""
    return None if use_gpu else (max(1, cpus // 2), 2)


def generation_threads(use_gpu: bool, cpus: int) -> tuple[int, int] | None:
    """A generation actor's (intra-op, inter-op) threads: its `cpus` cores on
    CPUs; None (TensorFlow's choice) on a GPU."""
    return None if use_gpu else (cpus, cpus)


def set_threads(threads: tuple[int, int] | None) -> bool:
    """Apply (intra-op, inter-op) threads; must run before TensorFlow's runtime
    starts. False when `threads` is None or the runtime already runs (a reused
    Ray worker keeps the threads it has)."""
    if threads is None:
        return False
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(threads[1])
    except RuntimeError:
        return False
    return True


def max_generation_batch(use_gpu: bool) -> int:
    """Requests generated together per call, at most: more on a GPU, which
    stays busy only with many rows. Samples do not depend on the batching
    either way."""
    return GPU_GENERATION_BATCH if use_gpu else CPU_GENERATION_BATCH


# -- why TensorFlow sees no GPU -----------------------------------------------------

CUDA_EXTRA = "and-cuda"  # TensorFlow's extra that charlm's gpu extra installs
CUDA_ERROR_NO_DEVICE = 100


@dataclass(frozen=True)
class GpuFacts:
    """What decides whether TensorFlow can use a GPU in this process."""

    visible: str | None  # CUDA_VISIBLE_DEVICES (None: unset)
    build: str  # the CUDA version TensorFlow was built with ("" if no CUDA build)
    cudnn: str  # the cuDNN major version it was built with
    missing: tuple[str, ...]  # wheels of its CUDA extra absent, or out of its range
    driver: int | None  # cuDriverGetVersion, e.g. 12080; None: no libcuda.so.1
    devices: int | None  # CUDA devices the driver sees; None if it cannot say


def cuda_wheels() -> dict[str, str | None]:
    """Each wheel that TensorFlow's CUDA extra requires (the nvidia-*-cu12 CUDA
    and cuDNN libraries that charlm's gpu extra installs), with its installed
    version, None if absent, or `<version> (needs <range>)` if out of range."""
    from packaging.requirements import Requirement

    found: dict[str, str | None] = {}
    for text in importlib.metadata.requires("tensorflow") or []:
        req = Requirement(text)
        if req.marker is None or "extra" not in str(req.marker) or \
                not req.marker.evaluate({"extra": CUDA_EXTRA}):
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            found[req.name] = None
            continue
        ok = req.specifier.contains(version, prereleases=True)
        found[req.name] = version if ok else f"{version} (needs {req.specifier})"
    return found


def cuda_driver() -> tuple[int | None, int | None]:
    """(driver's CUDA version as cuDriverGetVersion gives it, devices it sees):
    (None, None) when libcuda.so.1 cannot be loaded."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None, None
    version, count = ctypes.c_int(0), ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None, None
    status = lib.cuInit(0)
    if status == CUDA_ERROR_NO_DEVICE:
        return version.value, 0
    if status != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return version.value, None
    return version.value, count.value


def gpu_facts() -> GpuFacts:
    """This process's GpuFacts; loads libcuda.so.1 (and starts CUDA) if it can."""
    import tensorflow as tf

    info = tf.sysconfig.get_build_info()
    cuda = info.get("cuda_version", "") if info.get("is_cuda_build") else ""
    missing = tuple(name if version is None else f"{name} {version}"
                    for name, version in sorted(cuda_wheels().items(),
                                                key=lambda item: "cudnn" not in item[0])
                    if version is None or "needs" in version)
    driver, devices = cuda_driver()
    return GpuFacts(os.environ.get("CUDA_VISIBLE_DEVICES"), cuda,
                    str(info.get("cudnn_version", "")), missing, driver, devices)


def cuda_version(driver: int) -> str:
    """cuDriverGetVersion's 12080 as '12.8'."""
    return f"{driver // 1000}.{driver % 1000 // 10}"


def gpu_cause(f: GpuFacts) -> str:
    """Why TensorFlow sees no GPU, with the fix: the first of a hidden device,
    a TensorFlow without CUDA, missing CUDA wheels, no driver, an old driver,
    no device behind the driver."""
    shown = "unset" if f.visible is None else repr(f.visible)
    if f.visible is not None and f.visible.strip() in ("", "-1", "NoDevFiles"):
        return (f"CUDA_VISIBLE_DEVICES={shown} hides every GPU from this process (Ray hides "
                "them from work that reserves none); reserve GPUs with --use-gpu")
    if not f.build:
        return ("this TensorFlow is not a CUDA build (TensorFlow's CUDA builds are for Linux "
                "x86_64); run on such a node with charlm's gpu extra installed")
    if f.missing:
        more = f" and {len(f.missing) - 3} more" if len(f.missing) > 3 else ""
        return (f"the CUDA and cuDNN wheels of charlm's gpu extra are not installed on this node "
                f"({', '.join(f.missing[:3])}{more}); install charlm[gpu] there, or run the "
                "image that docs/cluster.md builds")
    if f.driver is None:
        return ("no NVIDIA driver: libcuda.so.1 cannot be loaded; boot the node from an image "
                "with the driver (docs/cluster.md), and give its container the GPUs "
                "(docker --gpus all)")
    major, minor = (int(x) for x in f.build.split(".")[:2])
    if f.driver < major * 1000 + minor * 10:
        return (f"the NVIDIA driver supports CUDA {cuda_version(f.driver)}, older than the "
                f"CUDA {f.build} TensorFlow is built for; update the node's driver (its AMI)")
    if f.devices is None:
        return (f"the NVIDIA driver (CUDA {cuda_version(f.driver)}) does not start (cuInit "
                "fails); check nvidia-smi on the node, and that its container has the GPUs "
                "(docker --gpus all)")
    if f.devices == 0:
        return (f"the NVIDIA driver sees no GPU with CUDA_VISIBLE_DEVICES={shown}: the node "
                "declares GPUs it does not have (ray start --num-gpus), or its container was "
                "started without them (docker --gpus all)")
    return (f"CUDA {cuda_version(f.driver)} starts with {f.devices} device(s) but TensorFlow "
            f"registers none (built for CUDA {f.build}, cuDNN {f.cudnn}); run with --verbose "
            "to see TensorFlow's log, or jobs.doctor --use-gpu")


def node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "localhost"


def device_line(what: str, devices: list[str]) -> str:
    """'training worker 1 computes on CPU:0 (node 10.0.1.5, CUDA_VISIBLE_DEVICES='')'."""
    names = ", ".join(d.replace("/physical_device:", "") for d in devices)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = "unset" if visible is None else repr(visible)
    return f"{what} computes on {names} (node {node_ip()}, CUDA_VISIBLE_DEVICES={shown})"


def check_gpu(use_gpu: bool, what: str, announce: bool = False) -> list[str]:
    """With --use-gpu, in a Ray worker that holds a GPU: TensorFlow must see it,
    or the worker fails now with one line naming its node and the cause (Ray
    advertises the GPUs a node declares, whatever its CUDA can do: a broken
    setup would train on the CPU while holding GPU nodes). Returns the devices
    TensorFlow computes on; with `announce`, prints device_line."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if use_gpu and not gpus:
        import ray

        node = f"{node_ip()} ({ray.get_runtime_context().get_node_id()[:12]})"
        ray_gpus = ",".join(map(str, ray.get_gpu_ids())) or "none"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise CharlmError(f"{what} on node {node} holds Ray GPU {ray_gpus} (CUDA_VISIBLE_DEVICES="
                          f"{'unset' if visible is None else repr(visible)}) but TensorFlow sees "
                          f"no GPU: {gpu_cause(gpu_facts())}; or drop --use-gpu")
    devices = [d.name for d in gpus or tf.config.list_physical_devices("CPU")]
    if announce:
        sys.stdout.write(device_line(what, devices) + "\n")
        sys.stdout.flush()
    return devices


# -- GPUs checked on the cluster ----------------------------------------------------

def _probe_gpu(what: str) -> list[str]:
    return check_gpu(True, what)


def check_cluster_gpus(count: int, what: str, timeout: float) -> None:
    """Before `count` GPU actors start: reserve `count` GPUs together (a
    placement group, which also asks an autoscaler for GPU nodes) within the
    placement deadline, and run check_gpu once on each. Fails with the
    deadline's line or check_gpu's, from the driver, before any actor exists;
    the GPUs are free again when this returns."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = placement_group([{"GPU": 1}] * count, strategy="PACK")
    try:
        runtime.get_within(group.ready(), timeout, f"{count} GPU(s) for the {what}s", gpus=True)
        # One call per process: its CUDA state leaves with it, before the actors come.
        probe = ray.remote(max_calls=1)(_probe_gpu)
        runtime.get_within([probe.options(
            num_cpus=0, num_gpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=i)).remote(what) for i in range(count)],
            timeout, f"the GPU checks of the {what}s", gpus=True)
    finally:
        remove_placement_group(group)
