"""Orbax checkpoints of a training run: the latest and the best ``k`` by a monitored metric.

A checkpoint holds the whole :class:`jaxtune.TrainState` (params, optimizer state, step, RNG key,
model state) plus a JSON record (config, rule table, data position, metrics), so a run resumes
exactly. Restoring takes a template state whose shardings say where the arrays go, so a checkpoint
written on 8 devices restores onto 1 (or the other way round). Orbax writes each step to a
temporary directory and renames it when complete: a run killed while saving leaves the previous
checkpoint intact. A checkpoint broken later (a missing or truncated file, bad metadata) is skipped by
:meth:`Checkpointer.restore_latest_intact` with a warning naming the file; a failed write raises
:class:`CheckpointWriteError`, the OS error naming the file (e.g. "No space left on device").

Example::

    ckpt = jt.Checkpointer("runs/exp1/checkpoints", monitor="val_accuracy", mode="max", keep_best=2)
    ckpt.save(step, state, metrics={"val_accuracy": 0.91}, record={"data_position": loader_state})
    state, record = ckpt.restore(template=state)            # latest
    state, record = ckpt.restore(ckpt.best_step(), template=state)
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxtune.errors import UserError
from jaxtune.train import TrainState

logger = logging.getLogger(__name__)

_STATE, _RECORD = "state", "record"
# The files of an orbax step directory that a restore cannot do without (JSON ones are parsed too).
_REQUIRED_FILES = (("state", "_METADATA"), ("state", "manifest.ocdbt"), ("record", "metadata"))
_OS_ERROR_CODE = re.compile(r"os_error_code='(\d+)'")
_FILE_IN_MESSAGE = re.compile(r'file "([^"]+)"')


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed: the OS error (errno, message, file) behind orbax's exception.

    Example::

        try:
            ckpt.save(step, state)
        except jt.CheckpointWriteError as e:
            e.errno, e.filename      # 28, ".../4.orbax-checkpoint-tmp/record/metadata"
    """

    def __init__(self, os_error: OSError, step: int, directory: str, kept: list[int]):
        super().__init__(os_error.errno, os_error.strerror, os_error.filename)
        self.step, self.directory, self.kept = step, directory, kept

    def __str__(self) -> str:
        kept = f"the checkpoints already there (steps {self.kept}) are intact" if self.kept else "no earlier checkpoint"
        return (f"could not write checkpoint step {self.step} under {self.directory}: {super().__str__()}; {kept}. "
                "Free disk space or fix the permissions (or set output_dir elsewhere), then run again to resume.")


class BrokenCheckpointError(UserError):
    """No checkpoint of a run directory reads back whole; the message names each broken file."""


def _os_error(exc: BaseException) -> OSError | None:
    """The OS error under a failed orbax write: an ``OSError`` in the exception chain, or one rebuilt
    from a tensorstore message (``... file "PATH" ... [os_error_code='28']``); one naming its file
    if there is such; ``None`` if there is none."""
    found: list[OSError] = []
    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        code = _OS_ERROR_CODE.search(str(e))
        if isinstance(e, OSError) and e.errno is not None:
            found.append(e)
        elif code:
            path = _FILE_IN_MESSAGE.search(str(e))
            found.append(OSError(int(code.group(1)), os.strerror(int(code.group(1))), path.group(1) if path else None))
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
    return next((e for e in found if e.filename), found[0] if found else None)


