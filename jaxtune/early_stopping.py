"""Early stopping on a monitored validation metric.

Example::

    stopper = jt.EarlyStopping(monitor="val_loss", mode="min", patience=3, min_delta=1e-3)
    for epoch in range(100):
        ...
        if stopper.update(step, {"val_loss": loss}):
            break
    stopper.best_step, stopper.best_value
"""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class EarlyStopping:
    """Stops after ``patience`` evaluations without an improvement of more than ``min_delta``.

    ``update`` returns True when training should stop. ``best_step``/``best_value`` name the
    evaluation to restore at the end. The object is a plain dataclass: ``dataclasses.asdict`` it
    into a checkpoint record and rebuild it with ``EarlyStopping(**record)`` to resume.
    """

    monitor: str = "val_loss"
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0
    best_value: float | None = None
    best_step: int | None = None
    bad_evals: int = 0

    def __post_init__(self):
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.patience < 0 or self.min_delta < 0:
            raise ValueError(f"patience ({self.patience}) and min_delta ({self.min_delta}) must be >= 0")

    def improved(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta``."""
        if self.best_value is None:
            return True
        if self.mode == "min":
            return value < self.best_value - self.min_delta
        return value > self.best_value + self.min_delta

    def update(self, step: int, metrics: dict[str, float]) -> bool:
        """Records one evaluation; returns True when the run should stop."""
        if self.monitor not in metrics:
            raise KeyError(f"early stopping monitors {self.monitor!r} but the evaluation gave {sorted(metrics)}")
        value = float(metrics[self.monitor])
        if math.isnan(value):
            raise FloatingPointError(f"monitored metric {self.monitor!r} is NaN at step {step}")
        if self.improved(value):
            self.best_value, self.best_step, self.bad_evals = value, int(step), 0
            return False
        self.bad_evals += 1
        return self.bad_evals > self.patience
