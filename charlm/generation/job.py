"""The driver of jobs.generate: requests -> Ray Data actors that each hold the
model (charlm.generation.actor) -> Parquet, moved into place only when every
row is written.

One request is one row: (seed text, temperature, sample index) with an RNG
seed derived from --rng-seed and that identity, so a request's text never
depends on how rows are batched or how many actors run. The driver reads the
checkpoint's charlm.json only and never imports TensorFlow.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from charlm import devices, runtime, storage
from charlm.config import PLACEMENT_TIMEOUT_S
from charlm.data.corpus import BYTES_VOCAB
from charlm.errors import CharlmError
from charlm.generation.actor import Generate
from charlm.generation.options import check_sampling, parse_temperatures
from charlm.generation.seeds import collect_seeds, requests
from charlm.generation.weights import checked_meta
from charlm.model import checkpoint
from charlm.staging import staged_output


@dataclass
class GenerateOptions:
    """Everything jobs.generate's flags say; field names are the flags' dests."""

    checkpoint: str
    output: str
    seed: list[str] = field(default_factory=list)
    seeds_file: str | None = None
    num_seeds: int = 0
    recipe_seed: bool | None = None  # None: on when seeds come from the run
    temperatures: str = "0.2,0.5,1.0,1.2"
    samples_per_seed: int = 1
    length: int = 400
    context_mode: str = "window"
    top_k: int = 0
    top_p: float = 1.0
    precision: str = "fp32"
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


def checked_temperatures(o: GenerateOptions) -> list[float]:
    """Every option checked, before Ray starts; returns the temperatures."""
    temperatures = parse_temperatures(o.temperatures)
    check_sampling(o.context_mode, o.top_k, o.top_p, temperatures=temperatures,
                   length=o.length, unknown_chars=o.unknown_chars, precision=o.precision)
    for flag, value, least in (("--samples-per-seed", o.samples_per_seed, 1),
                               ("--num-seeds", o.num_seeds, 0),
                               ("--concurrency", o.concurrency, 1),
                               ("--batch-size", 1 if o.batch_size is None else o.batch_size, 1),
                               ("--cpus-per-actor", o.cpus_per_actor or 1, 1)):
        if value < least:
            raise CharlmError(f"{flag} is {value}; it must be at least {least}")
    if not o.placement_timeout > 0:
        raise CharlmError(f"--placement-timeout is {o.placement_timeout}; give the seconds "
                          "to wait for the actors, more than 0")
    return temperatures


def batch_size_for(n_requests: int, concurrency: int, use_gpu: bool = False) -> int:
    """The default --batch-size: as many requests per call as the device
    takes (devices.max_generation_batch; the kernels run faster per character
    at larger batches, and Ray Data's hand-off is paid once per batch), but
    few enough that every actor gets a batch."""
    return max(1, min(devices.max_generation_batch(use_gpu), -(-n_requests // concurrency)))


def generate(o: GenerateOptions) -> str:
    """Run the job; returns the output URI."""
    import ray.data

    runtime.quiet(o.verbose)
    temperatures = checked_temperatures(o)
    uri = checkpoint.locate(o.checkpoint)
    meta = checked_meta(uri)  # fail here, fast, rather than in every actor
    seeds = collect_seeds(meta, o.seed, o.seeds_file, o.num_seeds, o.recipe_seed,
                          o.unknown_chars)
    rows = requests(seeds, temperatures, o.samples_per_seed, o.rng_seed)
    batch_size = (batch_size_for(len(rows), o.concurrency, o.use_gpu) if o.batch_size is None
                  else o.batch_size)
    output = storage.normalize(o.output)
    cpus = o.cpus_per_actor or runtime.default_cpus(o.concurrency)
    runtime.init_ray(o.verbose, cpus_needed=cpus * o.concurrency)
    for flag, path in (("--checkpoint", uri), ("--output", output)):
        runtime.require_shared(path, flag, o.shared_filesystem)
    if o.use_gpu:
        runtime.require_gpus(o.concurrency)
        devices.check_cluster_gpus(o.concurrency, "generation actor", o.placement_timeout)
    created = datetime.now(timezone.utc)
    constants = {"run_id": f"gen-{created:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}",
                 "created_at": created, "checkpoint": uri,
                 "checkpoint_epoch": int(meta.get("epoch", 0)),
                 "corpus": (meta.get("corpus") or {}).get("name") or ""}
    unit = "bytes" if meta["vocab"] == BYTES_VOCAB else "characters"

    with staged_output(output, o.overwrite) as (fs, tmp):
        print(f"generating {len(rows):,} samples × {o.length} {unit} "
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
                                                 "use_gpu": o.use_gpu,
                                                 "precision": o.precision},
                          runtime_env=runtime.runtime_env(o.verbose))
             .write_parquet(tmp, filesystem=fs))
        except Exception as e:
            runtime.explain_placement_timeout(e, "generation actors", o.placement_timeout,
                                              o.use_gpu)
            raise
    print(f"wrote {len(rows):,} samples to {output}", flush=True)
    return output
