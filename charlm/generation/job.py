"""Batch generation as a Ray Data job: requests → actors that each hold the
model → Parquet, moved into place only when every row is written.

One request is one row: (seed text, temperature, sample index) with an RNG
seed derived from --rng-seed and that identity, so a request's text never
depends on how rows are batched or how many actors run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from charlm import runtime, storage
from charlm.config import PLACEMENT_TIMEOUT_S, TrainConfig
from charlm.errors import CharlmError, first_line
from charlm.model import checkpoint
from charlm.staging import staged_output

CONTEXT_MODES = ("window", "stateful")

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
    ("length", pa.int64()),
    ("text", pa.string()),
    ("mean_logprob", pa.float64()),
    ("seconds", pa.float64()),
    ("generated_at", pa.timestamp("us", tz="UTC")),
])


@dataclass
class GenerateOptions:
    """Everything jobs.generate's flags say; field names are the flags' dests."""

    checkpoint: str
    output: str
    seed: list[str] = field(default_factory=list)
    seeds_file: str | None = None
    num_seeds: int = 0
    recipe_seed: bool | None = None  # None: on when seeds come from the corpus
    temperatures: str = "0.2,0.5,1.0,1.2"
    samples_per_seed: int = 1
    length: int = 400
    context_mode: str = "window"
    top_k: int = 0
    top_p: float = 1.0
    rng_seed: int = 0
    unknown_chars: str = "error"
    concurrency: int = 1
    batch_size: int | None = None  # None: batch_size_for(requests, concurrency)
    cpus_per_actor: int | None = None
    use_gpu: bool = False
    placement_timeout: float = PLACEMENT_TIMEOUT_S
    shared_filesystem: bool = False  # local paths are a mount every node shares
    overwrite: bool = False
    verbose: bool = False


# -- input checks -------------------------------------------------------------

def parse_temperatures(text: str) -> list[float]:
    """"0.2,0.5" → [0.2, 0.5]; duplicates dropped, order kept."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise CharlmError(f"--temperatures {text!r} lists no temperature; "
                          "pass numbers like 0.2,0.5,1.0")
    values = []
    for p in parts:
        try:
            t = float(p)
        except ValueError:
            raise CharlmError(f"--temperatures: {p!r} is not a number; "
                              "pass numbers like 0.2,0.5,1.0") from None
        if not np.isfinite(t) or t < 0:
            raise CharlmError(f"--temperatures: {p} is not allowed; use 0 (greedy) "
                              "or a positive number")
        values.append(t)
    return list(dict.fromkeys(values))


def _check_options(o: GenerateOptions) -> None:
    for flag, value, least in (("--length", o.length, 1), ("--samples-per-seed",
                               o.samples_per_seed, 1), ("--num-seeds", o.num_seeds, 0),
                               ("--concurrency", o.concurrency, 1),
                               ("--batch-size", 1 if o.batch_size is None else o.batch_size, 1),
                               ("--top-k", o.top_k, 0),
                               ("--cpus-per-actor", o.cpus_per_actor or 1, 1)):
        if value < least:
            raise CharlmError(f"{flag} is {value}; it must be at least {least}")
    check_top_p(o.top_p)
    if o.context_mode not in CONTEXT_MODES:
        raise CharlmError(f"--context-mode {o.context_mode!r} is unknown; "
                          f"use one of {', '.join(CONTEXT_MODES)}")
    if o.unknown_chars not in ("error", "skip"):
        raise CharlmError(f"--unknown-chars {o.unknown_chars!r} is unknown; use error or skip")


def check_top_p(top_p: float) -> None:
    if not 0 < top_p <= 1:  # also NaN
        raise CharlmError(f"--top-p is {top_p}; use a probability mass in (0, 1] "
                          "(1: all characters)")


@contextmanager
def _fetched(uri: str) -> Iterator[str]:
    """A local directory with the checkpoint's files, removed afterwards if it
    was downloaded; any failure to load from it becomes a CharlmError."""
    local = checkpoint.fetch(uri)
    try:
        yield local
    except CharlmError:
        raise
    except Exception as e:  # TF, JSON and pyarrow raise many types for a bad checkpoint
        raise CharlmError(f"checkpoint {uri} cannot be loaded ({first_line(e)}); "
                          "pass a checkpoint written by jobs.train") from e
    finally:
        if local != uri:  # a download: what was read is in memory now
            shutil.rmtree(local, ignore_errors=True)


