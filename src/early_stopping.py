"""Early stopping on the held-out loss (`train.early_stopping`), and where a run stands with it.

The rule is Prechelt's "generalization loss" family in its simplest form (Prechelt 1998, "Early
Stopping - But When?", Sec. 2.1): stop once the held-out loss has not improved on its best value by
more than `min_delta` for `patience` evaluations in a row; keep the parameters of the best
evaluation (`best.pt`, `src.runs`).
"""

import math
from dataclasses import dataclass, replace

from src.schema import NonNegativeFloat, PositiveInt


@dataclass(frozen=True)
class EarlyStopping:
    """The `train.early_stopping` section: stop after `patience` evaluations in a row whose held-out
    loss is not below the best one by more than `min_delta` (nats)."""

    patience: PositiveInt
    min_delta: NonNegativeFloat = 0.0


@dataclass(frozen=True)
class Patience:
    """Where a run stands: its best held-out loss, the step of that evaluation (the one `best.pt`
    holds), and the evaluations since without an improvement. Saved in every checkpoint, so a resumed
    run goes on counting."""

    best_loss: float = math.inf
    best_step: int = 0
    waited: int = 0

    def after(self, loss: float, step: int, rule: EarlyStopping) -> "Patience":
        """The state after an evaluation at `step` with held-out loss `loss`."""
        if loss < self.best_loss - rule.min_delta:
            return Patience(loss, step, 0)
        return replace(self, waited=self.waited + 1)

    def exhausted(self, rule: EarlyStopping) -> bool:
        """Whether the run stops: `patience` evaluations in a row without an improvement."""
        return self.waited >= rule.patience
