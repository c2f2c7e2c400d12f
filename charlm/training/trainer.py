"""The driver of data-parallel training: everything checked that can be
checked before Ray starts, the corpus put in Ray's store, then Ray Train runs
charlm.training.worker on every worker (under MultiWorkerMirroredStrategy when
there are several), each reading its own shard of the windows.

Flow: corpus → windows (one Ray Data stream per worker, charlm.data.stream) →
one Keras fit for the run → at each epoch's end, a checkpoint and metrics
reported to Ray Train, which keeps the --keep-checkpoints best by val_loss and
the latest. --seed seeds the data order, weight initialisation and dropout.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import posixpath
import signal
import socket
import threading
from collections.abc import Sequence

import psutil

from charlm import internals, runtime, storage
from charlm.config import TrainConfig
from charlm.data.parts import Parts, load_parts, prepare
from charlm.data.stream import Plan, make_plan, round_batch
from charlm.errors import CharlmError
from charlm.model import checkpoint
from charlm.training import finetune, progress, stopping
from charlm.training.inputs import WorkerInputs

SCORE = "val_loss"  # what Ray Train ranks a run's checkpoints by, the lowest best


def run_name(config: TrainConfig, corpus_name: str) -> str:
    return config.name or f"{os.path.basename(corpus_name.rstrip('/')) or 'corpus'}-lstm"


def train(config: TrainConfig, callbacks: Sequence = ()) -> str:
    """Train (or resume) a run; returns the URI of its best checkpoint.
    `callbacks`: Ray Train UserCallbacks (such as Tune's TuneReportCallback),
    told of every epoch's report."""
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
    # split (a large one's files listed), the storage path written to, the
    # run checked against its checkpoints, --init-from's source read.
    prepared = prepare(config.corpus, **corpus_args)
    if isinstance(prepared, Parts):
        _plan(prepared, config)
    storage_path = storage.normalize(config.storage_path)
    storage.check_writable(storage_path, "--storage-path")
    name = run_name(config, prepared.name if isinstance(prepared, Parts) else prepared)
    run_dir = storage.join(storage_path, name)
    previous = _resumable(run_dir, config)
    init_from = finetune.check(config.init_from, config) if config.init_from else None

    cpus = config.cpus_per_worker or runtime.default_cpus(config.num_workers)
    runtime.init_ray(config.verbose, cpus_needed=cpus * config.num_workers)
    runtime.require_shared(storage_path, "--storage-path", config.shared_filesystem)
    if config.use_gpu:
        runtime.require_gpus(config.num_workers)
    # The corpus as parts in Ray's store (charlm.data.parts): read by Ray Data
    # when large, never whole in this process. Its vocabulary is known now.
    corpus = load_parts(prepared, placement_timeout=config.placement_timeout, **corpus_args)
    plan = _plan(corpus, config)
    if previous is not None:
        _same_vocabulary(previous, corpus.vocab, run_dir)
        if previous["epoch"] >= config.epochs:
            print(f"run {run_dir} is at epoch {previous['epoch']} of --epochs {config.epochs}: "
                  "nothing to train (raise --epochs to train it further)", flush=True)
    if init_from is not None:
        init_from = init_from.mapped(corpus.vocab)
    print(f"corpus {corpus.name}: {corpus.chars:,} characters in {corpus.files:,} file(s), "
          f"vocabulary {len(corpus.vocab)}, {plan.total:,} training windows; "
          f"{config.num_workers} worker(s) × {plan.steps} steps per epoch; run {run_dir}",
          flush=True)

    console = progress.Console()
    inputs = WorkerInputs(
        config=config, vocab=corpus.vocab, run_dir=run_dir,
        meta={"format": checkpoint.FORMAT, "run": name, "vocab": corpus.vocab,
              "config": config.to_dict(), "corpus": corpus.info(),
              **({"init_from": init_from.to_dict()} if init_from else {})},
        parts=corpus.train, part_lengths=corpus.train_lengths, heldout=corpus.heldout_windows,
        seed_ids=corpus.seed_ids, init_from=init_from, mailbox=console.mailbox, threads=cpus,
        job_started=job_started)
    # TensorflowTrainer, but without importing TensorFlow here and in Ray
    # Train's controller (charlm.training.backend).
    trainer = DataParallelTrainer(
        functools.partial(_worker, inputs),
        backend_config=TFConfig(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu,
            resources_per_worker={"CPU": cpus, **({"GPU": 1} if config.use_gpu else {})},
            placement_strategy=config.placement_strategy),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.keep_checkpoints or None,
                checkpoint_score_attribute=SCORE, checkpoint_score_order="min"),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures,
                                                   controller_failure_limit=0),
            worker_runtime_env=runtime.runtime_env(config.verbose),
            logging_config=ray.train.LoggingConfig(log_level="INFO" if config.verbose else "ERROR"),
            callbacks=list(callbacks),
        ),
    )
    existed = storage.exists(run_dir)
    try:
        with console, internals.worker_group_start_timeout(config.placement_timeout):
            result = _fit(trainer)
        if result.error:
            raise result.error
    except KeyboardInterrupt:  # after the console's last line
        print(f"run {run_dir} stopped at its latest checkpoint; rerun the same command to "
              "resume it", flush=True)
        raise
    except Exception as e:
        try:
            runtime.explain_placement_timeout(e, "training workers", config.placement_timeout,
                                              config.use_gpu)
        except CharlmError:
            if not existed:  # Ray Train's storage marker is all a never-placed run wrote
                fs, path = storage.resolve(run_dir)
                fs.delete_dir(path)
            raise
        raise

    best = best_checkpoint(result, run_dir)
    if console.stopped:  # early: say why, or fail if the loss diverged
        reason, message = console.stopped
        if reason == stopping.NON_FINITE:
            raise CharlmError(stopping.diverged(message, best))
        print(message, flush=True)
    if best is None:
        raise CharlmError(f"no checkpoint of run {run_dir} has a finite val_loss; the run "
                          "diverged: train again with a lower --learning-rate or --clipnorm")
    print(f"best checkpoint: {best}", flush=True)
    return best


