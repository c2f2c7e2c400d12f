"""jobs.evaluate: checkpoints scored on any text, one Parquet row per
checkpoint and file, with Ray Data actors that each score one checkpoint at
a time (charlm.evaluation.score), written as generation's output is
(charlm.staging: in place only when complete)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from charlm import devices, runtime, storage
from charlm.config import PLACEMENT_TIMEOUT_S, VAL_MAXLEN, VAL_STEP, TrainConfig
from charlm.data.corpus import BYTES_VOCAB, list_files, load_corpus
from charlm.errors import CharlmError, first_line
from charlm.evaluation.runs import best_checkpoint
from charlm.model import checkpoint
from charlm.staging import staged_output

SPLITS = ("heldout", "all")
NAMED = ("nietzsche", "python-docs")
SCHEMA = pa.schema([
    ("checkpoint", pa.string()),
    ("run", pa.string()),
    ("epoch", pa.int64()),
    ("file", pa.string()),
    ("split", pa.string()),
    ("context_mode", pa.string()),  # window (from a zero state each) or stateful
    ("window", pa.int64()),  # characters of context per window; null when stateful
    ("step", pa.int64()),  # characters between scored windows (1: every one)
    ("unit", pa.string()),  # char, or byte for a byte-level checkpoint
    ("scored", pa.int64()),
    ("skipped", pa.int64()),  # outside the checkpoint's vocabulary, dropped from the text
    ("loss", pa.float64()),  # nats per unit
    ("bpc", pa.float64()),  # bits per unit
    ("seconds", pa.float64()),
])


@dataclass
class EvaluateOptions:
    """Everything jobs.evaluate's flags say; field names are the flags' dests."""

    checkpoint: list[str] = field(default_factory=list)
    corpus: str = ""
    output: str = ""
    split: str = "heldout"
    stride: int = VAL_STEP
    concurrency: int | None = None  # None: one actor per checkpoint
    cpus_per_actor: int | None = None
    use_gpu: bool = False
    placement_timeout: float = PLACEMENT_TIMEOUT_S
    shared_filesystem: bool = False
    overwrite: bool = False
    verbose: bool = False


def _whole(spec: str) -> bool:
    """A named corpus or a URL: read whole, as one text."""
    return spec in NAMED or spec.startswith(("http://", "https://"))


def corpus_files(spec: str) -> list[str]:
    """What is scored, one row per entry: a named corpus or URL whole, a
    file, or each .txt file of a directory or bucket prefix."""
    if _whole(spec):
        return [spec]
    _, files = list_files(spec)
    empty = [f.base_name for f in files if f.size == 0]
    if empty:
        raise CharlmError(f"--corpus {spec}: {empty[0]} is empty; remove it or pass files "
                          "that hold text")
    base = storage.normalize(spec)
    if len(files) == 1 and files[0].path == storage.resolve(spec)[1]:
        return [base]
    return [storage.join(base, f.base_name) for f in files]


def read_text(source: str, meta: dict) -> str:
    """The file's text normalised as the checkpoint's training text was."""
    config = TrainConfig.from_dict(meta["config"])
    return load_corpus(source, keep_case=config.keep_case,
                       keep_newlines=config.keep_newlines, min_chars=1).text


def _check(o: EvaluateOptions) -> None:
    if not o.checkpoint:
        raise CharlmError("no --checkpoint given; pass one or more checkpoints, runs or sweeps")
    if o.split not in SPLITS:
        raise CharlmError(f"--split {o.split!r} is unknown; use heldout or all")
    for flag, value in (("--stride", o.stride), ("--concurrency", o.concurrency or 1),
                        ("--cpus-per-actor", o.cpus_per_actor or 1)):
        if value < 1:
            raise CharlmError(f"{flag} is {value}; it must be at least 1")


def _meta(uri: str) -> dict:
    meta = checkpoint.read_meta(uri)
    try:
        TrainConfig.from_dict(meta["config"])
        if not isinstance(meta["vocab"], str) or not meta["vocab"]:
            raise ValueError("no vocabulary")
    except (KeyError, TypeError, ValueError) as e:
        raise CharlmError(f"checkpoint {uri} cannot be loaded ({first_line(e)}); "
                          "pass a checkpoint written by jobs.train") from e
    return meta


def evaluate(o: EvaluateOptions) -> str:
    """Run the job; returns the output URI."""
    import ray.data

    runtime.quiet(o.verbose)
    _check(o)
    uris = list(dict.fromkeys(best_checkpoint(c) for c in o.checkpoint))
    for uri in uris:
        _meta(uri)
    files = corpus_files(o.corpus)
    if _whole(o.corpus):  # fail here, not in every actor, if it cannot be read
        load_corpus(o.corpus)
    output = storage.normalize(o.output)
    if storage.exists(output) and not o.overwrite:  # staged_output says so too, after Ray starts
        raise CharlmError(f"--output {o.output} already exists; pass --overwrite to replace it "
                          "or choose another path")
    concurrency = min(o.concurrency or len(uris), len(uris))
    cpus = o.cpus_per_actor or runtime.default_cpus(concurrency)
    runtime.init_ray(o.verbose, cpus_needed=cpus * concurrency)
    for flag, path in [*(("--checkpoint", u) for u in uris), ("--output", output),
                       *([] if _whole(o.corpus) else [("--corpus", o.corpus)])]:
        runtime.require_shared(path, flag, o.shared_filesystem)
    if o.use_gpu:
        runtime.require_gpus(concurrency)

    mode = "every character, state carried" if o.stride == 1 else \
        f"windows of {VAL_MAXLEN} every {o.stride} characters"
    with staged_output(output, o.overwrite) as (fs, tmp):
        print(f"scoring {len(uris)} checkpoint(s) on {len(files)} file(s) of {o.corpus} "
              f"({o.split}; {mode})", flush=True)
        # One block, and so one actor call, per checkpoint: its files together.
        rows = [{"checkpoint": uri, "file": f} for uri in uris for f in files]
        requested = ray.data.from_items(rows, override_num_blocks=len(uris))
        ctx = requested.context
        ctx.execution_options.preserve_order = True  # rows in checkpoint, then file, order
        ctx.wait_for_min_actors_s = o.placement_timeout  # every actor placed, or one line
        try:
            (requested
             .map_batches(Evaluate, batch_format="pyarrow", batch_size=len(files),
                          compute=ray.data.ActorPoolStrategy(
                              size=concurrency, max_tasks_in_flight_per_actor=1),
                          num_cpus=cpus, num_gpus=1 if o.use_gpu else None,
                          fn_constructor_kwargs={"split": o.split, "stride": o.stride,
                                                 "threads": cpus, "use_gpu": o.use_gpu},
                          runtime_env=runtime.runtime_env(o.verbose))
             .write_parquet(tmp, filesystem=fs))
        except Exception as e:
            runtime.explain_placement_timeout(e, "evaluation actors", o.placement_timeout,
                                              o.use_gpu)
            raise
        scores = pq.read_table(tmp, filesystem=fs).to_pandas()
    for uri, rows in scores.groupby("checkpoint", sort=False):
        print(summary(uri, rows), flush=True)
    print(f"wrote {len(scores):,} rows to {output}", flush=True)
    return output


def summary(uri: str, rows) -> str:
    """One checkpoint's line: its loss over every file it scored."""
    scored, skipped = int(rows["scored"].sum()), int(rows["skipped"].sum())
    unit = rows["unit"].iloc[0]
    nats = float((rows["loss"].fillna(0) * rows["scored"]).sum())
    loss = nats / scored if scored else float("nan")
    return (f"{uri}: loss {loss:.4f} nats, {loss / np.log(2):.3f} bits per {unit}, over "
            f"{scored:,} {unit}s of {len(rows)} file(s); {skipped:,} skipped outside its "
            "vocabulary")


