"""A sweep: one charlm training run per trial of a Ray Tune search, all
under one directory:

    <storage_path>/<name>/
      sweep.json      what the sweep searches; a rerun must match it to resume
      trials.parquet  one row per trial (charlm.tuning.table), rewritten as trials start and end
      trials.png      val_loss against step, one line per trial
      <trial id>/     each trial's run: checkpoints, history.parquet, tensorboard/
      tune/           Ray Tune's experiment state, which a rerun of the same --name resumes

A trial is a Tune function that runs charlm's training driver
(charlm.training.trainer.train) and reports each epoch to Tune as the run
reports it to Ray Train, so that Tune's scheduler (ASHA on val_loss per
epoch, or FIFO) may stop the trial. The driver takes no CPU: `--max-concurrent` and
the cluster's resources bound the trials, each waiting for its workers
within --placement-timeout. Tune places a trial in a placement group and
puts the tasks it starts there too, which training's own Ray tasks (the
corpus's parts, Ray Data) do not fit: so the trial runs the driver in an
actor of its own outside that group (TrialDriver).

A trial's run is named after its Tune trial id, stable across a resume, so
a resumed trial continues from its own latest checkpoint; so is its driver,
so that the run resumes only once the earlier session's driver has stopped it.
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd
import ray
import ray.train
from ray import tune

from charlm import runtime, storage
from charlm.config import TrainConfig, make_config
from charlm.data.parts import Parts, prepare
from charlm.errors import CharlmError, chain, first_line
from charlm.tuning import table
from charlm.tuning.search import Search, convert, parse_all

SCHEDULERS = ("asha", "fifo")
RECORD = "sweep.json"
TUNE_DIR = "tune"
# Flags that change how a trial runs, not what it computes: a rerun may change them.
OPERATIONAL = {"verbose", "placement_timeout", "placement_strategy", "cpus_per_worker",
               "shared_filesystem", "max_failures", "sample_every"}
SEEDS = 2**31 - 1  # each trial's --seed is drawn below this from the sweep's --seed
# Tune needs some resource in a trial's placement group: one byte of memory
# reserves no CPU, so the trial's driver may run on any node, a 0-CPU head too.
TRIAL_RESOURCES = {"memory": 1}
WATCH_S = 0.5  # how often a trial's driver checks that its trial is still there
ABORT_S = 60.0  # how long it then gives its run to stop before it ends regardless
DRIVERS = "charlm-sweeps"  # the Ray namespace of the trials' drivers, named by trial


@dataclass
class SweepOptions:
    """What jobs.tune's flags say: `overrides` are the jobs.train flags given,
    by TrainConfig field, fixed for every trial."""

    search: list[str] = field(default_factory=list)
    overrides: dict = field(default_factory=dict)
    preset: str | None = None
    name: str | None = None
    storage_path: str = "~/charlm/sweeps"
    seed: int = 0
    num_samples: int = 1
    max_concurrent: int | None = None
    scheduler: str = "asha"
    grace_period: int = 1
    verbose: bool = False


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares; a trial adds its searched values and its name."""

    preset: str | None
    overrides: dict
    sweep_dir: str

    def config(self, params: dict, name: str) -> TrainConfig:
        """The trial's TrainConfig: the preset, the fixed flags, then the
        searched values (`none` clears a flag the preset sets)."""
        values = {**self.overrides, **{k: convert(k, v) for k, v in params.items()}}
        preset = values.pop("preset", self.preset)
        config = make_config(preset, **values, name=name, storage_path=self.sweep_dir)
        cleared = {k: None for k, v in values.items() if v is None}
        if cleared:
            config = dataclasses.replace(config, **cleared)
            config.validate()
        return config


