"""Stop on bad numbers: a non-finite loss, gradient or weight stops a run at the step it happened.

The train step computes one device scalar per step, ``metrics["nonfinite_leaf"]``
(:func:`nonfinite_leaf`): ``-1`` when the loss, the gradient norm, every gradient and every
updated parameter are finite, else the index in ``jax.tree_util.tree_leaves(params)`` of the
first leaf whose gradient or new value is not, or :data:`NONFINITE_LOSS` /
:data:`NONFINITE_GRAD_NORM`. The host never waits for it per step: :class:`NonFiniteGuard`
keeps the flags as device arrays and reads them all in one transfer at log, evaluation and
checkpoint points, then raises :class:`NonFiniteError` naming the first bad step and parameter.

Example::

    guard = jt.NonFiniteGuard(jt.leaf_paths(state.params))
    for step, batch in enumerate(batches, 1):
        state, metrics = train_step(state, batch)
        guard.record(step, metrics)                  # no host transfer
        if step % 100 == 0:
            values = guard.check(metrics)            # one transfer; raises NonFiniteError
            ckpt.save(step, state)                   # only finite states reach the disk
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

#: ``nonfinite_leaf`` when everything is finite.
ALL_FINITE = -1
#: ``nonfinite_leaf`` when the loss is not finite but every gradient and new value is.
NONFINITE_LOSS = -2
#: ``nonfinite_leaf`` when every gradient is finite but their global norm overflows.
NONFINITE_GRAD_NORM = -3

FLAG = "nonfinite_leaf"


class NonFiniteError(ValueError):
    """Training produced a non-finite number; nothing after the last finite checkpoint was saved.

    Attributes:
      step: the first step (1-based, as logged) whose numbers were not finite.
      path: the first parameter whose gradient or updated value was not finite (``None`` when
        the loss, the gradient norm or a validation metric was the first bad number).
      metric: ``"loss"``, ``"grad_norm"``, a validation metric name, or ``None`` (a parameter).
      last_checkpoint: the latest checkpoint step on disk (all finite), if the caller knew it.
    """

    def __init__(self, message: str, *, step: int, path: str | None = None, metric: str | None = None,
                 last_checkpoint: int | None = None):
        super().__init__(message)
        self.step, self.path, self.metric, self.last_checkpoint = step, path, metric, last_checkpoint


def _zero_sum(x: jax.Array) -> jax.Array:
    """0 when every element of ``x`` is finite, else NaN: inf * 0 and NaN * 0 are NaN, and a sum of
    zeros cannot overflow (a plain sum can, in float16). A float sum is cheaper than a boolean
    all-reduction on CPU."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return jnp.zeros((), jnp.float32)
    return jnp.sum(x * 0, dtype=jnp.float32)


def nonfinite_leaf(loss: jax.Array, grad_norm: jax.Array, grads: Sequence[jax.Array],
                   new_values: Sequence[jax.Array], leaf_indices: Sequence[int]) -> jax.Array:
    """The step's non-finite code, on device (int32 scalar; call it inside the jitted step).

    ``grads[k]`` and ``new_values[k]`` belong to parameter leaf ``leaf_indices[k]``. Returns the
    smallest leaf index whose gradient or new value has a NaN/inf, else :data:`NONFINITE_LOSS`
    for a non-finite loss, :data:`NONFINITE_GRAD_NORM` for an overflowing norm, else ``-1``.

    Example::

        >>> int(nonfinite_leaf(jnp.float32(1.0), jnp.float32(1.0), [jnp.ones(2), jnp.array([1.0, jnp.nan])],
        ...                    [jnp.ones(2), jnp.ones(2)], [0, 3]))
        3
    """
    scalar_code = jnp.where(~jnp.isfinite(loss), NONFINITE_LOSS,
                            jnp.where(~jnp.isfinite(grad_norm), NONFINITE_GRAD_NORM, ALL_FINITE))
    if not leaf_indices:
        return scalar_code.astype(jnp.int32)
    bad = ~jnp.isfinite(jnp.stack([_zero_sum(g) + _zero_sum(v) for g, v in zip(grads, new_values)]))
    first = jnp.asarray(leaf_indices, jnp.int32)[jnp.argmax(bad)]
    return jnp.where(bad.any(), first, scalar_code).astype(jnp.int32)


