"""Seeds and requests: the seed texts a generation job runs, in row order, and
each request's identity and RNG seed (jobs.sample derives the same)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from charlm import storage
from charlm.config import TrainConfig
from charlm.data.corpus import BYTES_VOCAB, normalise
from charlm.errors import CharlmError, first_line


def read_seeds_file(path: str) -> list[str]:
    """One seed per line (UTF-8, local or s3://, gs://); blank lines are skipped."""
    fs, p = storage.resolve(path)
    try:
        with fs.open_input_stream(p) as f:
            text = f.read().decode("utf-8")
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise CharlmError(f"--seeds-file {path} cannot be read ({first_line(e)}); "
                          "pass a UTF-8 text file with one seed per line") from e
    seeds = [line for line in text.removeprefix("\ufeff").splitlines() if line.strip()]
    if not seeds:
        raise CharlmError(f"--seeds-file {path} holds no seed; write one seed per line")
    return seeds


def pick_seeds(recorded: list[str], n: int) -> list[str]:
    """n of the held-out seeds a run recorded (charlm.data.parts.SEED_CANDIDATES,
    evenly spread over every file's held-out tail), themselves evenly spread."""
    recorded = list(dict.fromkeys(recorded))
    if n > len(recorded):
        raise CharlmError(
            f"--num-seeds {n} asks for more distinct held-out seeds than the run's held-out "
            f"text gives ({len(recorded)}); pass --num-seeds {len(recorded)} or fewer, or "
            "more seeds with --seeds-file")
    return [recorded[i] for i in np.linspace(0, len(recorded) - 1, n).round().astype(int)]


def collect_seeds(meta: dict, seed: Sequence[str] = (), seeds_file: str | None = None,
                  num_seeds: int = 0, recipe_seed: bool | None = None,
                  unknown_chars: str = "error") -> list[str]:
    """Distinct seeds in row order: the recipe's own seed (the run's first maxlen
    characters; by default on when seeds come from the run, recipe_seed None),
    `seed`, the seeds file, then num_seeds of the held-out seeds the run
    recorded. Given seeds are normalised as the corpus was."""
    config = TrainConfig.from_dict(meta["config"])
    explicit = list(seed) + (read_seeds_file(seeds_file) if seeds_file else [])
    explicit = [normalise(s, config.keep_case, config.keep_newlines) for s in explicit]
    recipe = recipe_seed if recipe_seed is not None else (num_seeds > 0 or not explicit)
    seeds = [recorded(meta, "seed_text", str)] if recipe else []
    seeds += explicit
    if num_seeds:
        seeds += pick_seeds(recorded(meta, "heldout_seeds", list), num_seeds)
    if not seeds:
        raise CharlmError("no seeds: pass --seed, --seeds-file or --num-seeds")
    # A request's identity is its seed text: duplicates would repeat the same samples.
    return list(dict.fromkeys(known_chars(seeds, meta["vocab"], unknown_chars)))


def recorded(meta: dict, key: str, kind: type) -> str | list[str]:
    """What training recorded of its corpus under `key` ("seed_text": the
    recipe's seed; "heldout_seeds"), or a CharlmError asking for seeds instead."""
    value = (meta.get("corpus") or {}).get(key)
    if not isinstance(value, kind):
        what = "recipe seed" if key == "seed_text" else "held-out seeds"
        raise CharlmError(f"the checkpoint records no {what}; pass seeds with --seed or "
                          "--seeds-file" + (" and --no-recipe-seed" if key == "seed_text" else ""))
    return value


def known_chars(seeds: list[str], vocab: str, unknown_chars: str) -> list[str]:
    """The seeds, if every character is in the vocabulary; else a CharlmError
    naming the others, or (unknown_chars "skip") the seeds without them. A
    byte-level vocabulary takes any text."""
    if vocab == BYTES_VOCAB:
        return seeds
    known = set(vocab)
    unknown = sorted({c for s in seeds for c in s} - known)
    if unknown and unknown_chars == "error":
        first = next(i for i, s in enumerate(seeds) if set(s) - known)
        raise CharlmError(
            f"seed {first + 1} ({seeds[first][:30]!r}) and maybe others use characters outside "
            f"the model's vocabulary: {' '.join(map(repr, unknown[:20]))}; remove them or "
            "pass --unknown-chars skip to drop them")
    if unknown:
        seeds = ["".join(c for c in s if c in known) for s in seeds]
        if not all(seeds):
            raise CharlmError("a seed has no character left after dropping the ones outside "
                              "the vocabulary; give it characters of the training corpus")
    return seeds


def rng_seed(base: int, seed_text: str, temperature: float, sample_index: int) -> int:
    """A request's own 63-bit seed: a hash of --rng-seed and the request's identity."""
    key = f"{base}\0{seed_text}\0{temperature!r}\0{sample_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1


def requests(seeds: list[str], temperatures: list[float], samples: int,
             base: int) -> list[dict]:
    """One row per (seed, temperature, sample index), in that order, with its RNG seed."""
    return [{"seed_text": s, "temperature": t, "sample_index": k,
             "rng_seed": rng_seed(base, s, t, k)}
            for s in seeds for t in temperatures for k in range(samples)]
