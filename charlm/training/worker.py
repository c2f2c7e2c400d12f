"""One training worker's life, top to bottom: Ray Train runs `train_loop` on
every worker, each with the same WorkerInputs.

A worker builds the model (the same on every worker, from --seed), starts it
from the run's latest checkpoint or the --init-from weights, and runs one
Keras fit over its own stream of windows for the rest of the run. At every
epoch's end (EpochEnd) rank 0 scores and decides whether to stop, every
worker follows, saves the checkpoint and reports it to Ray Train, and rank 0
records the epoch (Chief: history, TensorBoard, the console's lines).

This module imports TensorFlow, so only workers import it: the driver hands
Ray Train a small entry (charlm.training.trainer) that imports it there.
"""

from __future__ import annotations

import math
import tempfile
import time

import numpy as np
import ray
import ray.data
import ray.train
import tensorflow as tf

from charlm import devices
from charlm.config import TrainConfig
from charlm.data.stream import Plan, make_plan, worker_stream
from charlm.model import checkpoint
from charlm.model.network import averaged, build_model, compile_model, held_out_scorer
from charlm.training import finetune, progress, stopping
from charlm.training.inputs import WorkerInputs, tf_input
from charlm.training.metrics import (
    TensorBoard,
    append_history,
    bits_per_char,
    epoch_line,
    read_history,
)


def train_loop(inputs: WorkerInputs) -> None:
    """In each Ray Train worker, from its start to the run's last epoch."""
    config = inputs.config
    devices.set_threads(devices.training_threads(config.use_gpu, inputs.threads))
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    found = devices.check_gpu(config.use_gpu, f"training worker {rank}")
    plan = make_plan(inputs.part_lengths, config)
    progress.Reporter(inputs.mailbox, config.epochs, plan.steps).line(
        devices.device_line(f"training worker {rank}", found))

    # The model, from --init-from's weights in a new run.
    strategy = make_strategy(ctx.get_world_size(), config.use_gpu)
    model = initial_model(config, len(inputs.vocab), strategy)
    resumed = ray.train.get_checkpoint()
    if inputs.init_from is not None and resumed is None:
        finetune.load_into(model, inputs.init_from)
    compile_model(model, config, total_steps=config.epochs * plan.steps)

    # A resumed run: everything the latest checkpoint holds, and the epoch after it.
    start_epoch = 1
    if resumed is not None:
        with resumed.as_directory() as d:
            checkpoint.restore(d, model)
            start_epoch = checkpoint.read_meta(d)["epoch"] + 1
    if start_epoch > config.epochs:
        return
    chief = Chief(inputs, model, plan, start_epoch, resumed) if rank == 0 else None

    # This worker's windows from that epoch on, in order: one stream and one
    # fit for the rest of the run (under MultiWorkerMirroredStrategy the
    # per-device iterator autotunes whatever its options, and a new one per
    # epoch stalled every epoch's start).
    ray.data.DataContext.get_current().enable_progress_bars = config.verbose
    data = tf_input(worker_stream(inputs.parts, plan, rank, start_epoch, config.epochs), plan,
                    config.objective)
    model.fit(strategy.distribute_datasets_from_function(data), initial_epoch=start_epoch - 1,
              epochs=config.epochs, steps_per_epoch=plan.steps, verbose=0,
              callbacks=[EpochEnd(inputs, plan, chief), *(chief.callbacks() if chief else [])])
    if chief is not None:
        chief.close()


def initial_model(config: TrainConfig, vocab_size: int,
                  strategy: tf.distribute.Strategy) -> tf.keras.Model:
    """The model a worker starts from, under `strategy`: initialised from
    --seed, the same on every worker, as is dropout's generator."""
    tf.keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        return build_model(config, vocab_size)


def make_strategy(workers: int, use_gpu: bool) -> tf.distribute.Strategy:
    """One worker has nothing to all-reduce: it skips the collective runtime
    (its gRPC server, threads and per-step overhead). Several all-reduce
    their gradients as the device wants it (devices.communication_options)."""
    if workers == 1:
        return tf.distribute.get_strategy()
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=devices.communication_options(use_gpu))


