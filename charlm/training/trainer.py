"""Data-parallel training: Ray Train runs `train_loop` on every worker, under
MultiWorkerMirroredStrategy (when there are several), each worker reading its
own shard of the windows.

Flow: corpus → windows (one Ray Data stream per worker, charlm.stream) → one
Keras fit for the run → at each epoch's end, a checkpoint + metrics reported to
Ray Train. --seed seeds the data order, weight initialisation and dropout.
"""

from __future__ import annotations

import dataclasses
import os

import psutil

from charlm import internals, runtime, storage
from charlm.config import TrainConfig
from charlm.data.parts import Parts, load_parts, prepare
from charlm.data.stream import Plan, make_plan, round_batch
from charlm.errors import CharlmError
from charlm.model import checkpoint
from charlm.training import finetune, progress, stopping
from charlm.training.worker import train_loop


def run_name(config: TrainConfig, corpus: Parts) -> str:
    return config.name or f"{os.path.basename(corpus.name.rstrip('/')) or 'corpus'}-lstm"


def _plan(corpus: Parts, config: TrainConfig) -> Plan:
    """The data plan, or a one-line error if the corpus makes no full batch."""
    plan = make_plan(corpus.train_lengths, config)
    if plan.steps < 1:
        raise CharlmError(
            f"{plan.total} training windows make no full batch of {config.batch_size} "
            f"across {config.num_workers} worker(s); lower --batch-size or use a longer corpus")
    return plan


def train(config: TrainConfig) -> str:
    """Train (or resume) a run; returns the URI of its best checkpoint."""
    import ray
    import ray.train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from charlm.training.backend import TFConfig

    job_started = psutil.Process().create_time()  # whole job: imports and Ray start-up too
    config.validate()
    batch = round_batch(config.batch_size, config.num_workers)
    if batch != config.batch_size:
        print(f"note: --batch-size {config.batch_size} is not a multiple of "
              f"{config.num_workers} workers; training at {batch} "
              f"({batch // config.num_workers} per worker)", flush=True)
        config = dataclasses.replace(config, batch_size=batch)
    corpus_args = dict(maxlen=config.maxlen, step=config.step, val_frac=config.val_frac,
                       byte_level=config.vocab == "bytes", keep_case=config.keep_case,
                       keep_newlines=config.keep_newlines)
    # Bad input fails here, before Ray starts: a small corpus is read and
    # split, a large one's files are listed.
    source = prepare(config.corpus, **corpus_args)
    init_from = None
    if isinstance(source, Parts):
        _plan(source, config)
        init_from = config.init_from and finetune.plan(config.init_from, source.vocab, config)
    storage_path = storage.normalize(config.storage_path)
    cpus = config.cpus_per_worker or runtime.default_cpus(config.num_workers)
    storage.check_writable(storage_path, "--storage-path")  # before Ray starts: fails fast
    runtime.init_ray(config.verbose, cpus_needed=cpus * config.num_workers)
    runtime.require_shared(storage_path, "--storage-path", config.shared_filesystem)
    if config.use_gpu:
        runtime.require_gpus(config.num_workers)
    # The corpus as parts in Ray's store (charlm.parts): read by Ray Data when
    # large, never whole in this process.
    corpus = load_parts(source, **corpus_args)
    plan = _plan(corpus, config)
    n_windows, steps = plan.total, plan.steps
    if config.init_from and init_from is None:  # a streamed corpus: its vocabulary is known now
        init_from = finetune.plan(config.init_from, corpus.vocab, config)
    name = run_name(config, corpus)
    run_dir = storage.join(storage_path, name)
    print(f"corpus {corpus.name}: {corpus.chars:,} characters in {corpus.files:,} file(s), "
          f"vocabulary {len(corpus.vocab)}, {n_windows:,} training windows; "
          f"{config.num_workers} worker(s) × {steps} steps per epoch; run {run_dir}", flush=True)

    console = progress.Console()
    meta = {"format": 1, "run": name, "vocab": corpus.vocab, "config": config.to_dict(),
            "corpus": corpus.info(), **({"init_from": init_from} if init_from else {})}
    loop_config = {
        "mailbox": console.mailbox, "init_from": init_from,
        "config": config.to_dict(), "vocab": corpus.vocab, "meta": meta, "steps": steps,
        "threads": cpus, "run_dir": run_dir, "job_started": job_started,
        "seed_ids": corpus.seed_ids,
        # The training text as encoded parts in the object store, with their
        # lengths (charlm.stream), and the held-out sample scored each epoch
        # (at most parts.HELDOUT_CAP windows).
        "parts": corpus.train, "part_lengths": corpus.train_lengths,
        "val_windows": corpus.heldout_windows,
    }
    # TensorflowTrainer, but without importing TensorFlow here and in Ray
    # Train's controller (charlm.backend).
    trainer = DataParallelTrainer(
        train_loop,
        backend_config=TFConfig(),
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu,
            resources_per_worker={"CPU": cpus, **({"GPU": 1} if config.use_gpu else {})},
            placement_strategy=config.placement_strategy),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures,
                                                   controller_failure_limit=0),
            worker_runtime_env=runtime.runtime_env(config.verbose),
            logging_config=ray.train.LoggingConfig(log_level="INFO" if config.verbose else "ERROR"),
        ),
    )
    try:
        with console, internals.worker_group_start_timeout(config.placement_timeout):
            result = trainer.fit()
        if result.error:
            raise result.error
    except Exception as e:
        runtime.explain_placement_timeout(e, "training workers", config.placement_timeout,
                                          config.use_gpu)
        raise
    if console.stopped:  # early: say why, or fail if the loss diverged
        reason, message = console.stopped
        if reason == stopping.NON_FINITE:
            raise CharlmError(stopping.diverged(message, run_dir))
        print(message, flush=True)
    best = checkpoint.best_in_run(run_dir)
    print(f"best checkpoint: {best}", flush=True)
    return best
