"""When a run stops before its last epoch: `--patience` epochs without a
better val_loss, or a training loss that is no longer finite.

Only rank 0 scores val_loss, so rank 0 decides, and every worker follows the
decision it broadcasts (ray.train.collective): a worker that trained on alone
would wait forever in its next all-reduce."""

from __future__ import annotations

import math
from dataclasses import dataclass

PATIENCE = "patience"
NON_FINITE = "non-finite"


@dataclass
class Decision:
    reason: str | None = None  # None: go on; PATIENCE or NON_FINITE: stop after this epoch
    message: str = ""


class EarlyStopping:
    """Rank 0's bookkeeping; a resumed run picks it up from its history."""

    def __init__(self, patience: int, history: list[dict] | None = None):
        self.patience = patience
        self.best, self.best_epoch = math.inf, 0
        for row in history or []:
            self.improved(row["epoch"], row.get("val_loss"))

    def improved(self, epoch: int, val_loss: float | None) -> bool:
        """NaN is never better than anything, so it never becomes the best."""
        if val_loss is not None and math.isfinite(val_loss) and val_loss < self.best:
            self.best, self.best_epoch = val_loss, epoch
            return True
        return False

    def after_epoch(self, epoch: int, loss: float, val_loss: float) -> Decision:
        if not math.isfinite(loss):
            return Decision(NON_FINITE, f"training loss is {loss} at epoch {epoch}; lower "
                                        "--learning-rate or set --clipnorm")
        if self.improved(epoch, val_loss) or not self.patience:
            return Decision()
        if epoch - self.best_epoch >= self.patience:
            best = (f"best {self.best:.4f} at epoch {self.best_epoch}" if self.best_epoch
                    else "none finite")
            return Decision(PATIENCE, f"early stop after epoch {epoch}: no better val_loss for "
                                      f"{epoch - self.best_epoch} epoch(s), --patience "
                                      f"{self.patience} ({best})")
        return Decision()


def agree(decision: Decision | None) -> Decision:
    """Rank 0's decision on every worker (the others pass None). A barrier:
    every worker calls it once per epoch."""
    from ray.train.collective import broadcast_from_rank_zero

    reason, message = broadcast_from_rank_zero(
        None if decision is None else (decision.reason, decision.message))
    return Decision(reason, message)


def diverged(message: str, best: str | None) -> str:
    """The driver's one line for a run stopped by a non-finite loss, naming
    its best checkpoint so far, if any."""
    return f"{message} ({f'best checkpoint so far: {best}' if best else 'no checkpoint kept'})"
