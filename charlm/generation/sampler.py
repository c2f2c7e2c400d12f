"""The quick sampler: one request from a checkpoint, streamed to the terminal
character by character, without Ray.

A request here is a jobs.generate request: the same seed normalisation, the
same per-request RNG seed (charlm.generation.seeds.rng_seed of --rng-seed,
seed text, temperature and sample index), the same compiled graph and the same
decoding, so the text equals that request's row in a jobs.generate output.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

import psutil

from charlm import runtime
from charlm.errors import CharlmError
from charlm.model import checkpoint


@dataclass
class SampleOptions:
    """Everything jobs.sample's flags say; field names are the flags' dests."""

    checkpoint: str
    prime: str
    temperature: float = 0.5
    length: int = 400
    context_mode: str = "window"
    top_k: int = 0
    top_p: float = 1.0
    precision: str = "fp32"
    rng_seed: int = 0
    sample_index: int = 0
    unknown_chars: str = "error"
    verbose: bool = False


@dataclass(frozen=True)
class Request:
    """One prepared request: the seed as used, its RNG seed, and its characters."""

    seed_text: str
    rng_seed: int
    chars: Iterator[str]


def prepare(o: SampleOptions) -> Request:
    """Check the options, load the checkpoint and start generating (lazily)."""
    import numpy as np

    from charlm.config import TrainConfig
    from charlm.data.corpus import decode_stream, encode, normalise
    from charlm.generation.options import check_sampling
    from charlm.generation.seeds import known_chars, rng_seed
    from charlm.generation.weights import checked_meta, load_weights

    temperature = float(o.temperature)
    check_sampling(o.context_mode, o.top_k, o.top_p, temperatures=[temperature],
                   length=o.length, unknown_chars=o.unknown_chars, precision=o.precision)
    if o.sample_index < 0:
        raise CharlmError(f"--sample-index is {o.sample_index}; it must be at least 0")
    uri = checkpoint.locate(o.checkpoint)
    meta = checked_meta(uri)  # the prime is checked before TensorFlow is imported
    config = TrainConfig.from_dict(meta["config"])
    prime = normalise(o.prime, config.keep_case, config.keep_newlines)
    if not prime:
        raise CharlmError("--prime is empty; give a few characters of text to start from")
    prime = known_chars([prime], meta["vocab"], o.unknown_chars)[0]
    seed = rng_seed(o.rng_seed, prime, temperature, o.sample_index)
    weights, meta = load_weights(uri)

    from charlm.model.generator import Generator

    generator = Generator(weights, config.maxlen, o.context_mode, o.top_k, o.top_p, o.precision)
    ids = generator.stream(np.asarray(encode(prime, meta["vocab"]), np.int32), temperature,
                           seed, o.length)
    return Request(prime, seed, decode_stream((i for i, _ in ids), meta["vocab"]))


def sample(o: SampleOptions, out: TextIO | None = None) -> str:
    """Print the prime, then each generated character as it comes; returns the
    generated text. A summary line goes to stderr."""
    out = out or sys.stdout
    runtime.quiet(o.verbose)
    request = prepare(o)
    out.write(request.seed_text)
    out.flush()
    text = []
    first = None
    for char in request.chars:
        first = first or time.time()
        text.append(char)
        out.write(char)
        out.flush()
    out.write("\n")
    out.flush()
    done = time.time()
    first = first or done  # a byte-level sample can decode to no character at all
    launched = psutil.Process().create_time()
    rate = max(len(text) - 1, 0) / max(done - first, 1e-9)
    print(f"{len(text)} characters (rng_seed {request.rng_seed}); the first "
          f"{first - launched:.1f} s after launch, then {rate:,.0f}/s",
          file=sys.stderr, flush=True)
    return "".join(text)
