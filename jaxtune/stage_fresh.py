"""Stage-fresh optimizer statistics: a group unfrozen at step k moves as if its optimizer started at k.

Gradual unfreezing trains some leaves and not others, and the set changes. An optimizer that keeps
one step count for all leaves (optax's Adam keeps one per state) would, for a leaf unfrozen at step
k, bias-correct zero moments with the count k: its first updates would be several times the
learning rate. Here every leaf (every layer slice of a stacked leaf) has its own instance of the
inner optimizer, and an update changes the state of a leaf only where it trains now: moments *and*
counts stand still while it is frozen. The learning rate is applied afterwards from one global
count, so the schedule reads the global step.

Two transforms, both used by :func:`jaxtune.make_optimizer`:

* :func:`per_leaf` — the inner optimizer once per leaf, updated where the ``trainable`` extra
  argument (a bool tree, one flag per leaf or per layer) says it trains; elsewhere the state is
  kept bit for bit, non-finite gradients never reach it, and the update is 0.
* :func:`scale_by_learning_rate_and_multipliers` — the learning rate of the global step times the
  per-leaf multipliers (constants, or arrays in the state in runtime mode), zero where a leaf is
  frozen now; it passes the combined ``trainable`` flags down to the inner (per-group) transform.

The flags come from the runtime state (:func:`jaxtune.set_trainable`) and from the structural step
(``make_train_step(trainable=...)`` passes ``trainable=`` to ``tx.update``): a leaf trains now where
both say so.

Example::

    tx = jt.make_optimizer(params, rules, optax.adamw, 1e-3, runtime=True)   # built from these pieces
    updates, opt_state = tx.update(grads, opt_state, params, trainable=stage_mask)
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune.rules import leaf_paths


class StageFreshState(NamedTuple):
    """State of :func:`per_leaf`: the inner optimizer's state of each leaf, in the parameters' layout
    (``optax.MaskedNode`` where the transform does not apply); a stacked leaf's state has a leading
    layer axis (one step count per layer)."""

    leaves: Any


class MultiplierState(NamedTuple):
    """Runtime-mode strategy in the optimizer state: update = lr * lr_mult where trainable, else 0."""

    lr_mult: Any
    trainable: Any


class RuleOptimizerState(NamedTuple):
    """State of :func:`jaxtune.make_optimizer`: updates so far (the learning-rate schedule's step),
    the per-group optimizer states, and the runtime strategy (``optax.EmptyState`` in static mode)."""

    count: jax.Array
    groups: Any
    multipliers: Any


def _is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def _expand(units: jax.Array, x: jax.Array) -> jax.Array:
    """Flags of shape ``()`` or ``(L,)`` broadcastable against ``x`` (leading axis = layer)."""
    return units.reshape(units.shape + (1,) * (jnp.ndim(x) - units.ndim))


def per_leaf(inner: optax.GradientTransformation, stacked: Any) -> optax.GradientTransformationExtraArgs:
    """Runs ``inner`` once per leaf (once per layer slice where ``stacked`` is True, via ``vmap``), and
    only where the ``trainable`` extra argument of ``update`` is True: a frozen leaf's state stays as
    it was (step counts included) and its update is 0. Without ``trainable`` every leaf trains.

    ``stacked`` is a bool tree with the parameters' structure (True: the leading axis is the layer).
    ``trainable`` holds, per leaf, a bool array of shape ``()`` or, for a stacked leaf, ``(L, 1, ...)``.

    Example::

        >>> tx = per_leaf(optax.adam(1.0), {"a": False, "b": False})
        >>> params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
        >>> state = tx.init(params)
        >>> grads = {"a": jnp.ones(2), "b": jnp.full(2, jnp.nan)}
        >>> updates, state = tx.update(grads, state, params, trainable={"a": jnp.array(True), "b": jnp.array(False)})
        >>> np.round(updates["a"], 4).tolist(), updates["b"].tolist(), int(state.leaves["b"][0].count)
        ([-1.0, -1.0], [0.0, 0.0], 0)
    """
    structure = jax.tree.structure(stacked)

    def init(params):
        def one(is_stacked, p):
            if _is_masked(p):
                return p
            return jax.vmap(inner.init)(p) if is_stacked else inner.init(p)
        return StageFreshState(jax.tree.map(one, stacked, params))

    def update(updates, state, params=None, *, trainable=None, **extra_args):
        del extra_args
        flat = structure.flatten_up_to
        n = structure.num_leaves
        param_leaves = [None] * n if params is None else flat(params)
        flags = [None] * n if trainable is None else flat(trainable)
        new_updates, new_states = [], []
        for is_stacked, u, s, p, on in zip(flat(stacked), flat(updates), flat(state.leaves), param_leaves, flags):
            if _is_masked(u):
                new_updates.append(u)
                new_states.append(s)
                continue
            fn = jax.vmap(inner.update) if is_stacked else inner.update
            if on is None:
                u, s = fn(u, s, p)
            else:
                units = jnp.reshape(on, (-1,) if is_stacked else ())
                u_new, s_new = fn(jnp.where(_expand(units, u), u, jnp.zeros_like(u)), s, p)
                s = jax.tree.map(lambda new, old: jnp.where(_expand(units, new), new, old), s_new, s)
                u = jnp.where(_expand(units, u_new), u_new, jnp.zeros_like(u_new))
            new_updates.append(u)
            new_states.append(s)
        return structure.unflatten(new_updates), StageFreshState(structure.unflatten(new_states))

    return optax.GradientTransformationExtraArgs(init, update)


def _static_flags(trainable: Any, structure: Any, stacked: Sequence[bool], updates: Any) -> list[np.ndarray]:
    """The structural step's flags per leaf, shaped like the multipliers: ``()`` or ``(L, 1, ...)``."""
    flags = jax.tree.leaves(trainable)
    if len(flags) != structure.num_leaves:
        raise ValueError(f"trainable has {len(flags)} leaves but the parameters have {structure.num_leaves}; "
                         "build it with jt.trainable_mask(params, rules)")
    out = []
    for path, f, is_stacked, u in zip(leaf_paths(updates), flags, stacked, jax.tree.leaves(updates)):
        f = np.asarray(f, bool)
        if f.ndim and f.all() or f.ndim and not f.any():
            f = np.asarray(f.all())
        if f.ndim and not is_stacked:
            raise ValueError(f"{path}: per-layer trainable flags {f.tolist()} for a leaf the optimizer treats as one "
                             "unit; build the optimizer with layer_ids giving one id per layer for this stacked leaf")
        out.append(f.reshape((-1,) + (1,) * (np.ndim(u) - 1)) if f.ndim else f)
    return out


def scale_by_learning_rate_and_multipliers(
        groups: optax.GradientTransformationExtraArgs, learning_rate: float | optax.Schedule, factors: Any,
        stacked: Sequence[bool], runtime_trainable: Any = None) -> optax.GradientTransformationExtraArgs:
    """``groups`` (built with learning rate 1), then ``* learning_rate(count) * factor`` per leaf, 0 where a
    leaf is frozen now. ``runtime_trainable`` (a float tree, 1 = trains) puts factors and flags in the
    state as a :class:`MultiplierState`; else ``factors`` are compile-time constants.

    Example::

        >>> tx = scale_by_learning_rate_and_multipliers(
        ...     per_leaf(optax.sgd(1.0), {"w": False}), 0.5, {"w": np.float32(2.0)}, [False])
        >>> params = {"w": jnp.zeros(2)}
        >>> tx.update({"w": jnp.ones(2)}, tx.init(params), params)[0]["w"].tolist()
        [-1.0, -1.0]
    """
    def init(params):
        multipliers = optax.EmptyState()
        if runtime_trainable is not None:
            as_array = lambda x: jnp.asarray(x, jnp.float32)
            multipliers = MultiplierState(jax.tree.map(as_array, factors), jax.tree.map(as_array, runtime_trainable))
        return RuleOptimizerState(jnp.zeros((), jnp.int32), groups.init(params), multipliers)

    def update(updates, state, params=None, *, trainable=None, **extra_args):
        structure = jax.tree.structure(updates)
        runtime = isinstance(state.multipliers, MultiplierState)
        mults = structure.flatten_up_to(state.multipliers.lr_mult if runtime else factors)
        flags: list[Any] = [None] * structure.num_leaves
        if runtime:
            flags = [t > 0 for t in structure.flatten_up_to(state.multipliers.trainable)]
        if trainable is not None:
            static = _static_flags(trainable, structure, stacked, updates)
            flags = [s if f is None else jnp.logical_and(f, s) for f, s in zip(flags, static)]
        flag_tree = None if all(f is None for f in flags) else structure.unflatten(flags)
        updates, group_states = groups.update(updates, state.groups, params, trainable=flag_tree, **extra_args)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

        def scale(u, m, on):
            u = u * jnp.asarray(lr, u.dtype)
            if runtime or not np.all(m == 1.0):
                u = u * jnp.asarray(m, u.dtype)
            return u if on is None else jnp.where(on, u, jnp.zeros_like(u))

        scaled = [scale(u, m, on) for u, m, on in zip(structure.flatten_up_to(updates), mults, flags)]
        new_state = RuleOptimizerState(optax.safe_int32_increment(state.count), group_states, state.multipliers)
        return structure.unflatten(scaled), new_state

    return optax.GradientTransformationExtraArgs(init, update)