def _fit(trainer):
    """trainer.fit(), where Ctrl-C ends as KeyboardInterrupt (so the job says
    "interrupted" and exits 130) once the run has stopped. In the main thread
    Ray Train's own SIGINT handler aborts the run gracefully, then leaves
    fit() through a SystemExit (or a result); the signal is seen on a wakeup
    fd, whatever handler ran. Ray Train's handler, bound to this run, is
    removed after it."""
    if threading.current_thread() is not threading.main_thread():
        return trainer.fit()  # no handler of Ray Train's: Ctrl-C reaches the main thread
    seen, wakeup = socket.socketpair()
    seen.setblocking(False)
    wakeup.setblocking(False)
    handler = signal.getsignal(signal.SIGINT)
    previous_fd = signal.set_wakeup_fd(wakeup.fileno(), warn_on_full_buffer=False)
    try:
        result = trainer.fit()
        interrupted = _received(seen, signal.SIGINT)
    except SystemExit:
        interrupted = _received(seen, signal.SIGINT)
        if not interrupted:
            raise
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, handler)
        seen.close()
        wakeup.close()
    if interrupted:
        raise KeyboardInterrupt
    return result


def _received(fd: socket.socket, signum: int) -> bool:
    """Whether the wakeup fd recorded `signum` (one byte per signal)."""
    try:
        return signum in fd.recv(4096)
    except BlockingIOError:  # nothing arrived
        return False


def _worker(inputs: WorkerInputs) -> None:
    """What Ray Train runs on every worker: logs quieted before TensorFlow is
    imported, then the worker's life (charlm.training.worker, imported there
    and never in this driver)."""
    runtime.quiet_worker(inputs.config.verbose)
    from charlm.training.worker import train_loop

    train_loop(inputs)


def _plan(corpus: Parts, config: TrainConfig) -> Plan:
    """The data plan, or a one-line error if the corpus makes no full batch."""
    plan = make_plan(corpus.train_lengths, config)
    if plan.steps < 1:
        raise CharlmError(
            f"{plan.total} training windows make no full batch of {config.batch_size} "
            f"across {config.num_workers} worker(s); lower --batch-size or use a longer corpus")
    return plan


def _resumable(run_dir: str, config: TrainConfig) -> dict | None:
    """The metadata of the latest checkpoint of the run this job resumes (None
    for a new run). Fails, with the run untouched, where this job's flags
    would give the model other variables than its checkpoints hold."""
    kept = checkpoint.in_run(run_dir)
    if not kept:
        return None
    meta = checkpoint.read_meta(kept[-1])
    if meta.get("format") != checkpoint.FORMAT:
        raise CharlmError(f"run {run_dir} holds checkpoints of another format "
                          f"({meta.get('format')}, this charlm writes {checkpoint.FORMAT}); "
                          "pass another --name for a new run")
    saved = TrainConfig.from_dict(meta["config"])
    changed = checkpoint.changed_variables(saved, config)
    if changed:
        old = " ".join(f"{flag} {value}" for flag, value, _ in changed)
        new = " ".join(f"{flag} {value}" for flag, _, value in changed)
        start_from = ("" if {"--units", "--layers"} & {flag for flag, _, _ in changed}
                      else f" (with --init-from {run_dir} to start from its weights)")
        raise CharlmError(f"run {run_dir} was trained with {old} and this job asks for {new}: "
                          "its checkpoints cannot resume under other such flags; rerun with "
                          f"the run's values, or pass another --name for a new run{start_from}")
    return meta


def _same_vocabulary(previous: dict, vocab: str, run_dir: str) -> None:
    """A resumed run's corpus must give the vocabulary its checkpoints were trained on."""
    if previous["vocab"] != vocab:
        raise CharlmError(
            f"run {run_dir} was trained on a vocabulary of {len(previous['vocab'])} characters "
            f"and this corpus gives another of {len(vocab)} (--corpus, --vocab, --keep-case or "
            "--keep-newlines differ), which its checkpoints cannot resume on; pass another "
            f"--name for a new run (with --init-from {run_dir} to start from its weights)")


def best_checkpoint(result, run_dir: str) -> str | None:
    """The URI of the best checkpoint of a Ray Train result, among those it
    kept: the lowest val_loss, never one that is not finite (None if none is)."""
    finite = [(metrics[SCORE], kept) for kept, metrics in result.best_checkpoints or []
              if math.isfinite(metrics.get(SCORE, math.inf))]
    if not finite:
        return None
    best = min(finite, key=lambda scored: scored[0])[1]
    return storage.join(run_dir, posixpath.basename(best.path.rstrip("/")))
