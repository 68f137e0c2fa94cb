"""The runner's ``train.recompute_batch_stats``: batch-norm statistics re-estimated before evaluation.

A CNN's running statistics lag behind its weights: after a few dozen steps with a small momentum
(EfficientNet-Lite keeps 0.99 of the old statistics per step) or for averaged weights
(``optim.weight_average``), evaluation normalises with statistics of other weights
(``experiments/results/bn_statistics.md`` measures the cost). With ``train.recompute_batch_stats: N``
the runner re-estimates them over the first N training examples before every validation, the test
evaluation and the export (:class:`BatchStatsRecompute`; PyTorch's ``update_bn``). Batch-norm layers
that the rules (or the unfreezing stage) freeze keep theirs, as in training.

Example (``train: {recompute_batch_stats: 1000}``)::

    recompute = BatchStatsRecompute.for_run(cfg, model, rules, stages, data, model_state)
    evaluated = recompute(state, stage=0)      # the state with re-estimated batch_stats
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxtune.config import ConfigError
from jaxtune.models.batch_norm import average_batch_statistics, batch_statistics
from jaxtune.rules import frozen_batch_norm
from jaxtune.run_data import batch_rows
from jaxtune.run_model import with_frozen_bn


class BatchStatsRecompute:
    """``recompute(state, stage) -> state`` with ``batch_stats`` re-estimated over ``images`` in batches
    of ``batch_size``; layers frozen at unfreezing ``stage`` (of ``stages``; the rules' when None)
    keep theirs. One jitted statistics pass per distinct frozen set."""

    def __init__(self, model: Any, rules: list, stages: list | None, images: np.ndarray, batch_size: int):
        self.model, self.rules, self.stages = model, rules, stages
        self.images, self.batch_size = images, batch_size
        self._passes: dict[frozenset, Any] = {}

    @classmethod
    def for_run(cls, cfg: Any, model: Any, rules: list, stages: list | None, data: Any,
                model_state: dict) -> "BatchStatsRecompute | None":
        """The run's re-estimation (None when ``train.recompute_batch_stats`` is unset); raises
        :class:`ConfigError` before any training when the run cannot have one."""
        count = cfg.train.recompute_batch_stats
        if count is None:
            return None
        if "batch_stats" not in model_state or not hasattr(model, "config"):
            raise ConfigError(f"train.recompute_batch_stats={count}: {cfg.model.path} has no batch norm "
                              "(no batch_stats); unset it, or use a CNN (ResNet, MobileNetV2, EfficientNet-Lite, VGG-BN)")
        if cfg.train.parallel is not None:
            raise ConfigError(f"train.recompute_batch_stats with train.parallel={cfg.train.parallel!r}: re-estimation "
                              "runs on one device; unset one of them")
        rows = np.arange(min(count, len(data.train)))
        images = batch_rows(data, data.train, rows, len(rows))["images"]
        return cls(model, rules, stages, images, cfg.data.eval_batch_size)

    def __call__(self, state: Any, stage: int = -1) -> Any:
        variables = {"params": state.params, **state.model_state}
        mask = None if self.stages is None else self.stages[stage]
        frozen = frozen_batch_norm(variables, self.rules, trainable=mask)
        if frozen not in self._passes:
            self._passes[frozen] = jax.jit(batch_statistics(with_frozen_bn(self.model, frozen)))
        stats = self._passes[frozen]
        batch_stats = average_batch_statistics(lambda a, b: stats(variables, self.images[a:b]), len(self.images),
                                               self.batch_size)
        return state.replace(model_state={**state.model_state, "batch_stats": batch_stats})
