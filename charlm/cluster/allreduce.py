"""One all-reduce across every GPU in reach, as training all-reduces its
gradients: one actor per GPU node holding that node's GPUs, joined by TF_CONFIG
into one MultiWorkerMirroredStrategy with charlm's communication options
(NCCL on GPUs)."""

from __future__ import annotations

import json
import os
import time

from charlm import devices, internals
from charlm.errors import CharlmError, first_line


class Reducer:
    """A Ray actor on one node: its address for TF_CONFIG, then its part of the sum."""

    def address(self) -> str:
        return internals.worker_address()

    def reduce(self, addresses: list[str], index: int, use_gpu: bool,
               verbose: bool) -> tuple[float, int]:
        """(the sum over all replicas of their 1-based index, replicas in sync).
        TF_CONFIG must be set before TensorFlow's runtime starts: a fresh actor."""
        if verbose:
            os.environ["NCCL_DEBUG"] = "INFO"
        os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses},
                                              "task": {"type": "worker", "index": index}})
        import tensorflow as tf

        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=devices.communication_options(use_gpu))

        def replica():
            ctx = tf.distribute.get_replica_context()
            value = tf.cast(ctx.replica_id_in_sync_group + 1, tf.float32)
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)

        total = tf.function(lambda: strategy.run(replica))()
        return float(strategy.experimental_local_results(total)[0]), \
            strategy.num_replicas_in_sync


def all_reduce(nodes: list[tuple[str, int]], timeout: float, use_gpu: bool = True,
               verbose: bool = False) -> str:
    """Sum 1..N over the N devices of `nodes` ((node id, GPUs) each), within
    `timeout` seconds for placing the actors and again for the sum. Returns
    what was checked; raises CharlmError naming the failure and its fix."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    where = f"{sum(g for _, g in nodes)} GPU(s) on " if use_gpu else ""
    what = (f"all-reduce over {'NCCL' if use_gpu else 'the gRPC ring'} across {where}"
            f"{len(nodes)} node(s)")
    actor = ray.remote(Reducer)
    actors = [actor.options(num_cpus=0, num_gpus=gpus if use_gpu else 0, max_restarts=0,
                            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
              .remote() for node, gpus in nodes]
    started = time.perf_counter()
    try:
        addresses = ray.get([a.address.remote() for a in actors], timeout=timeout)
        results = ray.get([a.reduce.remote(addresses, i, use_gpu, verbose)
                           for i, a in enumerate(actors)], timeout=timeout)
    except GetTimeoutError as e:
        raise CharlmError(f"{what} did not finish within {timeout:.0f} s; the nodes must reach "
                          "each other on every port (the security group's rule for itself, "
                          "docs/cluster.md), and --verbose shows NCCL's log") from e
    except RayError as e:
        raise CharlmError(f"{what} failed ({first_line(e)}); --verbose shows TensorFlow's "
                          "and NCCL's log") from e
    finally:
        for a in actors:
            ray.kill(a)
    replicas = results[0][1]
    expected = replicas * (replicas + 1) / 2
    if any(total != expected for total, _ in results):
        raise CharlmError(f"{what} summed to {[t for t, _ in results]}, not {expected:g}; "
                          "check NCCL's log with --verbose")
    return f"{what}: ok ({time.perf_counter() - started:.1f} s)"
