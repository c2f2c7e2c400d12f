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
import tempfile
import time

import numpy as np
import psutil

from charlm import checkpoint, finetune, progress, runtime, stopping, storage
from charlm.config import TrainConfig
from charlm.errors import CharlmError
from charlm.metrics import (
    HISTORY,  # noqa: F401 (where callers have always found it)
    TensorBoard,
    append_history,
    bits_per_char,
    epoch_line,
    read_history,
)
from charlm.parts import Parts, load_parts, prepare
from charlm.stream import Plan, round_batch, tf_input, worker_stream

# Gradients per all-reduce: the seed model's are 0.4 MB, so one pack per step.
ALL_REDUCE_PACK = 32 << 20


def make_plan(lengths: list[int], config: TrainConfig) -> Plan:
    """The data plan, identical on every worker (unequal step counts hang the
    all-reduce). config.batch_size must already be a multiple of the workers."""
    return Plan(lengths=tuple(lengths), maxlen=config.maxlen, step=config.step,
                batch_size=config.batch_size, num_workers=config.num_workers,
                seed=config.seed, max_steps=config.max_steps)


def train_loop(loop_config: dict) -> None:
    """Runs inside each Ray Train worker."""
    import ray
    import ray.data
    import ray.train

    config = TrainConfig.from_dict(loop_config["config"])
    runtime.quiet_worker(config.verbose)
    import tensorflow as tf

    from charlm.model import averaged, build_model, compile_model, held_out_scorer

    runtime.set_training_threads(loop_config["threads"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    runtime.check_gpu(config.use_gpu, f"training worker {rank}", announce=rank == 0)
    # Weight initialisation (identical on every worker; MWMS also broadcasts
    # the chief's) and dropout's generator, whose state is checkpointed.
    tf.keras.utils.set_random_seed(config.seed)
    # One worker has nothing to all-reduce: skip the collective runtime (its
    # gRPC server, threads and per-step overhead). Several all-reduce their
    # gradients packed into one collective per step, not one per variable.
    strategy = (tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            bytes_per_pack=ALL_REDUCE_PACK)) if ctx.get_world_size() > 1
        else tf.distribute.get_strategy())
    vocab: str = loop_config["vocab"]

    with strategy.scope():
        model = build_model(config, len(vocab))
        compile_model(model, config, total_steps=config.epochs * loop_config["steps"])
    reporter = progress.Reporter(loop_config["mailbox"], config.epochs, loop_config["steps"])
    if loop_config["init_from"] and ray.train.get_checkpoint() is None:
        finetune.load_into(model, loop_config["init_from"])

    start_epoch = 1
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            checkpoint.restore(d, model)
            start_epoch = checkpoint.read_meta(d)["epoch"] + 1
        if rank == 0:
            reporter.line(f"resumed from epoch {start_epoch - 1} ({resumed.path})")

    val_windows = ray.get(loop_config["val_windows"]) if rank == 0 else None
    if rank == 0:
        board = TensorBoard(loop_config["run_dir"])
        stopper = stopping.EarlyStopping(config.patience, [
            r for r in read_history(loop_config["run_dir"]) if r["epoch"] < start_epoch])
    score = held_out_scorer(model)
    plan = make_plan(loop_config["part_lengths"], config)
    steps, per_worker = plan.steps, plan.per_worker
    # This worker's windows from the epoch it starts at, in order: one stream
    # for the rest of the run, `steps` batches per epoch.
    ray.data.DataContext.get_current().enable_progress_bars = config.verbose
    run_data = tf_input(worker_stream(loop_config["parts"], plan, rank, start_epoch,
                                      config.epochs), plan, config.objective)

    started = 0.0

    def epoch_begin(_index: int, _logs: dict) -> None:
        nonlocal started
        started = time.perf_counter()

    def conclude(epoch: int, metrics: dict) -> stopping.Decision:
        """Score (rank 0), agree on stopping, checkpoint and report the epoch."""
        decision = None
        if rank == 0:
            metrics["val_loss"] = score(val_windows)
            metrics["val_bpc"] = bits_per_char(metrics["val_loss"])
            metrics["elapsed_s"] = time.time() - loop_config["job_started"]
            decision = stopper.after_epoch(epoch, metrics["loss"], metrics["val_loss"])
        decision = stopping.agree(decision)  # every worker stops, or none
        diverged = decision.reason == stopping.NON_FINITE  # its weights are no checkpoint
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                meta = {**loop_config["meta"], "epoch": epoch, "metrics": {
                    k: metrics[k] for k in ("loss", "val_loss", "val_bpc")}}
            else:
                meta = {}
            # Every worker writes (variables may need collectives to read);
            # only rank 0's copy is reported.
            if not diverged:
                checkpoint.save(d, model, meta)
            if rank == 0:
                append_history(loop_config["run_dir"], metrics)
                board.write(metrics)
                reporter.line(epoch_line(metrics, config.epochs))
                if config.sample_every and epoch % config.sample_every == 0 and not diverged:
                    reporter.line(_samples(model, vocab, loop_config["seed_ids"], config.maxlen,
                                           epoch))
                if decision.reason:
                    reporter.stopped(decision.reason, decision.message)
                ray.train.report(metrics, checkpoint=None if diverged
                                 else ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}")
            else:
                ray.train.report(metrics, checkpoint=None)
        return decision

    def epoch_end(index: int, logs: dict) -> None:
        epoch = index + 1
        train_s = time.perf_counter() - started
        metrics = {
            "epoch": epoch,
            "loss": float(logs["loss"]),
            "windows_per_s": steps * per_worker * config.num_workers / train_s,
            "epoch_s": train_s,
            "learning_rate": float(tf.keras.backend.get_value(model.optimizer.learning_rate)),
        }
        # Scored, checkpointed and sampled: the averaged weights, if kept.
        with averaged(model):
            decision = conclude(epoch, metrics)
        model.stop_training = decision.reason is not None

    if start_epoch > config.epochs:
        return
    # One fit and one input iterator for the whole run: under
    # MultiWorkerMirroredStrategy the per-device iterator autotunes whatever
    # the options, and destroying one per epoch stalled each epoch (see
    # model.without_autotune).
    model.fit(strategy.distribute_datasets_from_function(run_data),
              initial_epoch=start_epoch - 1, epochs=config.epochs, steps_per_epoch=steps,
              verbose=0, callbacks=[tf.keras.callbacks.LambdaCallback(
                  on_epoch_begin=epoch_begin, on_epoch_end=epoch_end),
                  *([reporter.callback()] if rank == 0 else [])])
    if rank == 0:
        board.close()


def _samples(model, vocab: str, seed_ids: list[int], maxlen: int, epoch: int) -> str:
    """The seed's progress check: 400 characters at each of its temperatures,
    from the corpus's first maxlen characters."""
    from charlm.corpus import decode
    from charlm.sampling import Generator, weights_from_model

    temperatures = (0.2, 0.5, 1.0, 1.2)
    ids, _ = Generator(weights_from_model(model), maxlen)(
        [np.asarray(seed_ids)] * len(temperatures), np.array(temperatures),
        np.arange(len(temperatures)) + 1000 * epoch, 400)
    seed = decode(seed_ids, vocab)
    return "\n".join([f"samples after epoch {epoch}, seed {seed!r}:"] + [
        f"  T={t}: {decode(row, vocab)!r}"
        for t, row in zip(temperatures, ids, strict=True)])


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

    from charlm.backend import TFConfig

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
    # Ray Train retries starting its workers forever, 60 s a try: one try of
    # charlm's deadline instead (Train passes the variable to its controller).
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(config.placement_timeout)
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
        with console:
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