def check_finite_metrics(metrics: Mapping[str, float], step: int, split: str = "validation",
                         last_checkpoint: int | None = None) -> None:
    """Raises :class:`NonFiniteError` naming the first NaN/inf metric of an evaluation.

    A NaN validation loss must neither count as the best checkpoint nor as "no improvement".

    Example::

        >>> check_finite_metrics({"val_loss": 0.3, "val_accuracy": 0.9}, step=100)   # fine
    """
    for name, value in metrics.items():
        if not math.isfinite(float(value)):
            raise NonFiniteError(
                f"{split} metric {name!r} is {float(value)} at step {step}: the weights give non-finite "
                f"outputs, so this evaluation can rank no checkpoint and was not saved"
                f"{_checkpoint_note(last_checkpoint)}. Check the {split} data for NaN/inf inputs or lower "
                "optim.learning_rate.", step=step, metric=name, last_checkpoint=last_checkpoint)


def _checkpoint_note(last_checkpoint: int | None) -> str:
    if last_checkpoint is None:
        return ""
    return f"; the latest checkpoint on disk (step {last_checkpoint}) is the last finite one, nothing later was saved"


class NonFiniteGuard:
    """Keeps each step's ``nonfinite_leaf`` flag on device; :meth:`check` reads them in one go.

    Args:
      paths: ``jt.leaf_paths(params)``: names for the flag's leaf indices.

    Flags of stacked members (a leading axis) are handled: the first bad member is named.
    """

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)
        self._pending: list[tuple[int, Any, Any, Any]] = []

    def record(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Remembers ``step``'s flag, loss and gradient norm as they are (device arrays): no transfer."""
        self._pending.append((step, metrics[FLAG], metrics.get("loss"), metrics.get("grad_norm")))

    def check(self, metrics: Mapping[str, Any] | None = None, *, last_checkpoint: int | None = None) -> dict[str, float]:
        """Reads every pending flag (and ``metrics``, e.g. the current step's) in one transfer.

        Raises :class:`NonFiniteError` for the first recorded step with a non-finite number.
        Returns ``metrics`` as host floats without the flag (what a log line shows).
        """
        pending, self._pending = self._pending, []
        current = {k: v for k, v in (metrics or {}).items() if k != FLAG}
        fetched, values = jax.device_get(([p[1:] for p in pending], current))
        for (step, _, _, _), (flag, loss, grad_norm) in zip(pending, fetched):
            flags = np.asarray(flag).reshape(-1)
            bad = np.flatnonzero(flags != ALL_FINITE)
            if bad.size:
                member = int(bad[0]) if np.ndim(flag) else None
                raise self._error(step, int(flags[bad[0]]), _pick(loss, member), _pick(grad_norm, member), member,
                                  last_checkpoint)
        return {k: float(np.asarray(v)) for k, v in values.items()}

    def _error(self, step: int, code: int, loss: float, grad_norm: float, member: int | None,
               last_checkpoint: int | None) -> NonFiniteError:
        where = "" if member is None else f" (member {member})"
        numbers = f"loss {loss}, grad_norm {grad_norm}"
        hint = ("Lower optim.learning_rate, add warmup or gradient clipping, or look for NaN/inf values in "
                "that step's batch.")
        tail = f"{_checkpoint_note(last_checkpoint)}. {hint}"
        if code >= 0:
            path = self.paths[code] if code < len(self.paths) else f"leaf {code}"
            part = "updated value" if math.isfinite(grad_norm) else "gradient or updated value"
            return NonFiniteError(f"non-finite {part} of parameter {path!r} at step {step}{where} ({numbers}); "
                                  f"training stopped{tail}", step=step, path=path, last_checkpoint=last_checkpoint)
        metric = {NONFINITE_LOSS: "loss", NONFINITE_GRAD_NORM: "grad_norm"}.get(code, f"code {code}")
        return NonFiniteError(f"non-finite {metric} at step {step}{where} ({numbers}) while every gradient and "
                              f"updated parameter is finite; training stopped{tail}", step=step, metric=metric,
                              last_checkpoint=last_checkpoint)


def _pick(value: Any, member: int | None) -> float:
    if value is None:
        return float("nan")
    array = np.asarray(value)
    return float(array.reshape(-1)[member] if member is not None and array.ndim else array.reshape(-1)[0])