def sweep(o: SweepOptions) -> str:
    """Run (or resume) the sweep; returns its best trial's best checkpoint."""
    runtime.quiet(o.verbose)
    if not o.verbose:  # Tune's TensorBoard logger warns of every non-finite metric
        logging.getLogger("tensorboardX").setLevel(logging.ERROR)
    searches, base = _checked(o)
    overrides = {**o.overrides, **{k: _absolute(o.overrides[k]) for k in ("corpus", "init_from")
                                   if o.overrides.get(k)}}
    corpus = prepare(overrides.get("corpus"), maxlen=base.maxlen, step=base.step,
                     val_frac=base.val_frac, byte_level=base.vocab == "bytes",
                     keep_case=base.keep_case, keep_newlines=base.keep_newlines)
    corpus_name = corpus.name if isinstance(corpus, Parts) else corpus
    name = o.name or f"{os.path.basename(corpus_name.rstrip('/')) or 'corpus'}-sweep"
    storage_path = storage.normalize(o.storage_path)
    storage.check_writable(storage_path, "--storage-path")
    sweep_dir = storage.join(storage_path, name)
    record = {"search": [s.text() for s in searches], "preset": o.preset, "seed": o.seed,
              "num_samples": o.num_samples, "scheduler": o.scheduler,
              "grace_period": o.grace_period,
              "flags": {k: v for k, v in overrides.items() if k not in OPERATIONAL}}
    previous = _read_record(sweep_dir)
    if previous is not None:
        _same_sweep(previous, record, o.max_concurrent, sweep_dir)

    concurrency, cpus = _start_ray(o, base, previous, storage_path)
    setup = TrialSetup(o.preset, {**overrides, "cpus_per_worker": cpus, "verbose": o.verbose},
                       sweep_dir)
    total = o.num_samples * math.prod(len(s.values) for s in searches if s.kind == "grid")
    if previous is None:
        _write_record(sweep_dir, {**record, "max_concurrent": concurrency})

    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                                    TRIAL_RESOURCES)
    tune_dir = storage.join(sweep_dir, TUNE_DIR)
    if previous is not None and tune.Tuner.can_restore(tune_dir):
        ended = sum(r["status"] in table.ENDED for r in table.read_table(sweep_dir))
        print(f"resuming sweep {sweep_dir}: {ended} of {total} trial(s) ended", flush=True)
        tuner = tune.Tuner.restore(tune_dir, trainable, resume_unfinished=True,
                                   resume_errored=False)
    else:
        print(f"sweep {sweep_dir}: {total} trial(s), {concurrency} at a time, "
              f"{_scheduled(o.scheduler, o.grace_period)}; "
              f"searching {', '.join(record['search']) or 'seeds'}",
              flush=True)
        tuner = _new_tuner(trainable, searches, o, concurrency, setup)
    with _tune_console(o.verbose):
        tuner.fit()
    return _conclude(sweep_dir, searches, total)


@contextlib.contextmanager
def _tune_console(verbose: bool) -> Iterator[None]:
    """Tune's console reporter, for the block: its tables with --verbose;
    else none (its legacy reporter, documented by RAY_AIR_NEW_OUTPUT=0, is
    silent at verbose 0), and TrialLog's line per trial instead."""
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT")
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


def _checked(o: SweepOptions) -> tuple[list[Search], TrainConfig]:
    """Every bad input, before anything starts: the sweep's own flags, each
    search, and a trial's config at every searched value (ranges: both ends)."""
    if o.num_samples < 1:
        raise CharlmError(f"--num-samples is {o.num_samples}; sample at least 1 trial "
                          "(grid values each run this many times)")
    if o.max_concurrent is not None and o.max_concurrent < 1:
        raise CharlmError(f"--max-concurrent is {o.max_concurrent}; run at least 1 trial "
                          "at a time, or leave it out")
    if o.scheduler not in SCHEDULERS:
        raise CharlmError(f"--scheduler {o.scheduler!r} is unknown; use asha or fifo")
    if o.grace_period < 1:
        raise CharlmError(f"--grace-period is {o.grace_period}; let every trial run at least "
                          "1 epoch")
    searches = parse_all(o.search)
    for s in searches:
        if s.field in o.overrides or s.field == "preset" and o.preset:
            raise CharlmError(f"{s.flag} is both given and searched (--search "
                              f"{s.text()!r}); drop one")
    setup = TrialSetup(o.preset, o.overrides, "")
    base = setup.config({}, "check")
    for s in searches:
        for value in s.values:
            try:
                setup.config({s.field: value}, "check")
            except CharlmError as e:
                raise CharlmError(f"--search {s.text()!r}: {e}") from None
    horizon = _horizon(searches, setup)
    if o.scheduler == "asha" and o.grace_period > horizon:
        raise CharlmError(f"--grace-period {o.grace_period} is past the trials' {horizon} "
                          "epochs; lower it, or use --scheduler fifo")
    return searches, base


