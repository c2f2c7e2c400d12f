"""charlm.devices on this CPU machine: the choices that follow the device, why
TensorFlow would see no GPU (each cause from its facts, and this machine's
own), and the line each worker prints about its devices."""

from __future__ import annotations

import dataclasses

import pytest

from charlm import devices
from charlm.devices import GpuFacts

BUILD = dict(build="12.5.1", cudnn="9")
HEALTHY = GpuFacts(visible="0", missing=(), driver=12080, devices=1, **BUILD)


def test_all_reduce_is_nccl_on_gpus_and_tensorflows_choice_on_cpus() -> None:
    import tensorflow as tf

    implementation = tf.distribute.experimental.CommunicationImplementation
    gpu, cpu = devices.communication_options(True), devices.communication_options(False)
    assert gpu.implementation == implementation.NCCL
    assert cpu.implementation == implementation.AUTO
    assert gpu.bytes_per_pack == cpu.bytes_per_pack == devices.ALL_REDUCE_PACK


@pytest.mark.parametrize("workers", [1, 2, 8])
def test_steps_per_call_follow_the_device(workers: int) -> None:
    on_gpu, on_cpu = devices.steps_per_execution(True, workers), \
        devices.steps_per_execution(False, workers)
    assert on_gpu > 1, "a GPU gets several steps per call, however many workers"
    assert on_cpu == (1 if workers == 1 else devices.CPU_STEPS_PER_EXECUTION)


@pytest.mark.parametrize("cpus", [1, 2, 4, 48])
def test_threads_are_tuned_on_cpus_and_left_to_tensorflow_on_gpus(cpus: int) -> None:
    intra, inter = devices.training_threads(False, cpus)
    assert inter == 2 and intra == max(1, cpus // 2) and intra * inter <= max(2, cpus)
    assert devices.generation_threads(False, cpus) == (cpus, cpus)
    assert devices.training_threads(True, cpus) is None
    assert devices.generation_threads(True, cpus) is None
    assert devices.set_threads(None) is False


def test_a_gpu_generates_larger_batches() -> None:
    assert devices.max_generation_batch(True) > devices.max_generation_batch(False) == 1024


@pytest.mark.parametrize(("change", "names"), [
    (dict(visible=""), ["CUDA_VISIBLE_DEVICES=''", "--use-gpu"]),
    (dict(build=""), ["not a CUDA build"]),
    (dict(missing=("nvidia-cudnn-cu12", "nvidia-cublas-cu12")), ["gpu extra", "nvidia-cudnn"]),
    (dict(driver=None, devices=None), ["libcuda.so.1", "--gpus all"]),
    (dict(driver=12040), ["CUDA 12.4", "older than the CUDA 12.5.1"]),
    (dict(devices=None), ["does not start", "nvidia-smi"]),
    (dict(devices=0), ["sees no GPU", "--num-gpus"]),
    ({}, ["registers none", "--verbose"]),
])
def test_each_cause_is_named_first_when_it_holds(change: dict, names: list[str]) -> None:
    cause = devices.gpu_cause(dataclasses.replace(HEALTHY, **change))
    assert all(name in cause for name in names), cause


def test_this_machine_lacks_the_gpu_extra_and_says_so() -> None:
    """No CUDA wheels here (the gpu extra is not installed): the first cause,
    whatever the driver, is the extra's wheels, named from TensorFlow's own
    requirements."""
    facts = devices.gpu_facts()
    assert facts.build, "TensorFlow's Linux wheel is a CUDA build"
    assert any(m.startswith("nvidia-cudnn-cu12") for m in facts.missing), facts
    assert "gpu extra" in devices.gpu_cause(dataclasses.replace(facts, visible="0"))


def test_the_device_line_names_devices_and_what_hides_the_gpus(monkeypatch) -> None:
    """Ray hiding GPUs from work that reserves none is proven on a GPU node of
    the cluster (tests/test_doctor.py); here, the line every worker prints."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    found = devices.check_gpu(False, "training worker 1")
    assert found == ["/physical_device:CPU:0"]
    node = devices.node_ip()  # this process's Ray node, or localhost outside Ray
    assert node == "localhost" or node.count(".") == 3, node
    assert devices.device_line("training worker 1", found) == \
        f"training worker 1 computes on CPU:0 (node {node}, CUDA_VISIBLE_DEVICES='')"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert devices.device_line("a", found).endswith("CUDA_VISIBLE_DEVICES=unset)")
