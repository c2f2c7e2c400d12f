"""Data-parallel training: Ray Train runs `train_loop` on every worker, under
MultiWorkerMirroredStrategy (when there are several), each worker reading its
own shard of the windows.

Flow: corpus → windows (one Ray Data stream per run) → shards → one Keras fit
for the run → at each epoch's end, a checkpoint + metrics reported to Ray Train.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
import time

import numpy as np
import psutil

from charlm import checkpoint, runtime, storage
from charlm.config import TrainConfig
from charlm.errors import CharlmError
from charlm.parts import Parts, load_parts, prepare
from charlm.windows import training_stream, window_count

HISTORY = "history.parquet"
# Gradients per all-reduce: the seed model's are 0.4 MB, so one pack per step.
ALL_REDUCE_PACK = 32 << 20


def steps_per_epoch(n_windows: int, config: TrainConfig) -> int:
    """Identical on every worker: unequal step counts hang the all-reduce."""
    per_worker = config.batch_size // config.num_workers
    steps = (n_windows // config.num_workers) // per_worker
    return min(steps, config.max_steps) if config.max_steps else steps


def train_loop(loop_config: dict) -> None:
    """Runs inside each Ray Train worker."""
    import ray
    import ray.train

    config = TrainConfig.from_dict(loop_config["config"])
    runtime.quiet_worker(config.verbose)
    import tensorflow as tf

    from charlm.model import build_model, compile_model, held_out_scorer, split_xy, without_autotune

    runtime.set_training_threads(loop_config["threads"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
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

    start_epoch = 1
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            checkpoint.restore(d, model)
            start_epoch = checkpoint.read_meta(d)["epoch"] + 1
        if rank == 0:
            _emit(f"resumed from epoch {start_epoch - 1} ({resumed.path})")

    val_windows = ray.get(loop_config["val_windows"]) if rank == 0 else None
    score = held_out_scorer(model)
    steps = loop_config["steps"]
    per_worker = config.batch_size // config.num_workers
    shard = ray.train.get_dataset_shard("train")
    spec = tf.TensorSpec(shape=(per_worker, config.maxlen + 1), dtype=tf.int32)

    def batches():
        # One stream for the whole run: each epoch takes its `steps` batches.
        stream = shard.iter_batches(batch_size=per_worker, drop_last=True,
                                    batch_format="numpy", prefetch_batches=2)
        for batch in itertools.islice(stream, steps * (config.epochs - start_epoch + 1)):
            yield batch["window"].astype(np.int32)

    def run_data(_input_context):
        # Batches are per worker already: datasets from a function are not
        # rebatched by the strategy (a plain dataset would be split W ways).
        return without_autotune(tf.data.Dataset.from_generator(batches, output_signature=spec)
                                .map(lambda w: split_xy(w, config.objective))
                                .prefetch(2))

    started = 0.0

    def epoch_begin(_index: int, _logs: dict) -> None:
        nonlocal started
        started = time.perf_counter()

    def epoch_end(index: int, logs: dict) -> None:
        epoch = index + 1
        train_s = time.perf_counter() - started
        metrics = {
            "epoch": epoch,
            "loss": float(logs["loss"]),
            "windows_per_s": steps * per_worker * config.num_workers / train_s,
            "epoch_s": train_s,
        }
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                metrics["val_loss"] = score(val_windows)
                metrics["elapsed_s"] = time.time() - loop_config["job_started"]
                meta = {**loop_config["meta"], "epoch": epoch,
                        "metrics": {"loss": metrics["loss"], "val_loss": metrics["val_loss"]}}
            else:
                meta = {}
            # Every worker writes (variables may need collectives to read);
            # only rank 0's copy is reported.
            checkpoint.save(d, model, meta)
            if rank == 0:
                _append_history(loop_config["run_dir"], metrics)
                _emit(_epoch_line(metrics, config.epochs))
                if config.sample_every and epoch % config.sample_every == 0:
                    _emit(_samples(model, vocab, loop_config["seed_ids"], config.maxlen, epoch))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}")
            else:
                ray.train.report(metrics, checkpoint=None)

    if start_epoch > config.epochs:
        return
    # One fit and one input iterator for the whole run: under
    # MultiWorkerMirroredStrategy the per-device iterator autotunes whatever
    # the options, and destroying one per epoch stalled each epoch (see
    # model.without_autotune).
    model.fit(strategy.distribute_datasets_from_function(run_data),
              initial_epoch=start_epoch - 1, epochs=config.epochs, steps_per_epoch=steps,
              verbose=0, callbacks=[tf.keras.callbacks.LambdaCallback(
                  on_epoch_begin=epoch_begin, on_epoch_end=epoch_end)])


def _emit(line: str) -> None:
    """Straight to stdout: Ray Train routes print() through a logger, which
    either duplicates the line or hides it with Train's own logs."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _samples(model, vocab: str, seed_ids: list[int], maxlen: int, epoch: int) -> str:
    """The seed's progress check: 400 characters at each of its temperatures,
    from the corpus's first maxlen characters."""
    from charlm.sampling import Generator, weights_from_model

    temperatures = (0.2, 0.5, 1.0, 1.2)
    ids, _ = Generator(weights_from_model(model), maxlen)(
        [np.asarray(seed_ids)] * len(temperatures), np.array(temperatures),
        np.arange(len(temperatures)) + 1000 * epoch, 400)
    seed = "".join(vocab[i] for i in seed_ids)
    return "\n".join([f"samples after epoch {epoch}, seed {seed!r}:"] + [
        f"  T={t}: {''.join(vocab[i] for i in row)!r}"
        for t, row in zip(temperatures, ids, strict=True)])


