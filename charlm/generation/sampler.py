"""The quick sampler: one request from a checkpoint, streamed to the terminal
character by character, without Ray.

A request here is a jobs.generate request: the same seed normalisation, the
same per-request RNG seed (generation.rng_seed of --rng-seed, seed text,
temperature and sample index) and the same compiled graph, so the text equals
that request's row in a jobs.generate output.
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
    from charlm.data.corpus import encode, normalise
    from charlm.generation.job import (
        CONTEXT_MODES,
        _check_chars,
        check_top_p,
        load_weights,
        rng_seed,
    )

    for flag, value, least in (("--length", o.length, 1), ("--top-k", o.top_k, 0),
                               ("--sample-index", o.sample_index, 0)):
        if value < least:
            raise CharlmError(f"{flag} is {value}; it must be at least {least}")
    check_top_p(o.top_p)
    if o.context_mode not in CONTEXT_MODES:
        raise CharlmError(f"--context-mode {o.context_mode!r} is unknown; "
                          f"use one of {', '.join(CONTEXT_MODES)}")
    temperature = float(o.temperature)
    if not np.isfinite(temperature) or temperature < 0:
        raise CharlmError(f"--temperature is {o.temperature}; use 0 (greedy) or a positive "
                          "number")
    uri = checkpoint.locate(o.checkpoint)
    weights, meta = load_weights(uri)
    config = TrainConfig.from_dict(meta["config"])
    prime = normalise(o.prime, config.keep_case, config.keep_newlines)
    if not prime:
        raise CharlmError("--prime is empty; give a few characters of text to start from")
    prime = _check_chars([prime], meta["vocab"], o.unknown_chars)[0]
    seed = rng_seed(o.rng_seed, prime, temperature, o.sample_index)

    from charlm.model.generator import Generator

    generator = Generator(weights, config.maxlen, o.context_mode, o.top_k, o.top_p)
    ids = generator.stream(np.asarray(encode(prime, meta["vocab"]), np.int32), temperature,
                           seed, o.length)
    return Request(prime, seed, (meta["vocab"][i] for i, _ in ids))


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
    launched = psutil.Process().create_time()
    rate = (len(text) - 1) / max(done - first, 1e-9)
    print(f"{len(text)} characters (rng_seed {request.rng_seed}); the first "
          f"{first - launched:.1f} s after launch, then {rate:,.0f}/s",
          file=sys.stderr, flush=True)
    return "".join(text)