def _horizon(searches: list[Search], setup: TrialSetup) -> int:
    """ASHA's horizon: the longest trial's epochs."""
    return max([setup.config({s.field: v}, "check").epochs
                for s in searches if s.field in ("epochs", "preset") for v in s.values]
               or [setup.config({}, "check").epochs])


def _start_ray(o: SweepOptions, base: TrainConfig, previous: dict | None,
               storage_path: str) -> tuple[int, int]:
    """(trials at a time, CPUs per worker): the sweep's own --max-concurrent
    (a resumed sweep keeps its first), else 1 locally, where the trials
    share the machine's cores, and as many as the cluster holds now on one."""
    concurrency = (previous or {}).get("max_concurrent") or o.max_concurrent or \
        (None if runtime.on_cluster() else 1)
    workers = base.num_workers * (concurrency or 1)
    cpus = base.cpus_per_worker or runtime.default_cpus(workers)
    runtime.init_ray(o.verbose, cpus_needed=cpus * workers)
    runtime.require_shared(storage_path, "--storage-path", base.shared_filesystem)
    if base.use_gpu:
        runtime.require_gpus(base.num_workers)
    if concurrency is None:
        have = ray.cluster_resources()
        need = {"GPU": base.num_workers} if base.use_gpu else {"CPU": base.num_workers * cpus}
        concurrency = max(1, min(int(have.get(k, 0) // v) for k, v in need.items()))
    return concurrency, cpus


def _absolute(spec: str) -> str:
    """Local paths made absolute (trials run elsewhere); names and URIs kept."""
    if spec in ("nietzsche", "python-docs") or spec.startswith(("http://", "https://")):
        return spec
    return storage.normalize(spec)


def _read_record(sweep_dir: str) -> dict | None:
    uri = storage.join(sweep_dir, RECORD)
    if not storage.exists(uri):
        return None
    fs, path = storage.resolve(uri)
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode("utf-8"))


def _write_record(sweep_dir: str, record: dict) -> None:
    fs, path = storage.resolve(storage.join(sweep_dir, RECORD))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(record, indent=1).encode("utf-8"))


def _same_sweep(previous: dict, record: dict, max_concurrent: int | None,
                sweep_dir: str) -> None:
    """A rerun resumes the sweep it names only with the settings it started with."""
    record = json.loads(json.dumps(record))  # as the saved one was read back
    differ = [f"--{key.replace('_', '-')}" for key in ("search", "preset", "seed",
                                                       "num_samples", "scheduler",
                                                       "grace_period")
              if previous.get(key) != record[key]]
    flags = previous.get("flags", {})
    differ += [f"--{k.replace('_', '-')}" for k in sorted(set(flags) | set(record["flags"]))
               if flags.get(k) != record["flags"].get(k)]
    if max_concurrent is not None and max_concurrent != previous.get("max_concurrent"):
        differ.append("--max-concurrent")
    if differ:
        raise CharlmError(f"sweep {sweep_dir} was started with other settings ({', '.join(differ)} "
                          "differ); rerun it with the flags it started with to resume it, or "
                          "pass another --name for a new sweep")


def _scheduled(scheduler: str, grace_period: int) -> str:
    return (f"ASHA stopping trials early on val_loss after {grace_period} epoch(s)"
            if scheduler == "asha" else "each trial run to its end (FIFO)")


def _new_tuner(trainable, searches: list[Search], o: SweepOptions, concurrency: int,
               setup: TrialSetup) -> tune.Tuner:
    from ray.tune.search import BasicVariantGenerator

    space = {s.field: s.space() for s in searches}
    if "seed" not in space:
        space["seed"] = tune.randint(0, SEEDS)
    scheduler = (tune.schedulers.ASHAScheduler(time_attr="epoch", metric="val_loss", mode="min",
                                               max_t=_horizon(searches, setup),
                                               grace_period=o.grace_period,
                                               stop_last_trials=False)
                 if o.scheduler == "asha" else tune.schedulers.FIFOScheduler())
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=o.num_samples, scheduler=scheduler,
            # Reproducible from the sweep's --seed: the values and each trial's seed.
            search_alg=BasicVariantGenerator(max_concurrent=concurrency, random_state=o.seed),
            trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=setup.sweep_dir, verbose=2 if o.verbose else 0,
            callbacks=[TrialLog(setup, [s.field for s in searches])]))


