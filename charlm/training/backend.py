"""Ray Train's TensorFlow backend (TF_CONFIG on each worker, for
MultiWorkerMirroredStrategy) without importing TensorFlow where no model runs.

`ray.train.tensorflow` imports TensorFlow at import time, and Ray Train's
controller imports it to unpickle `TensorflowConfig`, so the driver and the
controller would each hold TensorFlow in memory for nothing. This is the same
backend as Ray 2.60's `ray.train.tensorflow.config` (set up once, before the
training function runs), reachable without that import.
"""

from __future__ import annotations

import json
import os

from ray.train.backend import Backend, BackendConfig

from charlm import internals


class TFConfig(BackendConfig):
    @property
    def backend_cls(self):
        return _TFBackend

    @property
    def framework(self):
        return internals.tensorflow_framework()


def _set_tf_config(worker_addresses: list[str], index: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": worker_addresses},
                                          "task": {"type": "worker", "index": index}})
    os.environ["TF_USE_LEGACY_KERAS"] = "1"


class _TFBackend(Backend):
    def on_start(self, worker_group, backend_config: TFConfig) -> None:
        import ray

        urls = worker_group.execute(internals.worker_address)
        ray.get([worker_group.execute_single_async(i, _set_tf_config, worker_addresses=urls,
                                                   index=i)
                 for i in range(len(worker_group))])
