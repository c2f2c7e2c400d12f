"""A checkpoint as a self-contained TensorFlow SavedModel for TF Serving or
`tf.saved_model.load`: no charlm (nor Keras) needed to run it.

Its `generate` signature (also `serving_default`) takes a batch of requests,
seed string, temperature, length and the request's RNG seed (the `rng_seed`
column of a jobs.generate output), and returns each request's text and mean
log-probability. Everything is in the graph: the seed's normalisation, its
split into the vocabulary's ids (characters, or UTF-8 bytes) by a
StaticHashTable, the same start/run functions as jobs.generate, and the same
decoding of ids into text, so a request's text equals its row.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from charlm import runtime, storage
from charlm.data.corpus import BYTES_VOCAB
from charlm.errors import CharlmError, first_line
from charlm.generation.options import check_sampling
from charlm.generation.weights import load_weights
from charlm.model import checkpoint
from charlm.staging import staged_output

if TYPE_CHECKING:
    import tensorflow as tf

    from charlm.model.generator import Weights


@dataclass
class ExportOptions:
    """Everything jobs.export's flags say; field names are the flags' dests."""

    checkpoint: str
    output: str
    context_mode: str = "window"
    top_k: int = 0
    top_p: float = 1.0
    precision: str = "fp32"
    overwrite: bool = False
    verbose: bool = False


ONE_BYTE = [bytes((i,)) for i in range(256)]  # byte id -> its one-byte string


def graph_texts(ids: tf.RaggedTensor, vocab: str) -> tf.Tensor:
    """Ragged ids [rows, (length)] -> one string per row, in the graph, as
    charlm.data.corpus.decode gives it: characters joined; byte ids as UTF-8,
    an invalid sequence as U+FFFD and a character cut off at the end dropped."""
    import tensorflow as tf

    if vocab != BYTES_VOCAB:
        return tf.strings.reduce_join(tf.gather(tf.constant(list(vocab)), ids), axis=1)
    raw = tf.strings.reduce_join(tf.gather(tf.constant(ONE_BYTE), ids), axis=1)
    whole = _whole_bytes(ids)
    return tf.strings.unicode_transcode(
        tf.strings.substr(raw, tf.zeros_like(whole), whole, unit="BYTE"), "UTF-8", "UTF-8",
        errors="replace", replacement_char=0xFFFD)


def _whole_bytes(ids: tf.RaggedTensor) -> tf.Tensor:
    """Each row's length without its partial tail: the rule of
    charlm.data.corpus.partial_tail, on the last three bytes of every row at once."""
    import tensorflow as tf

    n = tf.cast(ids.row_lengths(), tf.int32)
    flat = tf.concat([ids.flat_values, [-1]], axis=0)  # -1: before a row's first byte
    ends = tf.cast(ids.row_limits(), tf.int32)

    def last(k):  # each row's k-th byte from the end, or -1
        return tf.gather(flat, tf.where(n >= k, ends - k, tf.size(flat) - 1))

    def between(b, lo, hi):
        return (b >= lo) & (b <= hi)

    def needs(b):  # bytes in the character that lead byte b starts (0: not a lead)
        return tf.where(between(b, 0xC2, 0xDF), 2, tf.where(
            between(b, 0xE0, 0xEF), 3, tf.where(between(b, 0xF0, 0xF4), 4, 0)))

    def second(lead, b):  # b may follow lead
        lo = tf.where(lead == 0xE0, 0xA0, tf.where(lead == 0xF0, 0x90, 0x80))
        hi = tf.where(lead == 0xED, 0x9F, tf.where(lead == 0xF4, 0x8F, 0xBF))
        return between(b, lo, hi)

    b1, b2, b3 = last(1), last(2), last(3)
    cut = tf.where(needs(b1) >= 2, 1, tf.where(
        (needs(b2) >= 3) & second(b2, b1), 2, tf.where(
            (needs(b3) == 4) & second(b3, b2) & between(b1, 0x80, 0xBF), 3, 0)))
    return n - cut


def build_module(weights: Weights, meta: dict, context_mode: str, top_k: int,
                 top_p: float, precision: str = "fp32") -> tf.Module:
    """The tf.Module to save."""
    import tensorflow as tf

    from charlm.config import TrainConfig
    from charlm.model.generator import PAD, Generator

    config = TrainConfig.from_dict(meta["config"])
    vocab = meta["vocab"]
    byte_level = vocab == BYTES_VOCAB
    keys = ONE_BYTE if byte_level else list(vocab)
    maxlen = config.maxlen

    class CharLM(tf.Module):
        def __init__(self):
            super().__init__(name="charlm")
            self.generator = Generator(weights, maxlen, context_mode, top_k, top_p, precision)
            self.table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.range(len(keys))),
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
            ids = self.table.lookup(tf.strings.bytes_split(seed) if byte_level else
                                    tf.strings.unicode_split(seed, "UTF-8"))
            checks = [] if byte_level else [tf.debugging.assert_non_negative(
                ids.flat_values, message="a seed has characters outside the model's "
                f"vocabulary; use only these: {vocab!r}")]
            checks += [
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
            logp = tf.RaggedTensor.from_tensor(logp, lengths=length)
            return {"text": graph_texts(tf.RaggedTensor.from_tensor(out, lengths=length), vocab),
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


def export(o: ExportOptions) -> str:
    """Write the SavedModel to o.output (local, s3:// or gs://); returns its URI.
    Saved locally first, then copied into a temporary location beside the
    output and moved into place only when complete."""
    runtime.quiet(o.verbose)
    check_sampling(o.context_mode, o.top_k, o.top_p, precision=o.precision)
    uri = checkpoint.locate(o.checkpoint)
    weights, meta = load_weights(uri)
    output = storage.normalize(o.output)
    import tensorflow as tf

    module = build_module(weights, meta, o.context_mode, o.top_k, o.top_p, o.precision)
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
                       "context_mode": o.context_mode, "top_k": o.top_k, "top_p": o.top_p,
                       "precision": o.precision},
                      f, indent=1)
        pafs.copy_files(saved, tmp, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
    print(f"exported {uri} ({o.context_mode} context) to {output}", flush=True)
    return output
