"""What a training worker takes in: the driver's WorkerInputs, and its tf.data
input over its Ray Data stream of windows. Imports no TensorFlow until used:
the driver builds WorkerInputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from charlm.config import TrainConfig
from charlm.data.stream import Plan
from charlm.data.windows import split_xy
from charlm.training.finetune import InitFrom


@dataclass(frozen=True)
class WorkerInputs:
    """Everything the driver gives each worker, once, the same for all."""

    config: TrainConfig
    vocab: str
    run_dir: str
    meta: dict  # every checkpoint's charlm.json but its epoch and metrics
    parts: list  # the training text: ObjectRefs of encoded parts (charlm.data.stream)
    part_lengths: list[int]
    heldout: object  # ObjectRef of the held-out windows rank 0 scores every epoch
    seed_ids: list[int]  # --sample-every's seed: the corpus's first maxlen ids
    init_from: InitFrom | None  # --init-from, mapped onto this corpus's vocabulary
    mailbox: object  # the actor through which the driver prints rank 0's lines
    threads: int  # TensorFlow's CPU threads per worker
    job_started: float  # when the job's process started (elapsed_s counts from it)


def without_autotune(data):
    """A training input with tf.data's autotuning off, its buffers fixed
    instead. The autotuner's thread sleeps between rounds, longer each time,
    and an iterator's destructor waits for it to wake: with it on, an epoch
    that ends its iterator stalls, every thread asleep."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return data.with_options(options)


def tf_input(stream, plan: Plan, objective: str):
    """The worker's training input, for strategy.distribute_datasets_from_function:
    the stream's batches as int32, split into inputs and targets, two batches
    prefetched, autotuning off. Batches are per worker already: datasets from
    a function are not rebatched by the strategy (a plain dataset would be
    split W ways)."""
    import tensorflow as tf

    spec = tf.TensorSpec(shape=(plan.per_worker, plan.maxlen + 1), dtype=tf.int32)

    def batches():
        for batch in stream.iter_batches(batch_size=plan.per_worker, batch_format="numpy",
                                         prefetch_batches=2):
            yield batch["window"].astype(np.int32)

    def dataset(_input_context):
        return without_autotune(tf.data.Dataset.from_generator(batches, output_signature=spec)
                                .map(lambda w: split_xy(w, objective))
                                .prefetch(2))

    return dataset