def _trial_dirname(trial) -> str:
    return trial.trial_id


# -- one trial -----------------------------------------------------------------

def run_trial(params: dict, setup: TrialSetup) -> None:
    """Tune's function: the trial's run, trained to its end or until Tune
    stops it. Each epoch's report reaches Tune as the run makes it; a failed
    run reports its one line (`failed`), so that the sweep records it and
    goes on (TrialReports)."""
    from ray.util.queue import Empty, Queue

    trial_id = tune.get_context().get_trial_id()
    config = setup.config(params, trial_id)
    reports = Queue(actor_options={"num_cpus": 0})
    driver = _start_driver(f"{setup.sweep_dir} {trial_id}", reports)
    done = driver.run.remote(config)
    out = TrialReports(tune.report)
    try:
        while True:
            try:
                out.epoch(reports.get(timeout=0.5))
            except Empty:
                if ray.wait([done], timeout=0)[0]:
                    break
        while not reports.empty():  # the last epochs, put before the run returned
            out.epoch(reports.get(block=False))
    except BaseException:  # Tune stopped the trial: its driver stops the run now
        reports.shutdown(force=True)
        raise
    try:
        ray.get(done)
        failed = None
    except Exception as e:  # any failure of the run: the trial's outcome, not the sweep's
        failed = failure_line(e)
    finally:
        ray.kill(driver)
    out.end(failed)


class TrialReports:
    """What a trial reports to Tune, in order: each epoch's report as its
    run makes it, then, if the run failed, its one line (`failed`).

    An epoch whose training loss is not finite is a diverged run's last:
    charlm stops the run there and fails it with one line
    (charlm.training.stopping). That epoch's report is held, and reaches
    Tune with the line once the run has failed: reported alone, its
    val_loss (the worst) could have ASHA stop the trial first, and the sweep
    would record it stopped early, without its error, or failed, as the two
    raced."""

    def __init__(self, report):
        self.report, self.held = report, None

    def epoch(self, metrics: dict) -> None:
        loss = metrics.get("loss")
        if loss is not None and not math.isfinite(loss):
            self.held = metrics
        else:
            self.report(metrics)

    def end(self, failed: str | None) -> None:
        """The run's end: `failed` is its line, None if it succeeded."""
        if failed is not None:
            # With the metric Tune requires of every result: a run that
            # failed before its first epoch has none, and the scheduler
            # passes over it.
            self.report({**(self.held or {"val_loss": math.nan}), "failed": failed})
        elif self.held is not None:
            self.report(self.held)


def _start_driver(name: str, reports):
    """The trial's TrialDriver, named after the trial: a resumed trial's run
    starts once the driver of its earlier session's run has stopped that
    run (within ABORT_S of that session's end), never beside it: both would
    write the run's checkpoints."""
    deadline = time.monotonic() + ABORT_S + 30
    while True:
        try:
            return TrialDriver.options(name=name, namespace=DRIVERS, lifetime="detached",
                                       scheduling_strategy="DEFAULT").remote(reports)
        except ValueError:  # the name is taken: that earlier driver is still stopping
            if time.monotonic() > deadline:
                raise CharlmError(
                    f"the trial's run is still training in another session of this sweep "
                    f"(Ray actor {name!r}, namespace {DRIVERS}); stop that session, then "
                    "rerun this one") from None
            time.sleep(0.2)