def _short(exc: BaseException) -> str:
    """An exception as one readable line: for tensorstore's long messages, its status, the innermost
    file it names and what went wrong there (its spec dumps cut off)."""
    text = re.sub(r"\s*\[tensorstore_spec.*", "", str(exc), flags=re.S).strip()
    files = list(_FILE_IN_MESSAGE.finditer(text))
    if not files:
        return f"{type(exc).__name__}: {text.splitlines()[0][:400] if text else ''}"
    status, detail = text.split(":", 1)[0], text[files[-1].end():].lstrip(": ")
    return f"{type(exc).__name__}: {status[:40]} in {files[-1].group(1)}" + (f": {detail[:200]}" if detail else "")


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
        self._write_failed = False

    def save(self, step: int, state: TrainState, *, metrics: dict[str, float] | None = None,
             record: dict | None = None) -> None:
        """Writes ``state`` and the JSON ``record`` (config, rules, data position, ...) as ``step``."""
        if self.monitor is not None and (metrics is None or self.monitor not in metrics):
            raise KeyError(f"checkpoint at step {step} needs the monitored metric {self.monitor!r}; "
                           f"got metrics {sorted(metrics or {})}")
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        record = dict(record or {}, step=int(step), metrics=metrics)
        kept = self.all_steps()
        try:
            self._manager.save(int(step), args=ocp.args.Composite(**{
                _STATE: ocp.args.StandardSave(_to_saveable(state)), _RECORD: ocp.args.JsonSave(record)}),
                metrics=metrics)
        except Exception as exc:
            self._raise_write_error(exc, int(step), kept)

    def _raise_write_error(self, exc: Exception, step: int, kept: list[int]):
        self._write_failed = True
        os_error = _os_error(exc)
        if os_error is None:
            raise exc
        raise CheckpointWriteError(os_error, step, self.directory, kept) from exc

    def wait(self) -> None:
        """Blocks until an asynchronous save has finished."""
        kept = self.all_steps()
        try:
            self._manager.wait_until_finished()
        except Exception as exc:
            self._raise_write_error(exc, self.latest_step() or -1, kept)

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

    def delete_after(self, step: int) -> list[int]:
        """Deletes the checkpoints of steps after ``step`` (a run resumed from ``step`` redoes them);
        returns their steps.

        Example::

            ckpt.delete_after(200)          # [300, 400]: saved after the state a run resumes from
        """
        later = [s for s in self.all_steps() if s > step]
        for s in later:
            self._manager.delete(s)
        return later

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

    def problem(self, step: int) -> str | None:
        """What is missing or unreadable in checkpoint ``step`` (naming the file), ``None`` if nothing
        is: the files orbax cannot restore without exist and its JSON metadata parses."""
        for parts in _REQUIRED_FILES:
            path = os.path.join(self.directory, str(step), *parts)
            if not os.path.isfile(path):
                return f"missing file {path}"
            if parts[-1] != "manifest.ocdbt":
                try:
                    with open(path, encoding="utf-8") as f:
                        json.load(f)
                except ValueError as exc:
                    return f"bad metadata in {path} ({exc})"
        return None

    def restore_latest_intact(self, *, template: TrainState) -> tuple[TrainState, dict] | None:
        """Restores the newest checkpoint that reads back whole (``None`` if there is no checkpoint).

        A newer broken one (missing or truncated file, bad metadata) is moved to
        ``<directory>.broken/<step>`` with a warning naming what was broken, and the next older one is
        tried. Raises :class:`BrokenCheckpointError` naming each broken file when none is intact (and
        then moves nothing).

        Example::

            restored = ckpt.restore_latest_intact(template=state)
            state, record = restored if restored is not None else (state, None)
        """
        broken: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            problem = self.problem(step)
            if problem is None:
                try:
                    restored = self.restore(step, template=template)
                except Exception as exc:  # orbax / tensorstore name the unreadable file in the message
                    problem = _short(exc)
                else:
                    for bad_step, why in broken:
                        moved = self._set_aside(bad_step)
                        warnings.warn(f"checkpoint step {bad_step} in {self.directory} is broken ({why}); moved it "
                                      f"to {moved} and resumed from step {step}", stacklevel=2)
                    return restored
            broken.append((step, problem))
        if broken:
            raise BrokenCheckpointError(f"no intact checkpoint in {self.directory}: "
                                        + "; ".join(f"step {s}: {why}" for s, why in broken) + ".",
                                        hint="Restore the files, or start the run over (overwrite=True).",
                                        config_hint="Restore the files, or start the run over (--overwrite).")
        return None

    def _set_aside(self, step: int) -> str:
        """Moves step directory ``step`` to ``<directory>.broken/`` (out of orbax's sight); returns where."""
        target = os.path.join(f"{self.directory}.broken", str(step))
        suffix = 1
        while os.path.exists(target):
            target, suffix = os.path.join(f"{self.directory}.broken", f"{step}-{suffix}"), suffix + 1
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(os.path.join(self.directory, str(step)), target)
        self._manager.reload()
        return target

    def close(self) -> None:
        """Finishes pending writes and closes; after a failed write, errors of the cleanup are only
        logged, so the write error is what the caller sees."""
        try:
            self._manager.close()
        except Exception:
            if not self._write_failed:
                raise
            logger.debug("closing %s after a failed write", self.directory, exc_info=True)

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
