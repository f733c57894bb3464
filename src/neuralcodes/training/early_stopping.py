"""The early-stopping rule of the assignment (Keras' ``EarlyStopping(monitor="val_loss")``)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class EarlyStopping:
    """The stopping rule: stop once ``patience + 1`` epochs in a row fail to improve the best loss.

    With the assignment's ``patience=0`` training stops at the first epoch whose validation loss
    is not lower than the best so far (a tie is no improvement, as Keras' ``min_delta=0``). A NaN
    loss never counts as an improvement.
    """

    patience: int = 0
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_epoch: int | None = None

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record ``epoch``'s validation loss; True when it is a new best."""
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            return True
        self.bad_epochs += 1
        if self.should_stop:
            self.stopped_epoch = epoch
        return False

    @property
    def should_stop(self) -> bool:
        """True once the rule says that training is over."""
        return self.bad_epochs > self.patience