class Forward(ray.train.UserCallback):
    """Rank 0's report of each epoch, from Ray Train's controller to the
    trial's queue. Tune's TuneReportCallback hands reports over the same
    way, but its trial may end before Tune has read the last ones, which
    are then lost: here the trial itself reports every one, in order."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        try:
            self.queue.put(dict(metrics[0]))
        except ray.exceptions.RayActorError:
            pass  # the trial is gone; its driver is stopping the run


@ray.remote(num_cpus=0, max_restarts=0)
class TrialDriver:
    """The trial's training driver, in a process of its own (its elapsed_s
    counts from the trial's start), outside the trial's placement group.

    Tune stops a trial by ending its process, and Ray would end what that
    process owns at once, Ray Train's controller mid-step included, leaving
    its workers' placement group behind. So the driver is detached, owned by
    no trial: once its trial is gone (its queue with it), it interrupts the
    run as Ctrl-C does, Ray Train stops its workers and frees their
    resources, and the driver ends itself (at once if the run never
    started). It is named after its trial (_start_driver)."""

    def __init__(self, reports):
        self.reports, self.finished = reports, threading.Event()
        self.lock = threading.Lock()
        self.started = self.gone = False
        threading.Thread(target=self._watch, daemon=True).start()

    def run(self, config: TrainConfig) -> str:
        with self.lock:
            if self.gone:  # the trial ended before its run could start
                raise CharlmError("the trial was stopped")
            self.started = True
        runtime.quiet(config.verbose)
        from charlm.training.trainer import train

        try:
            return train(config, callbacks=[Forward(self.reports)])
        except (KeyboardInterrupt, SystemExit):  # interrupted by _watch
            raise CharlmError("the trial was stopped") from None
        finally:
            self.finished.set()

    def _watch(self) -> None:
        while self._trial_alive():
            time.sleep(WATCH_S)
        with self.lock:
            self.gone = True
            started = self.started
        if started and not self.finished.is_set():
            _thread.interrupt_main()  # Ray Train's own Ctrl-C handler aborts the run
            self.finished.wait(ABORT_S)
        ray.kill(ray.get_runtime_context().current_actor)

    def _trial_alive(self) -> bool:
        try:
            self.reports.qsize()
            return True
        except ray.exceptions.RayActorError:
            return False


def failure_line(error: BaseException) -> str:
    """charlm's own message where there is one (the innermost: Ray's wrappers
    of it print whole tracebacks), else the innermost error's first line."""
    wrapped = list(chain(error))
    ours = [e for e in wrapped if isinstance(e, CharlmError)]
    return str(ours[-1]) if ours else first_line(wrapped[-1])


# -- the record, as trials start and end ------------------------------------------

class TrialLog(tune.Callback):
    """Prints a line as each trial starts and ends, rewrites the sweep's
    table then, and draws its chart at the end (interrupted or not). Tune
    pickles it with the experiment and restores it on a resume: what one
    session knows is set up afresh in `setup`, from the table the last one
    wrote."""

    def __init__(self, trial_setup: TrialSetup, fields: list[str]):
        self.trial_setup, self.fields = trial_setup, fields

    def setup(self, **info) -> None:
        self.previous = {r["trial"]: r for r in table.read_table(self.trial_setup.sweep_dir)}
        self.rows: dict[str, dict] = {}
        self.started: dict[str, float] = {}
        self.ended: set[str] = set()  # rows that no longer change
        self.restored: set[str] | None = None

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self.restored is None:  # trials a resumed sweep had ended before
            self.restored = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.started[trial.trial_id] = time.time()
        self._say(f"trial {trial.trial_id} started: {self._values(trial)}")
        self._write(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trials, trial, trial.last_result.get("failed"))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trials, trial, _lost(trial))

    def on_experiment_end(self, trials: list, **info) -> None:
        for trial in trials:  # runs stopped by Tune may have written an epoch since
            row = self.rows.get(trial.trial_id)
            if trial.trial_id in self.ended and row and \
                    trial.trial_id not in (self.restored or ()):
                self.rows[trial.trial_id] = {**self._row(trial, True, row["error"]),
                                             "wall_s": row["wall_s"]}
        self._write(trials)
        table.draw(self.trial_setup.sweep_dir, {
            self._label(row): table.history(row["run"])
            for row in (self.rows[tid] for tid in sorted(self.rows))})

    def _end(self, trials: list, trial, failed: str | None) -> None:
        tid = trial.trial_id
        self.rows[tid] = row = self._row(trial, ended=True, failed=failed)
        self.ended.add(tid)
        self._write(trials)
        if failed:
            what = f"failed: {failed}"
        else:
            what = f"{row['status']} at epoch {row['epoch']} (step {row['step']}), " + (
                f"best val_loss {row['best_val_loss']:.4f} at epoch {row['best_epoch']}"
                if row["best_epoch"] else "no finite val_loss")
        self._say(f"trial {tid} {what}; {row['wall_s']:.0f}s")

    def _write(self, trials: list) -> None:
        for trial in trials:
            tid = trial.trial_id
            if tid in self.ended:
                continue
            if tid in (self.restored or ()):
                # Ended in an earlier session: as that one recorded it.
                failed = (trial.last_result.get("failed") if trial.status == "TERMINATED"
                          else _lost(trial))
                self.rows[tid] = self.previous.get(tid) or self._row(trial, True, failed)
                self.ended.add(tid)
            else:
                self.rows[tid] = self._row(trial, ended=False, failed=None)
        # In the order the sweep made its trials (their ids count up): Tune
        # hands a resumed sweep its trials latest-reported first.
        table.write_table(self.trial_setup.sweep_dir,
                          [self.rows[tid] for tid in sorted(self.rows)])

    def _row(self, trial, ended: bool, failed: str | None) -> dict:
        tid = trial.trial_id
        run = storage.join(self.trial_setup.sweep_dir, tid)
        summary = table.run_summary(run)
        carried = (self.previous.get(tid) or {}).get("wall_s") or 0.0  # earlier sessions
        wall = carried + (time.time() - self.started[tid] if tid in self.started else 0.0)
        if not ended:
            status = {"RUNNING": "running", "PENDING": "pending"}.get(trial.status,
                                                                      "unfinished")
        elif failed:
            status = table.FAILED
        else:  # by Tune's scheduler, or --patience
            epochs = self.trial_setup.config(self._params(trial), tid).epochs
            status = table.FINISHED if summary["epoch"] >= epochs else table.STOPPED
        return {"trial": tid, **self._params(trial), "status": status, "error": failed,
                **summary, "wall_s": wall, "run": run}

    def _params(self, trial) -> dict:
        return {k: convert(k, trial.config[k]) for k in [*self.fields, "seed"]
                if k in trial.config}

    def _values(self, trial) -> str:
        return " ".join(f"{k.replace('_', '-')}={v}" for k, v in self._params(trial).items())

    def _label(self, row: dict) -> str:
        return " ".join([row["trial"]] + [f"{k.replace('_', '-')}={_short(row.get(k))}"
                                          for k in self.fields])

    @staticmethod
    def _say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _lost(trial) -> str:
    """The line of a trial whose Tune function itself failed (its process or
    node lost): run_trial turns every failure of the run into a result."""
    error = trial.get_pickled_error()
    return failure_line(error) if error else \
        f"the trial's driver was lost; Ray Tune's error.txt is under {trial.path}"


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# -- the end --------------------------------------------------------------------------