def load_checkpoint(uri: str):
    """(Keras model, meta) of a checkpoint."""
    with _fetched(uri) as local:
        return checkpoint.load_model(local)


def read_meta(uri: str) -> dict:
    """A checkpoint's charlm.json alone: what the driver needs, without
    TensorFlow (the actors load the weights)."""
    meta = checkpoint.read_meta(uri)
    try:
        TrainConfig.from_dict(meta["config"])
        if not isinstance(meta["vocab"], str) or not meta["vocab"]:
            raise ValueError("no vocabulary")
    except Exception as e:  # JSON, pyarrow and missing keys raise many types
        raise CharlmError(f"checkpoint {uri} cannot be loaded ({first_line(e)}); "
                          "pass a checkpoint written by jobs.train") from e
    return meta


def load_weights(uri: str):
    """(sampling.Weights, meta) of a checkpoint, read without building a Keras model."""
    from charlm.model.generator import weights_from_checkpoint

    with _fetched(uri) as local:
        meta = checkpoint.read_meta(local)
        layers = TrainConfig.from_dict(meta["config"]).layers
        return weights_from_checkpoint(os.path.join(local, checkpoint.STATE), layers), meta


def run_corpus(meta: dict):
    """The run's corpus, reloaded and checked against the hash the run recorded."""
    from charlm.data.corpus import load_corpus

    info = meta.get("corpus") or {}
    name = info.get("name")
    spec = name if name in ("nietzsche", "python-docs") else info.get("source") or name
    hint = "pass seeds with --seeds-file or --seed instead"
    if not spec:
        raise CharlmError(f"the checkpoint records no corpus; {hint}")
    try:
        corpus = load_corpus(spec, keep_case=bool(info.get("keep_case")),
                             keep_newlines=bool(info.get("keep_newlines")))
    except CharlmError as e:
        raise CharlmError(f"the run's corpus {name} cannot be loaded ({e}); {hint}") from e
    if corpus.sha256 != info.get("sha256"):
        raise CharlmError(f"the run's corpus {name} has changed since training "
                          f"(sha256 {corpus.sha256[:12]}…, recorded "
                          f"{str(info.get('sha256'))[:12]}…); {hint}")
    return corpus


def read_seeds_file(path: str) -> list[str]:
    """One seed per line (UTF-8); blank lines are skipped."""
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


def heldout_seeds(text: str, val_frac: float, maxlen: int, n: int) -> list[str]:
    """n distinct windows of maxlen characters spread evenly over the held-out
    tail (a checkpoint that recorded no held-out seeds); too few is an error."""
    from charlm.data.windows import holdout_start

    start, last = holdout_start(len(text), val_frac), len(text) - maxlen
    if last < start:
        raise CharlmError(f"the held-out tail has {len(text) - start} characters, fewer than "
                          f"one {maxlen}-character seed; pass --seeds-file or --seed")
    if n > last - start + 1:
        _too_many(n, last - start + 1)
    seeds = list(dict.fromkeys(text[i:i + maxlen]
                               for i in np.linspace(start, last, n).astype(int)))
    if len(seeds) < n:
        print(f"warning: --num-seeds {n} gave {len(seeds)} distinct held-out seeds "
              "(the held-out text repeats itself)", file=sys.stderr)
    return seeds


def pick_seeds(recorded: list[str], n: int) -> list[str]:
    """n of the held-out seeds a run recorded (charlm.parts.SEED_CANDIDATES,
    evenly spread over every file's held-out tail), themselves evenly spread."""
    recorded = list(dict.fromkeys(recorded))
    if n > len(recorded):
        _too_many(n, len(recorded))
    return [recorded[i] for i in np.linspace(0, len(recorded) - 1, n).round().astype(int)]


def _too_many(n: int, available: int) -> None:
    raise CharlmError(f"--num-seeds {n} asks for more distinct held-out seeds than the run's "
                      f"held-out text gives ({available}); pass --num-seeds {available} or "
                      "fewer, or more seeds with --seeds-file")


