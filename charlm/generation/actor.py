"""The Ray Data actor of jobs.generate: holds one checkpoint's generator and
turns each batch of requests into rows of the output's schema."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from charlm import devices
from charlm.data.corpus import BYTES_VOCAB, decode, encode

SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
    ("checkpoint", pa.string()),
    ("checkpoint_epoch", pa.int64()),
    ("corpus", pa.string()),
    ("seed_text", pa.string()),
    ("temperature", pa.float64()),
    ("sample_index", pa.int64()),
    ("rng_seed", pa.int64()),
    ("context_mode", pa.string()),
    ("top_k", pa.int64()),
    ("top_p", pa.float64()),
    ("precision", pa.string()),
    ("length", pa.int64()),
    ("text", pa.string()),
    ("mean_logprob", pa.float64()),
    ("seconds", pa.float64()),
    ("generated_at", pa.timestamp("us", tz="UTC")),
])


def decode_rows(ids: np.ndarray, vocab: str) -> list[str]:
    """Rows of ids -> strings, each as charlm.data.corpus.decode gives it.
    Characters go without a Python loop over them: the rows' code points
    viewed as fixed-width numpy strings (UCS-4). numpy drops trailing NULs,
    so a vocabulary holding one (bytes do) decodes row by row."""
    if vocab == BYTES_VOCAB or "\0" in vocab:
        return [decode(row, vocab) for row in ids]
    codes = np.array([ord(c) for c in vocab], "<u4")[ids]
    return np.ascontiguousarray(codes).view(f"<U{ids.shape[1]}")[:, 0].tolist()


class Generate:
    """map_batches callable: loads the checkpoint once per actor and compiles
    its generator before the first batch, then generates each batch of
    requests in one compiled call. `constants` are the columns every row of
    the job shares."""

    def __init__(self, uri: str, context_mode: str, top_k: int, top_p: float, length: int,
                 threads: int, constants: dict, use_gpu: bool = False, precision: str = "fp32"):
        # Before TensorFlow's runtime starts; Ray's OMP_NUM_THREADS=1 would cap it.
        devices.set_threads(devices.generation_threads(use_gpu, threads))
        devices.check_gpu(use_gpu, "generation actor")

        from charlm.generation.weights import load_weights
        from charlm.model.generator import Generator

        weights, meta = load_weights(uri)
        self.vocab = meta["vocab"]
        self.generator = Generator(weights, meta["config"]["maxlen"], context_mode, top_k, top_p,
                                   precision)
        self.generator([np.zeros(1, np.int32)], np.zeros(1), np.zeros(1, np.int64), 1)  # trace
        self.length = length
        self.constants = {**constants, "context_mode": context_mode, "top_k": top_k,
                          "top_p": top_p, "precision": precision}

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        seeds = batch.column("seed_text").to_pylist()
        ids, mean_logp = self.generator(
            [encode(s, self.vocab) for s in seeds],
            batch.column("temperature").to_numpy(),
            batch.column("rng_seed").to_numpy(), self.length)
        texts = decode_rows(ids, self.vocab)
        n = batch.num_rows
        columns = {"seed_text": seeds, "text": texts, "length": [len(t) for t in texts],
                   "mean_logprob": mean_logp,
                   "seconds": np.full(n, (time.perf_counter() - started) / n),
                   "generated_at": [datetime.now(timezone.utc)] * n}
        for name in ("temperature", "sample_index", "rng_seed"):
            columns[name] = batch.column(name)
        for name, value in self.constants.items():
            columns[name] = [value] * n
        return pa.table({f.name: columns[f.name] for f in SCHEMA}, schema=SCHEMA)