class Evaluate:
    """map_batches callable: each batch is one checkpoint's files; the
    checkpoint is loaded once per batch (an actor scores one at a time)."""

    def __init__(self, split: str, stride: int, threads: int, use_gpu: bool = False):
        # Before TensorFlow's runtime starts; Ray's OMP_NUM_THREADS=1 would cap it.
        devices.set_threads(devices.generation_threads(use_gpu, threads))
        devices.check_gpu(use_gpu, "evaluation actor")
        self.split, self.stride = split, stride

    def __call__(self, batch: pa.Table) -> pa.Table:
        from charlm.evaluation.score import Scorer, ids_of, split

        uri = batch.column("checkpoint")[0].as_py()
        local = checkpoint.fetch(uri)
        try:
            model, meta = checkpoint.load_model(local)
        except CharlmError:
            raise
        except Exception as e:  # TensorFlow raises many types for a broken checkpoint
            raise CharlmError(f"checkpoint {uri} cannot be loaded ({first_line(e)}); "
                              "pass a checkpoint written by jobs.train") from e
        finally:
            if local != uri:  # a download: what was read is in memory now
                shutil.rmtree(local, ignore_errors=True)
        scorer = Scorer(model)
        config = TrainConfig.from_dict(meta["config"])
        stateful = self.stride == 1
        out: dict[str, list] = {f.name: [] for f in SCHEMA}
        for source in batch.column("file").to_pylist():
            started = time.perf_counter()
            ids, skipped = split(ids_of(read_text(source, meta), meta["vocab"]), self.split,
                                 config.val_frac)
            scored = scorer.count(ids, self.stride)
            loss = scorer(ids, self.stride) / scored if scored else float("nan")
            for name, value in (
                    ("checkpoint", uri), ("run", meta.get("run") or ""),
                    ("epoch", int(meta.get("epoch", 0))), ("file", source),
                    ("split", self.split), ("context_mode", "stateful" if stateful else "window"),
                    ("window", None if stateful else VAL_MAXLEN), ("step", self.stride),
                    ("unit", "byte" if meta["vocab"] == BYTES_VOCAB else "char"),
                    ("scored", scored), ("skipped", skipped), ("loss", loss),
                    ("bpc", loss / np.log(2)), ("seconds", time.perf_counter() - started)):
                out[name].append(value)
        return pa.table(out, schema=SCHEMA)