def _epoch_line(m: dict, epochs: int) -> str:
    return (f"epoch {m['epoch']}/{epochs}  loss {m['loss']:.4f}  val_loss {m['val_loss']:.4f}  "
            f"{m['windows_per_s']:,.0f} windows/s  {m['elapsed_s']:.0f}s")


def _append_history(run_dir: str, metrics: dict) -> None:
    """Per-epoch history beside the checkpoints, rewritten whole (it is tiny)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = storage.resolve(storage.join(run_dir, HISTORY))
    row = {k: metrics[k] for k in ("epoch", "loss", "val_loss", "windows_per_s", "elapsed_s")}
    rows = []
    if storage.exists(storage.join(run_dir, HISTORY)):
        rows = [r for r in pq.read_table(path, filesystem=fs).to_pylist()
                if r["epoch"] < row["epoch"]]
    pq.write_table(pa.Table.from_pylist(rows + [row]), path, filesystem=fs)


def run_name(config: TrainConfig, corpus: Parts) -> str:
    return config.name or f"{os.path.basename(corpus.name.rstrip('/')) or 'corpus'}-lstm"


def _steps(corpus: Parts, config: TrainConfig) -> tuple[int, int]:
    """(training windows, steps per epoch), or a one-line error if no full batch."""
    n_windows = sum(window_count(n, config.maxlen, config.step) for n in corpus.train_lengths)
    steps = steps_per_epoch(n_windows, config)
    if steps < 1:
        raise CharlmError(
            f"{n_windows} training windows make no full batch of {config.batch_size} "
            f"across {config.num_workers} worker(s); lower --batch-size or use a longer corpus")
    return n_windows, steps


def train(config: TrainConfig) -> str:
    """Train (or resume) a run; returns the URI of its best checkpoint."""
    import ray
    import ray.train
    from ray.train.tensorflow import TensorflowTrainer

    job_started = psutil.Process().create_time()  # whole job: imports and Ray start-up too
    config.validate()
    corpus_args = dict(maxlen=config.maxlen, step=config.step, val_frac=config.val_frac,
                       byte_level=config.vocab == "bytes", keep_case=config.keep_case,
                       keep_newlines=config.keep_newlines)
    # Bad input fails here, before Ray starts: a small corpus is read and
    # split, a large one's files are listed.
    source = prepare(config.corpus, **corpus_args)
    if isinstance(source, Parts):
        _steps(source, config)
    storage_path = storage.normalize(config.storage_path)
    storage.check_writable(storage_path, "--storage-path")

    cpus = config.cpus_per_worker or (
        1 if runtime.on_cluster() else max(1, (os.cpu_count() or 1) // config.num_workers))
    runtime.init_ray(config.verbose, cpus_needed=cpus * config.num_workers)
    if config.use_gpu:
        runtime.require_gpus(config.num_workers)
    # The corpus as parts in Ray's store (charlm.parts): read by Ray Data when
    # large, never whole in this process.
    corpus = load_parts(source, **corpus_args)
    n_windows, steps = _steps(corpus, config)
    name = run_name(config, corpus)
    run_dir = storage.join(storage_path, name)
    print(f"corpus {corpus.name}: {corpus.chars:,} characters in {corpus.files:,} file(s), "
          f"vocabulary {len(corpus.vocab)}, {n_windows:,} training windows; "
          f"{config.num_workers} worker(s) × {steps} steps per epoch; run {run_dir}", flush=True)

    meta = {"format": 1, "run": name, "vocab": corpus.vocab, "config": config.to_dict(),
            "corpus": corpus.info()}
    loop_config = {
        "config": config.to_dict(), "vocab": corpus.vocab, "meta": meta, "steps": steps,
        "threads": cpus, "run_dir": run_dir, "job_started": job_started,
        "seed_ids": corpus.seed_ids,
        "val_windows": corpus.heldout_windows,  # at most parts.HELDOUT_CAP windows
    }
    trainer = TensorflowTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu,
            resources_per_worker={"CPU": cpus, **({"GPU": 1} if config.use_gpu else {})}),
        datasets={"train": training_stream(corpus.train, config.maxlen, config.step,
                                           config.epochs, config.seed, corpus.train_lengths)},
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            worker_runtime_env=runtime.runtime_env(config.verbose),
            logging_config=ray.train.LoggingConfig(log_level="INFO" if config.verbose else "ERROR"),
        ),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    best = checkpoint.best_in_run(run_dir)
    print(f"best checkpoint: {best}", flush=True)
    return best
