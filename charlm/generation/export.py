"""A checkpoint as a self-contained TensorFlow SavedModel for TF Serving or
`tf.saved_model.load`: no charlm (nor Keras) needed to run it.

Its `generate` signature (also `serving_default`) takes a batch of requests,
seed string, temperature, length and the request's RNG seed (the `rng_seed`
column of a jobs.generate output), and returns each request's text and mean
log-probability. Everything is in the graph: the seed's normalisation, the
vocabulary and its string <-> id mapping (a StaticHashTable), and the same
start/run functions as jobs.generate, so a request's text equals its row.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass

import pyarrow.fs as pafs

from charlm import runtime, storage
from charlm.errors import CharlmError, first_line
from charlm.model import checkpoint


@dataclass
class ExportOptions:
    """Everything jobs.export's flags say; field names are the flags' dests."""

    checkpoint: str
    output: str
    context_mode: str = "window"
    top_k: int = 0
    top_p: float = 1.0
    overwrite: bool = False
    verbose: bool = False


def build_module(weights, meta: dict, context_mode: str, top_k: int, top_p: float):
    """The tf.Module to save (built here so that tests can call it in-process too)."""
    import tensorflow as tf

    from charlm.config import TrainConfig
    from charlm.model.generator import PAD, Generator

    config = TrainConfig.from_dict(meta["config"])
    vocab = list(meta["vocab"])
    maxlen = config.maxlen

    class CharLM(tf.Module):
        def __init__(self):
            super().__init__(name="charlm")
            self.generator = Generator(weights, maxlen, context_mode, top_k, top_p)
            self.vocab = tf.constant(vocab)
            self.table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(self.vocab, tf.range(len(vocab))),
                default_value=-1)

        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.string, name="seed"),
            tf.TensorSpec([None], tf.float64, name="temperature"),
            tf.TensorSpec([None], tf.int32, name="length"),
            tf.TensorSpec([None], tf.int64, name="rng_seed"),
        ])
        def generate(self, seed, temperature, length, rng_seed):
            seed = tf.strings.regex_replace(seed, "\r\n", "\n")
            if not config.keep_case:
                seed = tf.strings.lower(seed, encoding="utf-8")
            if not config.keep_newlines:
                seed = tf.strings.regex_replace(seed, "\n", " ")
            ids = self.table.lookup(tf.strings.unicode_split(seed, "UTF-8"))
            checks = [
                tf.debugging.assert_non_negative(
                    ids.flat_values, message="a seed has characters outside the model's "
                    f"vocabulary; use only these: {''.join(vocab)!r}"),
                tf.debugging.assert_positive(length, message="length must be at least 1"),
                tf.debugging.assert_non_negative(
                    temperature, message="temperature must be 0 (greedy) or positive"),
                tf.debugging.assert_non_negative(rng_seed, message="rng_seed must be >= 0"),
            ]
            with tf.control_dependencies(checks):
                context = self._left_padded(ids)
            seeds = tf.stack([tf.bitwise.right_shift(rng_seed, 32),
                              tf.bitwise.bitwise_and(rng_seed, 0xFFFFFFFF)], axis=-1)
            carry, u = self.generator.start(context, seeds, tf.reduce_max(length))
            out, logp, _ = self.generator.run(carry, temperature, u)
            # A shorter request is the prefix of the longest: its own uniforms and
            # characters come first.
            chars = tf.RaggedTensor.from_tensor(tf.gather(self.vocab, out), lengths=length)
            logp = tf.RaggedTensor.from_tensor(logp, lengths=length)
            return {"text": tf.strings.reduce_join(chars, axis=1),
                    "mean_logprob": tf.reduce_mean(logp, axis=1),
                    "rng_seed": rng_seed}

        def _left_padded(self, ids):
            """Ragged ids -> [rows, width] padded on the left with PAD: window
            mode keeps the last maxlen ids, stateful the whole seed."""
            starts, n = ids.row_starts(), ids.row_lengths()
            backwards = tf.ragged.range(starts + n - 1, starts - 1, -1)
            reversed_ids = tf.gather(ids.flat_values, backwards)
            if context_mode == "window":
                dense = reversed_ids[:, :maxlen].to_tensor(PAD, shape=[None, maxlen])
            else:
                dense = reversed_ids.to_tensor(PAD)
            return tf.reverse(dense, axis=[1])

    return CharLM()


def check_options(o: ExportOptions) -> None:
    from charlm.generation.job import CONTEXT_MODES, check_top_p

    if o.context_mode not in CONTEXT_MODES:
        raise CharlmError(f"--context-mode {o.context_mode!r} is unknown; "
                          f"use one of {', '.join(CONTEXT_MODES)}")
    if o.top_k < 0:
        raise CharlmError(f"--top-k is {o.top_k}; it must be at least 0")
    check_top_p(o.top_p)


def export(o: ExportOptions) -> str:
    """Write the SavedModel to o.output (local, s3:// or gs://); returns its URI.
    Saved locally first, then copied into a temporary location beside the
    output and moved into place only when complete."""
    from charlm.generation.job import load_weights
    from charlm.staging import staged_output

    runtime.quiet(o.verbose)
    check_options(o)
    uri = checkpoint.locate(o.checkpoint)
    weights, meta = load_weights(uri)
    output = storage.normalize(o.output)
    import tensorflow as tf

    module = build_module(weights, meta, o.context_mode, o.top_k, o.top_p)
    with staged_output(output, o.overwrite) as (fs, tmp), \
            tempfile.TemporaryDirectory(prefix="charlm-export-") as local:
        saved = os.path.join(local, "model")
        try:
            tf.saved_model.save(module, saved, signatures={
                "generate": module.generate, "serving_default": module.generate})
        except Exception as e:  # a TF failure here is a bug or a full disk, never bad input
            raise CharlmError(f"the SavedModel cannot be written ({first_line(e)}); "
                              "check the free space in your temporary directory") from e
        extra = os.path.join(saved, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, "charlm.json"), "w", encoding="utf-8") as f:
            json.dump({"checkpoint": uri, "checkpoint_epoch": int(meta.get("epoch", 0)),
                       "corpus": (meta.get("corpus") or {}).get("name") or "",
                       "vocab": meta["vocab"], "maxlen": meta["config"]["maxlen"],
                       "context_mode": o.context_mode, "top_k": o.top_k, "top_p": o.top_p},
                      f, indent=1)
        pafs.copy_files(saved, tmp, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
    print(f"exported {uri} ({o.context_mode} context) to {output}", flush=True)
    return output
