"""A training worker's tf.data input over its Ray Data stream of windows."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from charlm.data.stream import Plan
from charlm.data.windows import split_xy


def without_autotune(data: tf.data.Dataset) -> tf.data.Dataset:
    """A training input with tf.data's autotuning off. Its optimisation thread
    sleeps between rounds, twice as long each time, and an iterator's
    destructor waits for it to wake: an epoch that ends its iterator stalls,
    every thread asleep, by up to its own length. Buffers are fixed instead."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return data.with_options(options)


def tf_input(stream, plan: Plan, objective: str):
    """The worker's training input, for strategy.distribute_datasets_from_function:
    the stream's batches as int32, split into inputs and targets, two batches
    prefetched, autotuning off. Batches are per worker already: datasets from
    a function are not rebatched by the strategy (a plain dataset would be
    split W ways)."""
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
