"""Training configuration and its presets: one dataclass that travels from the
job's flags to every worker and into every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from charlm.errors import CharlmError

# Held-out loss is always scored the seed's way, whatever the training
# windows: the character after each 40-character window, windows every 3
# characters, from a zero state. Runs with different recipes then compare.
VAL_MAXLEN = 40
VAL_STEP = 3
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK")

OPTIMIZERS = ("rmsprop", "adam")
# --precision: the Keras mixed-precision policy of the LSTM stack (its
# matmuls, activations and state); the weights, the optimizer's state, the
# output layer, its softmax and the loss stay float32 whatever the choice.
PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
COMPUTE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# Seconds a job waits for its workers or actors to be placed: a cold start of
# GPU nodes (instance boot, image pull, install) takes 10-15 minutes.
PLACEMENT_TIMEOUT_S = 1200.0


@dataclass
class TrainConfig:
    corpus: str | None = None  # None: nietzsche, falling back to python-docs offline
    keep_case: bool = False
    keep_newlines: bool = False
    vocab: str = "chars"  # or "bytes": UTF-8 bytes, 256 ids, no vocabulary pass
    maxlen: int = 40
    step: int = 3
    val_frac: float = 0.1
    objective: str = "last"  # "last": the seed's; "all": next character at every position
    units: int = 128
    layers: int = 1
    dropout: float = 0.0
    learning_rate: float = 0.01
    lr_schedule: str = "constant"  # or "cosine": decay to 1/20 over the run
    clipnorm: float | None = None
    batch_size: int = 1024  # global, split across workers
    # CPU workers compute a larger per-worker batch in slices of at most this
    # many windows (gradients summed: the same step, less memory); 0: whole
    # batches. GPU workers always take whole batches.
    micro_batch: int = 512
    epochs: int = 40
    max_steps: int | None = None  # cap on steps per epoch (smoke tests, benchmark slices)
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int | None = None  # None: the node's cores shared out locally
    # Ray's placement strategy for the workers: PACK (fewest nodes), SPREAD,
    # STRICT_SPREAD (one node each) or STRICT_PACK.
    placement_strategy: str = "PACK"
    placement_timeout: float = PLACEMENT_TIMEOUT_S
    shared_filesystem: bool = False  # a local storage_path that every node mounts
    storage_path: str = "~/charlm/runs"
    name: str | None = None
    max_failures: int = 0
    sample_every: int = 0  # print seed-style samples every N epochs (0: never)
    seed: int = 0
    verbose: bool = False
    patience: int = 0  # stop after this many epochs without a better val_loss (0: never)
    init_from: str | None = None  # fine-tune: start from this checkpoint's (or run's best) weights
    optimizer: str = "rmsprop"  # or "adam"
    # Clip the whole gradient (all tensors together, after the all-reduce and
    # the micro-batch sum) to this norm; `clipnorm` clips each tensor alone.
    global_clipnorm: float | None = None
    warmup_steps: int = 0  # linear warm-up from 0 to the learning rate, then the schedule
    # Momentum of an exponential moving average of the weights; the average is
    # what is scored, and what checkpoints give generation and --init-from
    # (0: off, the weights as trained).
    weight_average: float = 0.0
    # Checkpoints a run keeps: the N with the lowest val_loss, plus always the
    # latest (to resume from); 0 keeps every one.
    keep_checkpoints: int = 3
    # fp32, bf16 or fp16 (PRECISIONS); fp16 scales the loss. Checkpoints hold
    # float32 weights either way, so a run resumes under any precision.
    precision: str = "fp32"
    preset: str | None = None  # the preset make_config started from, recorded in checkpoints

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def validate(self) -> None:
        if self.num_workers < 1:
            raise CharlmError(f"--num-workers is {self.num_workers}; it must be at least 1")
        if self.batch_size < self.num_workers:
            raise CharlmError(
                f"--batch-size {self.batch_size} is smaller than --num-workers "
                f"{self.num_workers}; the global batch is split across workers, "
                "so raise it to at least the number of workers"
            )
        if self.objective not in ("last", "all"):
            raise CharlmError(f"--objective {self.objective!r} is unknown; use 'last' or 'all'")
        for flag, value in (("--maxlen", self.maxlen), ("--step", self.step),
                            ("--epochs", self.epochs), ("--units", self.units),
                            ("--layers", self.layers)):
            if value < 1:
                raise CharlmError(f"{flag} is {value}; it must be at least 1")
        if self.micro_batch < 0:
            raise CharlmError(f"--micro-batch is {self.micro_batch}; use 0 (whole batches) "
                              "or a number of windows")
        if not 0.0 < self.val_frac < 1.0:
            raise CharlmError(f"--val-frac is {self.val_frac}; use a fraction between 0 and 1")
        if self.vocab not in ("chars", "bytes"):
            raise CharlmError(f"--vocab {self.vocab!r} is unknown; use 'chars' or 'bytes'")
        if self.lr_schedule not in ("constant", "cosine"):
            raise CharlmError(f"--lr-schedule {self.lr_schedule!r} is unknown; "
                              "use 'constant' or 'cosine'")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise CharlmError(f"--placement-strategy {self.placement_strategy!r} is unknown; "
                              f"use one of {', '.join(PLACEMENT_STRATEGIES)}")
        if self.placement_timeout <= 0:
            raise CharlmError(f"--placement-timeout is {self.placement_timeout}; "
                              "give the seconds to wait for workers, more than 0")
        if not 0.0 <= self.dropout < 1.0:
            raise CharlmError(f"--dropout is {self.dropout}; use a value in [0, 1)")
        if self.patience < 0:
            raise CharlmError(f"--patience is {self.patience}; use 0 (never stop early) "
                              "or a number of epochs")
        if self.optimizer not in OPTIMIZERS:
            raise CharlmError(f"--optimizer {self.optimizer!r} is unknown; "
                              f"use {' or '.join(map(repr, OPTIMIZERS))}")
        if self.clipnorm is not None and self.global_clipnorm is not None:
            raise CharlmError("--clipnorm and --global-clipnorm are both set; "
                              "use one (global: the whole gradient, clipnorm: each tensor)")
        for flag, value in (("--clipnorm", self.clipnorm),
                            ("--global-clipnorm", self.global_clipnorm)):
            if value is not None and value <= 0:
                raise CharlmError(f"{flag} is {value}; use a positive norm, or leave it out")
        if self.warmup_steps < 0:
            raise CharlmError(f"--warmup-steps is {self.warmup_steps}; use 0 or more")
        if not 0.0 <= self.weight_average < 1.0:
            raise CharlmError(f"--weight-average is {self.weight_average}; use a momentum in "
                              "[0, 1), such as 0.99 (0: off)")
        check_precision(self.precision)
        if self.keep_checkpoints < 0:
            raise CharlmError(f"--keep-checkpoints is {self.keep_checkpoints}; use a number of "
                              "checkpoints to keep besides the latest, or 0 to keep every one")


def check_precision(precision: str) -> None:
    """--precision must be one of PRECISIONS (training and generation alike)."""
    if precision not in PRECISIONS:
        raise CharlmError(f"--precision {precision!r} is unknown; "
                          f"use one of {', '.join(PRECISIONS)}")


# The fast recipe predicts every position of non-overlapping 64-character
# sequences (64 targets per sequence instead of the seed's 1 per window), with
# small batches, clipping, output dropout and a cosine decay: a good held-out
# loss at the seed's model size, LSTM(128), in less time than the seed's
# 20 epochs. Every preset's figures: BENCHMARKS.md.
_FAST = {"objective": "all", "maxlen": 64, "step": 64, "batch_size": 64,
         "learning_rate": 0.02, "clipnorm": 1.0, "dropout": 0.3, "lr_schedule": "cosine"}

PRESETS: dict[str, dict] = {
    # The Keras example exactly: LSTM(128), RMSprop 0.01, batch 1024, 40 epochs.
    "seed": {},
    # A short run that still shows learning: the pipeline's demo.
    "quick": {**_FAST, "epochs": 6},
    "fast": {**_FAST, "epochs": 80},
    # Fewest optimizer steps at a GPU-sized batch (on a GPU, a step over 1,024
    # sequences costs little more than one over 64): Adam with a warm-up,
    # cosine decay and global-norm clipping. The batch is global: W workers
    # each take 1,024 / W of the same step, so the rate and the per-step curve
    # do not depend on W. Windows every 4 characters make an epoch 132 steps,
    # so held-out scoring and checkpoints come every 132 steps.
    "gpu": {"objective": "all", "maxlen": 64, "step": 4, "batch_size": 1024, "optimizer": "adam",
            "learning_rate": 0.02, "warmup_steps": 50, "lr_schedule": "cosine",
            "global_clipnorm": 1.0, "dropout": 0.1, "epochs": 15},
    # The best held-out loss within the seed recipe's own 20-epoch time on a
    # CPU: the fast recipe with two layers of LSTM(256), dropout 0.3 after
    # each, scored on averaged weights. A linear warm-up takes the two-layer
    # net off the unigram plateau early on every seed; without it, how long
    # the net stays there depends on the seed. bf16: as good per step, faster.
    "quality": {**_FAST, "layers": 2, "units": 256, "dropout": 0.3, "learning_rate": 0.015,
                "warmup_steps": 100, "weight_average": 0.99, "precision": "bf16",
                "epochs": 40},
}


def make_config(preset: str | None, **overrides) -> TrainConfig:
    """A preset's values (None: the seed's), then every override that is not
    None; `preset` records the preset's name."""
    preset = preset or "seed"
    if preset not in PRESETS:
        raise CharlmError(f"--preset {preset!r} is unknown; choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig.from_dict({**values, "preset": preset})
    config.validate()
    return config
