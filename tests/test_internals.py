"""Every private Ray and tf-keras name charlm uses (charlm/internals.py),
imported and exercised: after an upgrade of the pins, this file fails first
and names the function to revisit."""

from __future__ import annotations

import os

import numpy as np
import pytest

from charlm import internals


def test_train_reads_the_worker_group_timeout_where_charlm_sets_it() -> None:
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    before = os.environ.get(internals._WORKER_GROUP_START_TIMEOUT)
    with internals.worker_group_start_timeout(7.5):
        error = WorkerGroupStartupTimeoutError(num_workers=2)  # reads the variable
    assert "timed out after 7.5 seconds" in str(error)
    assert os.environ.get(internals._WORKER_GROUP_START_TIMEOUT) == before
    assert internals.is_worker_group_start_timeout(error)
    assert not internals.is_worker_group_start_timeout(TimeoutError("other"))


def test_the_tensorflow_backend_tag_and_worker_address(ray_local) -> None:
    assert internals.tensorflow_framework().value == "tensorflow"
    host, port = internals.worker_address().rsplit(":", 1)
    assert host and 0 < int(port) < 65536


def test_cluster_state_readers_answer_on_an_embedded_ray(ray_local) -> None:
    assert internals.recorded_ray_address() is None or ":" in internals.recorded_ray_address()
    assert internals.autoscaler_node_groups() == []
    # An embedded head's monitor names each node node_<id>: no node types to add.
    assert all(t.startswith("node_") for t in internals.autoscaler_node_types())


def test_block_refs_cover_every_row_once(ray_local) -> None:
    import ray
    import ray.data

    ds = ray.data.range(1000, override_num_blocks=4).map_batches(lambda b: b)
    rows = []
    for ref, lo, hi in internals.block_refs(ds):
        block = ray.get(ref)
        rows += block.slice(lo, hi - lo)["id"].to_pylist()
    assert sorted(rows) == list(range(1000))


def test_dropout_generator_and_tensor_logs_and_the_lstm_kernel_flag() -> None:
    import tensorflow as tf

    dropout = tf.keras.layers.Dropout(0.5, rng_type="stateful")
    dropout.build((None, 4))
    assert isinstance(internals.dropout_generator(dropout), tf.random.Generator)
    assert internals.dropout_generator(tf.keras.layers.Dense(2)) is None

    seen = []

    class Logs(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(logs["loss"])

    callback = Logs()
    internals.takes_tensor_logs(callback)
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.zeros((4, 3)), np.zeros(4), batch_size=2, verbose=0, callbacks=[callback])
    assert seen and all(tf.is_tensor(v) for v in seen)

    lstm = internals.lstm_reporting_kernel(8)
    output, kernel = lstm(tf.zeros((2, 5, 3)))
    assert output.shape == (2, 8)
    expected = 2 if tf.config.list_logical_devices("GPU") else 1
    assert int(kernel) == expected


@pytest.mark.parametrize("name", [n for n in dir(internals)
                                  if callable(getattr(internals, n)) and not n.startswith("_")
                                  and getattr(internals, n).__module__ == internals.__name__])
def test_every_internal_is_exercised_here(name: str) -> None:
    with open(__file__, encoding="utf-8") as f:
        assert f"internals.{name}(" in f.read(), f"internals.{name} has no test here"


def test_an_embedded_rays_workers_inherit_charlms_environment(ray_local) -> None:
    """The session's Ray is embedded (runtime.init_ray): its workers get
    runtime.worker_env from the driver's environment, with no runtime_env,
    which would start each through Ray's setup process (a second Python)."""
    import ray

    from charlm import runtime

    @ray.remote(num_gpus=0)
    def seen() -> tuple[dict, str | None, dict]:
        return ({k: os.environ.get(k) for k in runtime.worker_env(False)},
                os.environ.get("CUDA_VISIBLE_DEVICES"), dict(ray.get_runtime_context().runtime_env))

    env, visible, runtime_env = ray.get(
        seen.options(runtime_env=runtime.runtime_env(False)).remote())
    assert env == runtime.worker_env(False) and visible == ""
    assert runtime_env == {}


def test_work_that_reserves_no_gpu_is_shown_none(ray_local) -> None:
    """charlm's jobs run with this in every worker's environment (runtime.worker_env)."""
    import ray

    @ray.remote(num_gpus=0, runtime_env={"env_vars": internals.hide_unreserved_gpus()})
    def visible() -> str | None:
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    assert ray.get(visible.remote()) == ""