def _conclude(sweep_dir: str, searches: list[Search], total: int) -> str:
    """Print the table and the best trial; an interrupted sweep says how to
    resume it, and ends as an interrupted job does."""
    rows = table.read_table(sweep_dir)
    frame = pd.DataFrame(rows)
    # The trial's seed is named once, after the other searched flags, whether
    # it was searched or drawn.
    searched = [s for s in searches if s.field != "seed"]
    shown = ["trial", *[s.field for s in searched], "seed", "status", "best_val_loss",
             "best_val_bpc", "epoch", "step", "wall_s"]
    if not frame.empty:
        print(frame[[c for c in shown if c in frame]].to_string(
            index=False, float_format=lambda v: f"{v:.4g}"), flush=True)
    print(f"table: {storage.join(sweep_dir, table.TABLE)}", flush=True)
    print(f"chart: {storage.join(sweep_dir, table.CHART)}", flush=True)
    unfinished = total - sum(r["status"] in table.ENDED for r in rows)
    if unfinished:
        print(f"sweep interrupted with {unfinished} of {total} trial(s) unfinished; rerun the "
              "same command to resume it", flush=True)
        raise KeyboardInterrupt
    done = frame[frame["status"].isin([table.FINISHED, table.STOPPED]) &
                 frame["checkpoint"].notna()] if not frame.empty else frame
    if done.empty:
        raise CharlmError(f"no trial of sweep {sweep_dir} reached a checkpoint with a finite "
                          "val_loss (see the table's error column); lower --learning-rate or "
                          "search another range")
    best = done.loc[done["best_val_loss"].idxmin()]
    values = " ".join([*(f"{s.flag[2:]}={_short(best[s.field])}" for s in searched),
                       f"seed={best['seed']}"])
    print(f"best trial {best['trial']}: {values}: val_loss "
          f"{best['best_val_loss']:.4f} (val_bpc {best['best_val_bpc']:.3f}) at epoch "
          f"{int(best['best_epoch'])}", flush=True)
    print(f"best checkpoint: {best['checkpoint']}", flush=True)
    return best["checkpoint"]
