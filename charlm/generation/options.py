"""Sampling options and their one validator, shared by jobs.generate,
jobs.sample and jobs.export."""

from __future__ import annotations

import math
from collections.abc import Iterable

from charlm.config import check_precision
from charlm.errors import CharlmError

CONTEXT_MODES = ("window", "stateful")
UNKNOWN_CHARS = ("error", "skip")  # seed characters outside the vocabulary: fail, or drop them


def parse_temperatures(text: str) -> list[float]:
    """"0.2,0.5" -> [0.2, 0.5]; duplicates dropped, order kept. The values are
    check_sampling's to judge."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise CharlmError(f"--temperatures {text!r} lists no temperature; "
                          "pass numbers like 0.2,0.5,1.0")
    values = []
    for p in parts:
        try:
            values.append(float(p))
        except ValueError:
            raise CharlmError(f"--temperatures: {p!r} is not a number; "
                              "pass numbers like 0.2,0.5,1.0") from None
    return list(dict.fromkeys(values))


def check_sampling(context_mode: str = "window", top_k: int = 0, top_p: float = 1.0, *,
                   temperatures: Iterable[float] = (), length: int = 1,
                   unknown_chars: str = "error", precision: str = "fp32") -> None:
    """Raise a CharlmError naming the first option out of range: a known
    context mode, top-k >= 0, top-p in (0, 1], temperatures 0 (greedy) or
    positive and finite, length >= 1, a known --unknown-chars and
    --precision. A job passes
    the options it has; the defaults pass."""
    if context_mode not in CONTEXT_MODES:
        raise CharlmError(f"--context-mode {context_mode!r} is unknown; "
                          f"use one of {', '.join(CONTEXT_MODES)}")
    if top_k < 0:
        raise CharlmError(f"--top-k is {top_k}; it must be at least 0 (0: all characters)")
    if not 0 < top_p <= 1:  # also NaN
        raise CharlmError(f"--top-p is {top_p}; use a probability mass in (0, 1] "
                          "(1: all characters)")
    for t in temperatures:
        if not math.isfinite(t) or t < 0:
            raise CharlmError(f"temperature {t} is not allowed; use 0 (greedy) or a "
                              "positive number")
    if length < 1:
        raise CharlmError(f"--length is {length}; it must be at least 1")
    if unknown_chars not in UNKNOWN_CHARS:
        raise CharlmError(f"--unknown-chars {unknown_chars!r} is unknown; "
                          f"use {' or '.join(UNKNOWN_CHARS)}")
    check_precision(precision)