def collect_seeds(o: GenerateOptions, meta: dict) -> list[str]:
    """Distinct seeds in row order: the recipe's own seed, --seed, --seeds-file,
    held-out windows (those the run recorded; for an older checkpoint, read
    from its corpus)."""
    from charlm.data.corpus import normalise

    config = TrainConfig.from_dict(meta["config"])
    explicit = list(o.seed) + (read_seeds_file(o.seeds_file) if o.seeds_file else [])
    explicit = [normalise(s, config.keep_case, config.keep_newlines) for s in explicit]
    recipe = o.recipe_seed if o.recipe_seed is not None else (o.num_seeds > 0 or not explicit)
    info = meta.get("corpus") or {}
    recorded = "heldout_seeds" in info and "seed_text" in info
    text = run_corpus(meta).text if (recipe or o.num_seeds) and not recorded else ""
    seeds = [info["seed_text"] if recorded else text[:config.maxlen]] if recipe else []
    seeds += explicit
    if o.num_seeds:
        seeds += (pick_seeds(info["heldout_seeds"], o.num_seeds) if recorded else
                  heldout_seeds(text, config.val_frac, config.maxlen, o.num_seeds))
    if not seeds:
        raise CharlmError("no seeds: pass --seed, --seeds-file or --num-seeds")
    # A request's identity is its seed text: duplicates would repeat the same samples.
    return list(dict.fromkeys(_check_chars(seeds, meta["vocab"], o.unknown_chars)))


def _check_chars(seeds: list[str], vocab: str, mode: str) -> list[str]:
    from charlm.data.corpus import BYTES_VOCAB

    if vocab == BYTES_VOCAB:  # a byte-level model takes any text
        return seeds
    known = set(vocab)
    unknown = sorted({c for s in seeds for c in s} - known)
    if unknown and mode == "error":
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


# -- requests -----------------------------------------------------------------

def rng_seed(base: int, seed_text: str, temperature: float, sample_index: int) -> int:
    """A request's own 63-bit seed: a hash of --rng-seed and the request's identity."""
    key = f"{base}\0{seed_text}\0{temperature!r}\0{sample_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1


# The kernels run faster per character at larger batches (2 cores, LSTM(128):
# window 18.5k -> 26.2k chars/s, stateful 410k -> 546k from 256 to 1,024
# requests), and Ray Data's hand-off between batches (~90 ms each) is paid
# 4 times instead of 16 for 4,096 requests (BENCHMARKS.md).
MAX_BATCH = 1024


