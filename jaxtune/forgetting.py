"""Tools against catastrophic forgetting: L2-SP, weight averaging, weight interpolation, drift.

Fine-tuning moves a pretrained network away from what it knew. These pure pieces keep it closer:

* :func:`l2_sp` — the L2-SP penalty (Li et al., 2018): ``strength/2 * ||θ - θ0||²`` towards the
  starting point ``θ0``, added as its gradient. The anchor lives in the optimizer state, so it is
  checkpointed and restored with it. In a rule table it is one setting per group
  (``jt.settings(l2_sp=0.01)``, compiled by :func:`jaxtune.make_optimizer`).
* :func:`anchor_decay` — the decoupled form of L2-SP for Adam-type optimizers, as AdamW decouples
  weight decay (``make_optimizer(..., l2_sp_decoupled=True)``).
* :func:`average_weights` — an exponential moving average (or a uniform average, as in SWA) of the
  weights after every update, kept in the optimizer state; :func:`averaged_params` reads it out.
* :func:`interpolate_params` — WiSE-FT (Wortsman et al., 2022): ``(1 - α) θ0 + α θ``.
* :func:`param_drift` — how far each group of parameters moved, relative to its pretrained norm.

Example::

    tx = optax.chain(jt.make_optimizer(params, rules, l2_sp=0.01), jt.average_weights(0.999))
    state = jt.TrainState.create(params, tx)
    ...
    ema = jt.averaged_params(state.params, state.opt_state)
    jt.param_drift(state.params, pretrained, jt.label_params(params, rules))
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune.rules import leaf_paths

Mask = Any  # a bool pytree with the parameters' structure, or a callable params -> such a tree


class L2SPState(NamedTuple):
    """The anchor ``θ0`` of :func:`l2_sp` (one array per anchored parameter)."""

    anchor: Any


class RuntimeL2SPState(NamedTuple):
    """:func:`l2_sp` with ``runtime=True``: the anchor and a float32 strength array per anchored leaf
    (set with :func:`jaxtune.set_l2_sp` between steps, no recompilation)."""

    anchor: Any
    strength: Any


def _masked(inner: optax.GradientTransformation, mask: Mask | None) -> optax.GradientTransformation:
    return inner if mask is None else optax.masked(inner, mask)


def _copy(params: Any) -> Any:
    """The parameters as new arrays: a state that keeps them survives the donation of ``params``."""
    return jax.tree.map(jnp.array, params)


def _require_params(params: Any, transform: str) -> None:
    if params is None:
        raise ValueError(f"{transform} needs the parameters: call tx.update(grads, opt_state, params)")


def _check_strength(strength: Any, transform: str) -> None:
    if any(np.any(np.asarray(s) < 0) for s in jax.tree.leaves(strength)):
        raise ValueError(f"{transform} strength must be >= 0, got {strength}")


def _strength_arrays(strength: Any, params: Any) -> Any:
    """Per-leaf float32 strengths: a number for every leaf, or a tree of values (one per leaf of
    ``params``, broadcastable to it)."""
    if isinstance(strength, (int, float)):
        return jax.tree.map(lambda _: jnp.asarray(strength, jnp.float32), params)
    return jax.tree.map(lambda _, s: jnp.asarray(s, jnp.float32), params, strength)


def l2_sp(strength: Any, mask: Mask | None = None, *, runtime: bool = False) -> optax.GradientTransformation:
    """Adds ``strength * (params - anchor)`` to the gradient: the L2-SP penalty
    ``strength/2 * ||params - anchor||²`` taken as part of the loss.

    The anchor is the parameters the optimizer is initialised with (``tx.init(params)``: the
    pretrained weights), stored in the optimizer state. Put it *before* the optimizer, like a loss
    term: ``optax.chain(jt.l2_sp(0.01), optax.adam(1e-4))``. ``mask`` (a bool tree or a callable)
    limits it to some parameters, typically the pretrained backbone and not a new head. The anchor
    costs one copy of the parameters it covers. ``runtime=True`` keeps the strength as a float32
    array per leaf in the state (``strength``: a number, or a tree of per-leaf values), so
    :func:`jaxtune.set_l2_sp` changes it without recompiling.

    Example::

        >>> tx = optax.chain(l2_sp(0.5), optax.sgd(1.0))
        >>> params = {"w": jnp.ones(2)}
        >>> state = tx.init(params)
        >>> updates, _ = tx.update({"w": jnp.zeros(2)}, state, {"w": jnp.full(2, 3.0)})
        >>> updates["w"].tolist()   # -(0.5 * (3 - 1))
        [-1.0, -1.0]
    """
    _check_strength(strength, "l2_sp")

    def init(params):
        if runtime:
            return RuntimeL2SPState(anchor=_copy(params), strength=_strength_arrays(strength, params))
        return L2SPState(anchor=_copy(params))

    def update(updates, state, params=None):
        _require_params(params, "l2_sp")
        strengths = state.strength if runtime else jax.tree.map(lambda _: strength, updates)
        penalised = jax.tree.map(
            lambda g, p, a, s: g + (s * (p - a)).astype(g.dtype), updates, params, state.anchor, strengths)
        return penalised, state

    return _masked(optax.GradientTransformation(init, update), mask)


class AnchorDecayState(NamedTuple):
    """State of :func:`anchor_decay`: updates seen (for the schedule) and the anchor ``θ0``."""

    count: jax.Array
    anchor: Any


class RuntimeAnchorDecayState(NamedTuple):
    """:func:`anchor_decay` with ``runtime=True``: updates seen, the anchor, and a float32 strength
    array per anchored leaf (set with :func:`jaxtune.set_l2_sp`)."""

    count: jax.Array
    anchor: Any
    strength: Any


def anchor_decay(strength: Any, learning_rate: float | optax.Schedule,
                 mask: Mask | None = None, *, runtime: bool = False) -> optax.GradientTransformation:
    """Decoupled L2-SP: adds ``-lr(t) * strength * (params - anchor)`` to the final update, as AdamW
    does for weight decay with the anchor in place of 0.

    Put it *after* the optimizer, with the optimizer's learning rate (a float or the same
    schedule): ``optax.chain(optax.adam(sched), jt.anchor_decay(1.0, sched))``. Unlike :func:`l2_sp`
    the pull does not pass through Adam's normalisation, so its size is ``lr * strength`` of the
    distance per step whatever the gradients are. With SGD the two are the same. The anchor is the
    parameters given to ``init``, kept in the optimizer state. ``runtime=True`` keeps the strength
    as a float32 array per leaf in the state (see :func:`l2_sp`).

    Example::

        >>> tx = optax.chain(optax.sgd(0.5), anchor_decay(0.5, 0.5))
        >>> state = tx.init({"w": jnp.ones(2)})
        >>> updates, _ = tx.update({"w": jnp.zeros(2)}, state, {"w": jnp.full(2, 3.0)})
        >>> updates["w"].tolist()   # -(0.5 * 0.5 * (3 - 1))
        [-0.5, -0.5]
    """
    _check_strength(strength, "anchor_decay")

    def init(params):
        count = jnp.zeros((), jnp.int32)
        if runtime:
            return RuntimeAnchorDecayState(count, _copy(params), _strength_arrays(strength, params))
        return AnchorDecayState(count, _copy(params))

    def update(updates, state, params=None):
        _require_params(params, "anchor_decay")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        strengths = state.strength if runtime else jax.tree.map(lambda _: strength, updates)
        pulled = jax.tree.map(lambda u, p, a, s: u - (lr * s * (p - a)).astype(u.dtype), updates, params,
                              state.anchor, strengths)
        return pulled, state._replace(count=optax.safe_int32_increment(state.count))

    return _masked(optax.GradientTransformation(init, update), mask)


class WeightAverageState(NamedTuple):
    """State of :func:`average_weights`: updates seen, and the averaged weights."""

    count: jax.Array
    param_average: Any


def average_weights(decay: float | None = 0.999, *, start_step: int = 0,
                    mask: Mask | None = None) -> optax.GradientTransformation:
    """Keeps an average of the weights after each update in the optimizer state.

    Put it *last* in the chain (it reads ``params + updates``, the weights after the step, and
    passes the updates on unchanged). Until ``start_step`` updates have been seen the average
    follows the weights; from then on it is an exponential moving average with ``decay``, or, with
    ``decay=None``, the uniform mean of the weights since ``start_step`` (SWA). ``mask`` limits it
    to some parameters (the average costs one copy of those, the others nothing); read it with
    :func:`averaged_params`. A stacked leaf's mask may hold one flag per layer (e.g.
    :func:`jaxtune.freeze_below` on a scanned model): the leaf is averaged whole if any of its layers is.
    The average follows the weights the step applies: a structural-mode step
    (``jt.make_train_step(trainable=...)``) passes its mask as ``tx.update(..., trainable=mask)`` and
    drops the updates of what it keeps frozen, so a frozen leaf's or layer's average stays its value.

    Example::

        >>> tx = optax.chain(optax.sgd(1.0), average_weights(decay=None))
        >>> params = {"w": jnp.zeros(())}
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     updates, state = tx.update({"w": -jnp.ones(())}, state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> float(averaged_params(params, state)["w"])   # mean of 1, 2, 3
        2.0
    """
    if decay is not None and not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1) (or None for a uniform average), got {decay}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")

    def init(params):
        return WeightAverageState(jnp.zeros((), jnp.int32), _copy(params))

    def update(updates, state, params=None, *, trainable=None, **extra_args):
        del extra_args
        _require_params(params, "average_weights")
        count = state.count + 1
        averaged = count - start_step  # how many post-start weights the new average holds
        if decay is None:
            weight = 1.0 / jnp.maximum(averaged, 1).astype(jnp.float32)
        else:
            weight = jnp.asarray(1.0 - decay, jnp.float32)
        weight = jnp.where(averaged <= 1, 1.0, weight)  # before and at start: take the weights as they are

        def mix(avg, p, u, applied):
            new = p + u.astype(p.dtype) * applied
            return (avg + weight.astype(avg.dtype) * (new - avg)).astype(avg.dtype)

        average = jax.tree.map(mix, state.param_average, params, updates, _applied(trainable, updates))
        return updates, WeightAverageState(count, average)

    leaf_mask = mask if mask is None or callable(mask) else jax.tree.map(lambda m: bool(np.any(m)), mask)
    return _masked(optax.GradientTransformationExtraArgs(init, update), leaf_mask)


def _applied(trainable: Any, updates: Any) -> Any:
    """Per leaf of ``updates`` (which ``optax.masked`` may have cut down), the share of its update the
    step applies: 1 without ``trainable``, else its flags (shape ``()``, or ``(L,)`` / ``(L, 1, ...)``
    for a stacked leaf) as a 0/1 factor broadcastable to the leaf. ``trainable`` has every leaf."""
    if trainable is None:
        return jax.tree.map(lambda u: 1, updates)
    slots = jax.tree.leaves(updates, is_leaf=_is_masked)     # one per parameter, MaskedNode where cut
    flags = jax.tree.leaves(trainable)
    if len(flags) != len(slots):
        raise ValueError(f"trainable has {len(flags)} leaves but the parameters have {len(slots)}; build it with "
                         "jt.trainable_mask(params, rules)")

    def factor(flag, like):
        flag = jnp.asarray(flag).astype(like.dtype)
        return flag.reshape(flag.shape + (1,) * (like.ndim - flag.ndim))

    kept = [factor(f, u) for f, u in zip(flags, slots) if not _is_masked(u)]
    return jax.tree.unflatten(jax.tree.structure(updates), kept)


def _is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def _the_average(opt_state: Any) -> Any:
    found = optax.tree.get_all_with_path(opt_state, "param_average")
    if len(found) != 1:
        raise ValueError(f"the optimizer state holds {len(found)} weight averages; build the optimizer with "
                         "exactly one jt.average_weights(...) in its chain")
    return found[0][1]


def averaged_params(params: Any, opt_state: Any) -> Any:
    """The weights with the average kept by :func:`average_weights` in ``opt_state`` (leaves it
    does not average are taken from ``params``).

    Example::

        eval_params = jt.averaged_params(state.params, state.opt_state)
    """
    return jax.tree.map(lambda a, p: p if _is_masked(a) else a.astype(jnp.result_type(p)), _the_average(opt_state),
                        params, is_leaf=_is_masked)


def _mask_leaves(mask: Mask | None, tree: Any) -> list[bool]:
    if mask is None:
        return [True] * len(jax.tree.leaves(tree))
    flags = jax.tree.leaves(mask(tree) if callable(mask) else mask)
    if len(flags) != len(jax.tree.leaves(tree)):
        raise ValueError(f"mask has {len(flags)} leaves but the parameters have {len(jax.tree.leaves(tree))}; "
                         "build it from the same tree, e.g. jt.trainable_mask(params, rules)")
    return [bool(f) for f in flags]


def _check_same_structure(a: Any, b: Any, names: tuple[str, str]) -> None:
    sa, sb = jax.tree.structure(a), jax.tree.structure(b)
    if sa != sb:
        raise ValueError(f"{names[0]} and {names[1]} have different structures:\n  {sa}\n  {sb}")
    for path, x, y in zip(leaf_paths(a), jax.tree.leaves(a), jax.tree.leaves(b)):
        if np.shape(x) != np.shape(y):
            raise ValueError(f"{path}: shape {np.shape(x)} in {names[0]} but {np.shape(y)} in {names[1]}")


def interpolate_params(start: Any, end: Any, alpha: float, mask: Mask | None = None) -> Any:
    """WiSE-FT weight interpolation: ``(1 - alpha) * start + alpha * end`` leaf by leaf.

    ``alpha=0`` gives ``start`` (the pretrained weights), ``1`` gives ``end`` (the fine-tuned ones).
    Leaves outside ``mask`` (e.g. a new head that has no pretrained value) are taken from ``end``.

    Example::

        >>> interpolate_params({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, 0.25)["w"].tolist()
        [0.25, 0.25]
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_same_structure(start, end, ("start", "end"))
    flags = _mask_leaves(mask, end)
    mixed = [((1.0 - alpha) * jnp.asarray(s, jnp.float32) + alpha * jnp.asarray(e, jnp.float32)).astype(jnp.result_type(e))
             if f else e for s, e, f in zip(jax.tree.leaves(start), jax.tree.leaves(end), flags)]
    return jax.tree.unflatten(jax.tree.structure(end), mixed)


@jax.jit
def _squared_norms(params: Any, anchor: Any) -> tuple[list[jax.Array], list[jax.Array]]:
    sq = lambda x: jnp.sum(jnp.square(x.astype(jnp.float32)))
    return ([sq(p - a) for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(anchor))],
            [sq(a) for a in jax.tree.leaves(anchor)])


def param_drift(params: Any, anchor: Any, labels: Any = None) -> dict[str, float]:
    """Relative distance from the anchor, ``||θ - θ0|| / ||θ0||``, over all parameters (``"all"``)
    and per group of ``labels`` (a tree of group names, e.g. :func:`jaxtune.label_params`); the
    absolute distance for a group whose anchor is all zeros (e.g. biases initialised at 0).

    Example::

        >>> param_drift({"a": jnp.full(4, 1.1), "b": jnp.ones(4)}, {"a": jnp.ones(4), "b": jnp.ones(4)},
        ...             {"a": "head", "b": "body"})
        {'all': 0.0707..., 'head': 0.1..., 'body': 0.0}
    """
    _check_same_structure(anchor, params, ("anchor", "params"))
    moved, norms = jax.device_get(_squared_norms(params, anchor))
    groups: dict[str, list[float]] = {"all": [0.0, 0.0]}
    names = [None] * len(moved) if labels is None else jax.tree.leaves(labels)
    if len(names) != len(moved):
        raise ValueError(f"labels have {len(names)} leaves but the parameters have {len(moved)}; "
                         "build them with jt.label_params(params, rules)")
    for name, d, n in zip(names, moved, norms):
        for key in ("all",) if name is None else ("all", str(name)):
            acc = groups.setdefault(key, [0.0, 0.0])
            acc[0] += float(d)
            acc[1] += float(n)
    return {k: float(np.sqrt(d / n)) if n > 0 else float(np.sqrt(d)) for k, (d, n) in groups.items()}

