"""One node's readiness for charlm, checked in a task pinned to that node:
TensorFlow and CUDA as found there, the GPUs it sees, the LSTM's kernel, timed
training steps, storage access, free disk and memory."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid

from charlm import devices, internals, storage
from charlm.errors import first_line

# Presets whose training step is timed, at their own shapes (batch, window,
# objective, optimizer), over a vocabulary about nietzsche's.
TIMED_PRESETS = ("seed", "gpu")
VOCAB = 60
GB = 1 << 30


def check_node(use_gpu: bool, storage_path: str | None, steps: int) -> dict:
    """This node's row. With `use_gpu`, where the task holds GPUs, TensorFlow
    must compute on them with cuDNN's LSTM kernel; `steps` timed training steps
    per preset after one untimed (0: none); `storage_path` is written, read
    back and deleted. What fails is in the row's `problems`, each naming the
    cause and its fix."""
    import psutil
    import ray
    import tensorflow as tf

    ray_gpus = [str(g) for g in ray.get_gpu_ids()]
    gpus = tf.config.list_physical_devices("GPU")
    devices.set_threads(devices.training_threads(bool(gpus), os.cpu_count() or 1))
    facts = devices.gpu_facts()
    wheels = devices.cuda_wheels()
    row = {
        "node": devices.node_ip(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "tensorflow": tf.__version__,
        "built_for": f"CUDA {facts.build} cuDNN {facts.cudnn}" if facts.build else "no CUDA",
        "cudnn_wheel": wheels.get("nvidia-cudnn-cu12"),
        "driver_cuda": devices.cuda_version(facts.driver) if facts.driver else None,
        "ray_gpus": ray_gpus,
        "cuda_visible_devices": facts.visible,
        "gpus": [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                 for g in gpus],
        "lstm_kernel": _lstm_kernel(),
        "windows_per_s": {},
        "storage": None,
        "disk_free_gb": round(shutil.disk_usage(tempfile.gettempdir()).free / GB, 1),
        "memory_free_gb": round(psutil.virtual_memory().available / GB, 1),
        "problems": [],
    }
    problems = row["problems"]
    if use_gpu and ray_gpus:
        if not gpus:
            problems.append(f"TensorFlow sees no GPU: {devices.gpu_cause(facts)}")
        elif len(gpus) < len(ray_gpus):
            problems.append(f"TensorFlow sees {len(gpus)} of the {len(ray_gpus)} GPUs Ray "
                            f"reserved (CUDA_VISIBLE_DEVICES={facts.visible!r}); check "
                            "nvidia-smi on the node against its Ray resources")
        elif row["lstm_kernel"] != "cudnn":
            problems.append("the LSTM runs on TensorFlow's generic kernel, not cuDNN's; "
                            "check the cuDNN wheel against TensorFlow's build (--verbose shows "
                            "TensorFlow's log)")
    if steps and not problems:
        for preset in TIMED_PRESETS:
            row["windows_per_s"][preset] = round(windows_per_s(preset, steps, bool(gpus)))
    if storage_path:
        problem = storage_problem(storage_path)
        row["storage"] = "ok" if problem is None else "failed"
        if problem:
            problems.append(problem)
    return row


def unreserved_view() -> str | None:
    """CUDA_VISIBLE_DEVICES as work that reserves no GPU sees it on this node."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def _lstm_kernel() -> str:
    """Which kernel TensorFlow runs charlm's LSTM on here: cuDNN's or the generic one."""
    import tensorflow as tf

    _, kernel = internals.lstm_reporting_kernel(8)(tf.zeros((2, 5, 3)))
    return "cudnn" if int(kernel) == 2 else "generic"


def windows_per_s(preset: str, steps: int, on_gpu: bool) -> float:
    """Training windows per second of one worker at `preset`'s shape, over
    `steps` steps after one untimed (the trace), as jobs.train compiles it."""
    import numpy as np
    import tensorflow as tf

    from charlm.config import make_config
    from charlm.model.network import build_model, compile_model

    config = make_config(preset, use_gpu=on_gpu)
    model = build_model(config, VOCAB)
    compile_model(model, config, total_steps=steps + 1)
    rng = np.random.default_rng(0)
    shape = (config.batch_size, config.maxlen)
    x = rng.integers(0, VOCAB, shape, dtype=np.int32)
    y = rng.integers(0, VOCAB, shape if config.objective == "all" else shape[:1],
                     dtype=np.int32)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(data, steps_per_epoch=1, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * config.batch_size / (time.perf_counter() - started)


def storage_problem(path: str) -> str | None:
    """A small file written under `path`, read back and deleted, from this
    node; None if all went through, else the problem's line. A local path is
    this node's own disk (or a mount), created if missing."""
    fs, base = storage.resolve(path)
    probe = f"{base.rstrip('/')}/.charlm-doctor-{uuid.uuid4().hex}"
    data = b"charlm doctor"
    try:
        if not storage.is_uri(path):
            fs.create_dir(base, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(data)
        with fs.open_input_stream(probe) as f:
            back = f.read()
        fs.delete_file(probe)
        if back != data:
            raise OSError("what was read back differs from what was written")
    except Exception as e:  # pyarrow raises several types for access and network errors
        return (f"--storage-path {path} cannot be written and read back from this node "
                f"({first_line(e)}); give the node access (its instance profile, "
                "docs/cluster.md)")
    return None