def batch_size_for(n_requests: int, concurrency: int) -> int:
    """The default --batch-size: up to MAX_BATCH requests per call, but small
    enough that every actor gets a batch."""
    return max(1, min(MAX_BATCH, -(-n_requests // concurrency)))


def requests(seeds: list[str], temperatures: list[float], samples: int,
             base: int) -> list[dict]:
    return [{"seed_text": s, "temperature": t, "sample_index": k,
             "rng_seed": rng_seed(base, s, t, k)}
            for s in seeds for t in temperatures for k in range(samples)]


class Generate:
    """map_batches callable: loads the checkpoint once per actor, then generates
    each batch of requests in one compiled call."""

    def __init__(self, uri: str, context_mode: str, top_k: int, top_p: float, length: int,
                 threads: int, constants: dict, use_gpu: bool = False):
        import tensorflow as tf

        runtime.check_gpu(use_gpu, "generation actor")
        try:  # before TensorFlow's runtime starts; Ray's OMP_NUM_THREADS=1 would cap it
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # a reused worker whose TensorFlow already runs keeps its threads

        from charlm.model.generator import Generator

        weights, meta = load_weights(uri)
        self.vocab = meta["vocab"]
        self.generator = Generator(weights, meta["config"]["maxlen"], context_mode, top_k, top_p)
        self.generator([np.zeros(1, np.int32)], np.zeros(1), np.zeros(1, np.int64), 1)  # trace
        self.length = length
        self.constants = {**constants, "context_mode": context_mode, "top_k": top_k,
                          "top_p": top_p, "length": length}

    def __call__(self, batch: pa.Table) -> pa.Table:
        from charlm.data.corpus import encode

        started = time.perf_counter()
        seeds = batch.column("seed_text").to_pylist()
        ids, mean_logp = self.generator(
            [encode(s, self.vocab) for s in seeds],
            batch.column("temperature").to_numpy(),
            batch.column("rng_seed").to_numpy(), self.length)
        n = batch.num_rows
        columns = {"seed_text": seeds, "text": self._texts(ids),
                   "mean_logprob": mean_logp,
                   "seconds": np.full(n, (time.perf_counter() - started) / n),
                   "generated_at": [datetime.now(timezone.utc)] * n}
        for name in ("temperature", "sample_index", "rng_seed"):
            columns[name] = batch.column(name)
        for name, value in self.constants.items():
            columns[name] = [value] * n
        return pa.table({f.name: columns[f.name] for f in SCHEMA}, schema=SCHEMA)

    def _texts(self, ids: np.ndarray) -> list[str]:
        """Rows of ids -> strings, without a Python loop over characters: the
        rows' code points viewed as fixed-width numpy strings (UCS-4). numpy
        drops trailing NULs, so a vocabulary holding one takes the slow path."""
        if "\0" in self.vocab:
            return ["".join(self.vocab[i] for i in row) for row in ids.tolist()]
        codes = np.array([ord(c) for c in self.vocab], "<u4")[ids]
        return np.ascontiguousarray(codes).view(f"<U{ids.shape[1]}")[:, 0].tolist()


# -- the job ------------------------------------------------------------------

def generate(o: GenerateOptions) -> str:
    """Run the job; returns the output URI."""
    import ray.data

    runtime.quiet(o.verbose)
    _check_options(o)
    temperatures = parse_temperatures(o.temperatures)
    uri = checkpoint.locate(o.checkpoint)
    meta = read_meta(uri)  # fail here, fast, rather than in every actor
    rows = requests(collect_seeds(o, meta), temperatures, o.samples_per_seed, o.rng_seed)
    batch_size = (batch_size_for(len(rows), o.concurrency) if o.batch_size is None
                  else o.batch_size)
    output = storage.normalize(o.output)
    cpus = o.cpus_per_actor or runtime.default_cpus(o.concurrency)
    runtime.init_ray(o.verbose, cpus_needed=cpus * o.concurrency)
    for flag, path in (("--checkpoint", uri), ("--output", output)):
        runtime.require_shared(path, flag, o.shared_filesystem)
    if o.use_gpu:
        runtime.require_gpus(o.concurrency)
    created = datetime.now(timezone.utc)
    constants = {"run_id": f"gen-{created:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}",
                 "created_at": created, "checkpoint": uri,
                 "checkpoint_epoch": int(meta.get("epoch", 0)),
                 "corpus": (meta.get("corpus") or {}).get("name") or ""}

    with staged_output(output, o.overwrite) as (fs, tmp):
        print(f"generating {len(rows):,} samples × {o.length} characters "
              f"({o.context_mode} context) from {uri}", flush=True)
        requested = ray.data.from_items(rows, override_num_blocks=-(-len(rows) // batch_size))
        ctx = requested.context  # this job's own copy of the DataContext
        # Ray Data's progress bar is the job's progress indicator, verbose or
        # not; the rich one, as the tqdm one needs tqdm, which is not installed.
        ctx.enable_progress_bars = ctx.enable_rich_progress_bars = True
        ctx.use_ray_tqdm = False
        ctx.execution_options.preserve_order = True  # files in request order
        # Every actor started (and its GPU checked) before the first batch, within the deadline.
        ctx.wait_for_min_actors_s = o.placement_timeout
        try:
            (requested
             .map_batches(Generate, batch_format="pyarrow", batch_size=batch_size,
                          concurrency=o.concurrency, num_cpus=cpus,
                          num_gpus=1 if o.use_gpu else None,
                          fn_constructor_kwargs={"uri": uri, "context_mode": o.context_mode,
                                                 "top_k": o.top_k, "top_p": o.top_p,
                                                 "length": o.length,
                                                 "threads": cpus, "constants": constants,
                                                 "use_gpu": o.use_gpu},
                          runtime_env=runtime.runtime_env(o.verbose))
             .write_parquet(tmp, filesystem=fs))
        except Exception as e:
            runtime.explain_placement_timeout(e, "generation actors", o.placement_timeout,
                                              o.use_gpu)
            raise
    print(f"wrote {len(rows):,} samples to {output}", flush=True)
    return output