class EpochEnd(tf.keras.callbacks.Callback):
    """Every worker's end of an epoch: rank 0 scores it and decides whether to
    stop, every worker follows and saves its checkpoint, rank 0 records the
    epoch, and every worker reports to Ray Train, which keeps rank 0's
    checkpoint and metrics."""

    def __init__(self, inputs: WorkerInputs, plan: Plan, chief: Chief | None):
        super().__init__()
        self.inputs, self.plan, self.chief = inputs, plan, chief
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, index: int, logs: dict | None = None) -> None:
        epoch, seconds = index + 1, time.perf_counter() - self.started
        optimizer, value = self.model.optimizer, tf.keras.backend.get_value
        metrics = {
            "epoch": epoch,
            "step": int(value(optimizer.iterations)),  # over the whole run
            "loss": float(logs["loss"]),
            "windows_per_s": self.plan.steps * self.plan.batch_size / seconds,
            "epoch_s": seconds,
            "learning_rate": float(value(optimizer.learning_rate)),
        }
        # Every worker stops, or none: one that trained on alone would wait
        # forever in its next all-reduce.
        decision = stopping.agree(self.chief.judge(metrics) if self.chief else None)
        kept = decision.reason != stopping.NON_FINITE  # diverged weights are no checkpoint
        with tempfile.TemporaryDirectory() as d:
            if kept:  # every worker writes: reading a variable may take a collective
                checkpoint.save(d, self.model, {**self.inputs.meta, "epoch": epoch, "metrics": {
                    k: metrics.get(k) for k in ("loss", "val_loss", "val_bpc")}})
            if self.chief:
                self.chief.record(metrics, decision)
            ray.train.report(ray_metrics(metrics), checkpoint=(
                ray.train.Checkpoint.from_directory(d) if kept and self.chief else None),
                checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}")
        self.model.stop_training = decision.reason is not None


def ray_metrics(metrics: dict) -> dict:
    """An epoch's metrics as Ray Train (and Tune) rank them: a val_loss that
    is not finite becomes infinity, the worst, never a best."""
    val_loss = metrics.get("val_loss")
    if val_loss is None or math.isfinite(val_loss):
        return metrics
    return {**metrics, "val_loss": math.inf}


class Chief:
    """Rank 0's duties: held-out scoring and the stopping decision, the
    --sample-every samples, and the record of every epoch: history.parquet,
    TensorBoard and the console's lines (progress)."""

    def __init__(self, inputs: WorkerInputs, model: tf.keras.Model, plan: Plan,
                 start_epoch: int, resumed: ray.train.Checkpoint | None):
        self.inputs, self.config, self.model = inputs, inputs.config, model
        self.reporter = progress.Reporter(inputs.mailbox, self.config.epochs, plan.steps)
        if resumed is not None:
            self.reporter.line(f"resumed from epoch {start_epoch - 1} ({resumed.path})")
        self.heldout = ray.get(inputs.heldout)
        self.score = held_out_scorer(model)
        self.stopper = stopping.EarlyStopping(self.config.patience, [
            r for r in read_history(inputs.run_dir) if r["epoch"] < start_epoch])
        self.board = TensorBoard(inputs.run_dir)
        self.samples: str | None = None

    def callbacks(self) -> list[tf.keras.callbacks.Callback]:
        return [self.reporter.callback()]

    def judge(self, metrics: dict) -> stopping.Decision:
        """Scores the epoch with the weights its checkpoint gives generation
        (the average, if kept), and decides whether the run goes on."""
        epoch = metrics["epoch"]
        with averaged(self.model):
            metrics["val_loss"] = self.score(self.heldout)
            decision = self.stopper.after_epoch(epoch, metrics["loss"], metrics["val_loss"])
            every = self.config.sample_every
            due = every and epoch % every == 0 and decision.reason != stopping.NON_FINITE
            self.samples = (_samples(self.model, self.inputs.vocab, self.inputs.seed_ids,
                                     self.config.maxlen, epoch) if due else None)
        metrics["val_bpc"] = bits_per_char(metrics["val_loss"])
        metrics["elapsed_s"] = time.time() - self.inputs.job_started
        return decision

    def record(self, metrics: dict, decision: stopping.Decision) -> None:
        append_history(self.inputs.run_dir, metrics)
        self.board.write(metrics)
        self.reporter.line(epoch_line(metrics, self.config.epochs))
        if self.samples:
            self.reporter.line(self.samples)
        if decision.reason:
            self.reporter.stopped(decision.reason, decision.message)

    def close(self) -> None:
        self.board.close()


def _samples(model: tf.keras.Model, vocab: str, seed_ids: list[int], maxlen: int,
             epoch: int) -> str:
    """The seed's progress check: 400 characters at each of its temperatures,
    from the corpus's first maxlen characters."""
    from charlm.data.corpus import decode
    from charlm.model.generator import Generator, weights_from_model

    temperatures = (0.2, 0.5, 1.0, 1.2)
    ids, _ = Generator(weights_from_model(model), maxlen)(
        [np.asarray(seed_ids)] * len(temperatures), np.array(temperatures),
        np.arange(len(temperatures)) + 1000 * epoch, 400)
    seed = decode(seed_ids, vocab)
    return "\n".join([f"samples after epoch {epoch}, seed {seed!r}:"] + [
        f"  T={t}: {decode(row, vocab)!r}"
        for t, row in zip(temperatures, ids, strict=True)])
