"""Orbax checkpoints of a training run: the latest and the best ``k`` by a monitored metric.

A checkpoint holds the whole :class:`jaxtune.TrainState` (params, optimizer state, step, RNG key,
model state) plus a JSON record (config, rule table, data position, metrics), so a run resumes
exactly. Restoring takes a template state whose shardings say where the arrays go, so a checkpoint
written on 8 devices restores onto 1 (or the other way round). Orbax writes each step to a
temporary directory and renames it when complete: a run killed while saving leaves the previous
checkpoint intact.

Example::

    ckpt = jt.Checkpointer("runs/exp1/checkpoints", monitor="val_accuracy", mode="max", keep_best=2)
    ckpt.save(step, state, metrics={"val_accuracy": 0.91}, record={"data_position": loader_state})
    state, record = ckpt.restore(template=state)            # latest
    state, record = ckpt.restore(ckpt.best_step(), template=state)
"""
from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxtune.train import TrainState

_STATE, _RECORD = "state", "record"


def _to_saveable(state: TrainState) -> TrainState:
    return state.replace(rng=jax.random.key_data(state.rng))


class Checkpointer:
    """Keeps the latest ``keep_latest`` and the best ``keep_best`` checkpoints by ``monitor``.

    Args:
      directory: where step directories go (created if missing).
      monitor: metric name ranked for "best" (e.g. ``"val_loss"``); ``None`` keeps only the latest.
      mode: ``"min"`` or ``"max"``.
      keep_best / keep_latest: how many of each to keep (a checkpoint may count as both).
      async_save: write in a background thread (call :meth:`wait` or :meth:`close` before exit).
    """

    def __init__(self, directory: str | os.PathLike, *, monitor: str | None = None, mode: str = "min",
                 keep_best: int = 1, keep_latest: int = 1, async_save: bool = False):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.monitor, self.mode = monitor, mode
        cm = ocp.checkpoint_managers
        policies = [cm.LatestN(n=keep_latest)]
        if monitor is not None:
            policies.append(cm.BestN(get_metric_fn=lambda m: m[monitor], reverse=mode == "min", n=keep_best,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(preservation_policy=cm.AnyPreservationPolicy(policies),
                                               enable_async_checkpointing=async_save, create=True,
                                               cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(_STATE, _RECORD))

    def save(self, step: int, state: TrainState, *, metrics: dict[str, float] | None = None,
             record: dict | None = None) -> None:
        """Writes ``state`` and the JSON ``record`` (config, rules, data position, ...) as ``step``."""
        if self.monitor is not None and (metrics is None or self.monitor not in metrics):
            raise KeyError(f"checkpoint at step {step} needs the monitored metric {self.monitor!r}; "
                           f"got metrics {sorted(metrics or {})}")
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        record = dict(record or {}, step=int(step), metrics=metrics)
        self._manager.save(int(step), args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardSave(_to_saveable(state)), _RECORD: ocp.args.JsonSave(record)}),
            metrics=metrics)

    def wait(self) -> None:
        """Blocks until an asynchronous save has finished."""
        self._manager.wait_until_finished()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The kept step with the best monitored metric (``None`` if there is none)."""
        if self.monitor is None:
            return None
        scored = []
        for step in self.all_steps():
            metrics = self.record(step).get("metrics") or {}
            if self.monitor in metrics:
                scored.append((metrics[self.monitor], step))
        if not scored:
            return None
        return (min(scored) if self.mode == "min" else max(scored, key=lambda t: (t[0], -t[1])))[1]

    def record(self, step: int) -> dict:
        """The JSON record saved with ``step``."""
        return self._manager.restore(step, args=ocp.args.Composite(**{_RECORD: ocp.args.JsonRestore()}))[_RECORD]

    def restore(self, step: int | None = None, *, template: TrainState) -> tuple[TrainState, dict]:
        """Restores ``step`` (default: latest) into the structure, dtypes and shardings of ``template``.

        ``template`` is a state built the way the run builds it (e.g. ``TrainState.create`` then
        ``shard_train_state`` on the current mesh); its values are not used.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; kept: {self.all_steps()}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saveable(template))
        out = self._manager.restore(step, args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardRestore(abstract), _RECORD: ocp.args.JsonRestore()}))
        state = out[_STATE]
        return state.replace(rng=jax.random.wrap_key_data(np.asarray(state.rng))), out[_RECORD]

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
