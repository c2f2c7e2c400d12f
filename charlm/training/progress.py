"""Rank 0's lines and in-epoch progress, shown by the driver.

Rank 0 runs in a Ray worker whose stdout Ray forwards with a
`(RayTrainWorker pid=…)` prefix, and which cannot tell whether the user
watches a terminal. So it prints nothing itself: it posts lines and progress
to a small mailbox actor, and a driver thread shows them: a progress bar with
an ETA per epoch above which lines scroll when the driver's stdout is a
terminal, the plain lines alone otherwise (logs, `ray job logs`)."""

from __future__ import annotations

import sys
import threading
import time
from typing import IO

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from charlm import internals

POLL_S = 0.2  # driver: how often it collects what rank 0 posted
PROGRESS_S = 0.5  # rank 0: at most one progress update per this many seconds


class _Mailbox:
    """Items in posting order (Ray runs one caller's actor calls in order)."""

    def __init__(self):
        self.items: list[tuple] = []

    def put(self, item: tuple) -> None:
        self.items.append(item)

    def take(self) -> list[tuple]:
        items, self.items = self.items, []
        return items


class Console:
    """Driver side: `with Console() as console:` around the training; pass
    `console.mailbox` to rank 0's Reporter."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout
        # On the driver's own node: the mailbox lives as long as the job, not
        # as long as whichever worker node Ray would otherwise place it on
        # (losing that node would fail the restarted workers' first line).
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.mailbox = ray.remote(num_cpus=0, scheduling_strategy=here)(_Mailbox).remote()
        self.bar = None
        self.task = None
        self.stopped: tuple[str, str] | None = None  # rank 0's (reason, message), if it stopped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="charlm-progress", daemon=True)

    def __enter__(self) -> Console:
        if self.stream.isatty():
            from rich.console import Console as RichConsole
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("steps"), TimeElapsedColumn(),
                                TextColumn("ETA"), TimeRemainingColumn(),
                                console=RichConsole(file=self.stream, highlight=False),
                                transient=True)
            self.bar.start()
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()  # what rank 0 posted last
        if self.bar is not None:
            self.bar.stop()
        try:
            ray.kill(self.mailbox)
        except ray.exceptions.RayError:
            pass

    def _run(self) -> None:
        while not self._stop.wait(POLL_S) and self._poll():
            pass

    def _poll(self) -> bool:
        try:
            self._show(ray.get(self.mailbox.take.remote()))
        except ray.exceptions.RayError:
            return False  # Ray is shutting down: the training's own error tells why
        return True

    def _show(self, items: list[tuple]) -> None:
        for kind, *args in items:
            if kind == "line":
                self.line(args[0])
            elif kind == "stopped":
                self.stopped = tuple(args)
            elif kind == "progress" and self.bar is not None:
                epoch, epochs, done, steps = args
                description = f"epoch {epoch}/{epochs}"
                if self.task is None:
                    self.task = self.bar.add_task(description, total=steps)
                elif self.bar.tasks[0].description != description:
                    self.bar.reset(self.task, total=steps, description=description)
                self.bar.update(self.task, completed=done)

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()


class Reporter:
    """Rank 0's side. Lines wait until the mailbox holds them (none is lost
    when the worker exits); progress updates are throttled and not awaited."""

    def __init__(self, mailbox, epochs: int, steps: int):
        self.mailbox, self.epochs, self.steps = mailbox, epochs, steps
        self.last = 0.0

    def line(self, text: str) -> None:
        ray.get(self.mailbox.put.remote(("line", text)))

    def stopped(self, reason: str, message: str) -> None:
        """The run stops early: the driver says why (a line) or fails (an error)."""
        ray.get(self.mailbox.put.remote(("stopped", reason, message)))

    def progress(self, epoch: int, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_S or done == self.steps:
            self.last = now
            self.mailbox.put.remote(("progress", epoch, self.epochs, done, self.steps))

    def callback(self):
        """A Keras callback posting progress after each call into TensorFlow.
        It takes the logs as tensors, so Keras does not copy them to Python
        (a sync) after every step."""
        import tensorflow as tf

        reporter = self

        class _Progress(tf.keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch + 1
                reporter.progress(self.epoch, 0)

            def on_train_batch_end(self, batch, logs=None):
                reporter.progress(self.epoch, batch + 1)

        callback = _Progress()
        internals.takes_tensor_logs(callback)
        return callback
