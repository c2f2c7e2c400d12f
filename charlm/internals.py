"""Every private Ray and tf-keras name charlm uses, in one place.

Each function says which public API it stands in for (or that none does the
job) and the version it was read from: Ray 2.60.0, tf-keras 2.21.0, the pins
in pyproject.toml. tests/test_internals.py imports and exercises each one, so
that an upgrade fails there first, naming the function to revisit.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

# -- Ray Train V2 ------------------------------------------------------------

# Read by Train's controller (ray.train.v2._internal.constants, Ray 2.60.0),
# which the driver's environment reaches (get_env_vars_to_propagate).
_WORKER_GROUP_START_TIMEOUT = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


@contextlib.contextmanager
def worker_group_start_timeout(seconds: float) -> Iterator[None]:
    """Train's deadline for placing and starting its workers, for the block.
    No public setting (ScalingConfig has none): Train retries every 60 s,
    forever, unless this variable is set when the trainer starts its controller."""
    saved = os.environ.get(_WORKER_GROUP_START_TIMEOUT)
    os.environ[_WORKER_GROUP_START_TIMEOUT] = str(seconds)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_WORKER_GROUP_START_TIMEOUT, None)
        else:
            os.environ[_WORKER_GROUP_START_TIMEOUT] = saved


def is_worker_group_start_timeout(error: BaseException) -> bool:
    """Whether `error` is Train's worker-group start timeout. Public: only
    ray.train.ControllerError, which wraps it among other failures."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    return isinstance(error, WorkerGroupStartupTimeoutError)


def tensorflow_framework():
    """The TrainingFramework tag of a BackendConfig (ray.train.v2._internal.util);
    public only through ray.train.tensorflow.TensorflowConfig, which imports
    TensorFlow wherever it is unpickled."""
    from ray.train.v2._internal.util import TrainingFramework

    return TrainingFramework.TENSORFLOW


def worker_address() -> str:
    """This worker's host:port for TF_CONFIG, as Ray's own TensorFlow backend
    makes it (ray.train.tensorflow.config); no public helper."""
    from ray._common.network_utils import build_address
    from ray.train._internal.utils import get_address_and_port

    return build_address(*get_address_and_port())


# -- Ray core ------------------------------------------------------------------

def recorded_ray_address() -> str | None:
    """The address `ray start` recorded on this node, which ray.init() joins
    without RAY_ADDRESS; ray.init(address="auto") finds it too, but fails
    rather than saying there is none."""
    from ray._private.utils import read_ray_address

    return read_ray_address() or None


def autoscaler_node_groups() -> list[tuple[int, int]]:
    """(min_count, max_count) of every node group with resources that KubeRay's
    or autoscaler v2 published to the GCS (ray._private.state); -1 is unbounded.
    No public API lists them."""
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    if not config:
        return []
    return [(g.min_count, g.max_count) for g in config.node_group_configs
            if g.resources and g.max_count != 0]


def autoscaler_node_types() -> set[str]:
    """Node types in `ray up`'s autoscaler status (active or being launched),
    from the GCS's key-value store; `ray status` prints the same report, no
    API returns it. A hand-started head names its nodes `node_<id>`."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    report = (json.loads(status).get("autoscaler_report") or {}) if status else {}
    return set(report.get("active_nodes") or {}) | set(report.get("pending_launches") or {})


def hide_unreserved_gpus() -> dict[str, str]:
    """Worker environment in which Ray sets CUDA_VISIBLE_DEVICES='' for tasks
    and actors that reserve no GPU, as it sets their own ids for those that
    do (ray._private.utils.set_visible_accelerator_ids, Ray 2.60.0). No public
    setting: by default Ray leaves zero-GPU work seeing every GPU of its node."""
    return {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}


# -- Ray Data ------------------------------------------------------------------

def block_refs(dataset) -> Iterator[tuple[object, int, int]]:
    """(block ObjectRef, first row, end row) of every slice of a dataset's
    output, with no row copied to the driver. Public alternatives copy rows
    (iter_batches) or give no row counts (to_arrow_refs)."""
    for bundle in dataset.iter_internal_ref_bundles():
        for entry, piece in zip(bundle.blocks, bundle.slices, strict=True):
            lo, hi = ((piece.start_offset, piece.end_offset) if piece
                      else (0, entry.metadata.num_rows))
            if hi > lo:
                yield entry.ref, lo, hi


# -- tf-keras --------------------------------------------------------------------

def dropout_generator(layer):
    """A Dropout layer's tf.random.Generator (rng_type="stateful"), or None.
    tf-keras keeps it out of the layer's weights and checkpoints on purpose;
    charlm saves it so that a resumed run draws the masks the uninterrupted
    run would have. No public accessor."""
    return getattr(getattr(layer, "_random_generator", None), "_generator", None)


def takes_tensor_logs(callback) -> None:
    """Marks a Keras callback as taking its logs as tensors, so that fit does
    not copy them to Python (a device sync) after every batch. Keras's own
    ProgbarLogger does this; no public switch."""
    callback._supports_tf_logs = True


def lstm_reporting_kernel(units: int):
    """An LSTM layer whose call also returns which kernel ran (1: the generic
    one, 2: cuDNN's), through tf-keras's testing flag `return_runtime`; no
    public API tells."""
    import tensorflow as tf

    return tf.keras.layers.LSTM(units, return_runtime=True)
