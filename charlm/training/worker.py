"""One training worker's life, from its start to the run's last epoch: Ray
Train runs `train_loop` on every worker."""

from __future__ import annotations

import tempfile
import time

import numpy as np

from charlm import runtime
from charlm.config import TrainConfig
from charlm.data.stream import make_plan, worker_stream
from charlm.model import checkpoint
from charlm.training import finetune, progress, stopping
from charlm.training.metrics import (
    TensorBoard,
    append_history,
    bits_per_char,
    epoch_line,
    read_history,
)

# Gradients per all-reduce: the seed model's are 0.4 MB, so one pack per step.
ALL_REDUCE_PACK = 32 << 20

def train_loop(loop_config: dict) -> None:
    """Runs inside each Ray Train worker."""
    import ray
    import ray.data
    import ray.train

    config = TrainConfig.from_dict(loop_config["config"])
    runtime.quiet_worker(config.verbose)
    import tensorflow as tf

    from charlm.model.network import averaged, build_model, compile_model, held_out_scorer
    from charlm.training.inputs import tf_input

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
