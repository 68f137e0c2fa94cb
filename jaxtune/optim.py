"""Rule table -> one optax optimizer: frozen groups without state, per-group weight decay, LLRD.

The optimizer is ``optax.partition(...)`` followed by the learning rate and the multipliers:

* ``optax.partition`` gives every frozen leaf ``optax.set_to_zero()`` (no state at all) and every
  trainable leaf the user's optimizer at learning rate 1, one group per distinct weight-decay
  value; inside a group every leaf has its own optimizer state and step count, which stand still
  while the leaf is frozen (:mod:`jaxtune.stage_fresh`), so a group unfrozen at step k moves as a
  fresh optimizer started at k would;
* then each leaf's update is scaled by the learning rate of the global step and by its multiplier
  (``lr_mult * layer_decay ** (top - layer_id)``), and zeroed where the leaf is frozen now. Scaling
  an Adam(W) update equals scaling its learning rate, decoupled weight decay included, so one
  optimizer per group serves every layer. (The optimizer's learning rate must be a final scale of
  its update, as in optax's adam(w), sgd, lamb, lion, ...)

In *runtime* mode one group holds every leaf (frozen ones keep state too, standing still while
frozen) and the strategy is arrays in the optimizer state: multipliers and a 0/1 "trainable" flag
per leaf, the weight decay per leaf (the optimizer is built with ``weight_decay=0`` and the decay
applied after it, decoupled, as ``optax.adamw`` does) and the L2-SP strengths. :func:`set_trainable`,
:func:`set_lr_multipliers`, :func:`set_weight_decay` and :func:`set_l2_sp` change them between steps
without recompiling the jitted step, and states with different values stack into members of one
step (:func:`jaxtune.stack_members`). In both modes
``tx.update(grads, state, params, trainable=mask)`` (what a structural step passes) trains only
the leaves of ``mask``.

Example::

    tx = jt.make_optimizer(params, rules, optax.adamw, learning_rate=jt.warmup_cosine(3e-5, 100, 1000),
                           layer_ids=model.layer_ids, layer_decay=0.9, weight_decay=0.01)
    opt_state = tx.init(params)
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune import forgetting
from jaxtune.errors import UserError, check_number
from jaxtune.rules import (Rule, Settings, _resolve, l2_sp_strength, layer_factors, leaf_paths, strip_variables,
                           tree_structure)
from jaxtune.stage_fresh import MultiplierState, per_leaf, scale_by_learning_rate_and_multipliers
from jaxtune.unfreezing import unfreezing_stage, unfreezing_stages  # noqa: F401  (still importable from here)

_FROZEN = "frozen"
_RUNTIME = "runtime"


def _check_schedule_args(peak_value: Any, warmup_steps: Any, total_steps: Any, end_value: Any) -> None:
    check_number("peak_value", peak_value, low=0.0, low_open=True)
    check_number("total_steps", total_steps, low=1, integer=True)
    check_number("warmup_steps", warmup_steps, low=0, integer=True)
    check_number("end_value", end_value, low=0.0)
    if warmup_steps > total_steps:
        raise UserError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps})")


def _check_optimizer_args(learning_rate: Any, layer_decay: Any, l2_sp: Any, optimizer_kwargs: dict) -> None:
    """The values ``make_optimizer`` takes from its caller, checked before any work."""
    if not callable(learning_rate):
        check_number("learning_rate", learning_rate, low=0.0, low_open=True)
    if layer_decay is not None:
        check_number("layer_decay", layer_decay, low=0.0, high=1.0, low_open=True)
    check_number("l2_sp", l2_sp, low=0.0)
    if "weight_decay" in optimizer_kwargs:
        check_number("weight_decay", optimizer_kwargs["weight_decay"], low=0.0)


def warmup_cosine(peak_value: float, warmup_steps: int, total_steps: int, end_value: float = 0.0) -> optax.Schedule:
    """Linear warm-up from 0 to ``peak_value``, then cosine decay to ``end_value`` at ``total_steps``.

    Example::

        >>> sched = warmup_cosine(1e-3, warmup_steps=10, total_steps=100)
        >>> float(sched(10))
        0.001
    """
    _check_schedule_args(peak_value, warmup_steps, total_steps, end_value)
    return optax.warmup_cosine_decay_schedule(0.0, peak_value, warmup_steps, total_steps, end_value)


def warmup_linear(peak_value: float, warmup_steps: int, total_steps: int, end_value: float = 0.0) -> optax.Schedule:
    """Linear warm-up from 0 to ``peak_value``, then linear decay to ``end_value`` at ``total_steps``.

    Example::

        >>> sched = warmup_linear(1e-3, warmup_steps=10, total_steps=110)
        >>> float(sched(60))
        0.0005
    """
    _check_schedule_args(peak_value, warmup_steps, total_steps, end_value)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak_value, warmup_steps),
         optax.linear_schedule(peak_value, end_value, total_steps - warmup_steps)], [warmup_steps])


def lr_multipliers(params: Any, rules: Sequence[Rule], layer_ids: Callable[[str], Any] | None = None,
                   layer_decay: float | None = None, **match_kwargs) -> Any:
    """Pytree of per-leaf learning-rate multipliers of a rule table (frozen leaves included).

    Example::

        >>> lr_multipliers({"emb": 0., "head": 0.}, [(".*", settings())],
        ...                layer_ids=lambda p: 0 if p == "emb" else 1, layer_decay=0.5)
        {'emb': array(0.5, dtype=float32), 'head': array(1., dtype=float32)}
    """
    factors = layer_factors(params, rules, layer_ids, layer_decay, **match_kwargs)
    return jax.tree_util.tree_unflatten(tree_structure(params), factors)


def _like(reference: Any, pure: Any) -> Any:
    """``pure`` (a tree without ``nnx.Variable`` objects) in ``reference``'s structure: wrapped back in
    the ``Variable`` objects ``reference`` has, if any."""
    if strip_variables(reference) is reference:
        return pure
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(reference), jax.tree_util.tree_leaves(pure))


def _check_multipliers(multipliers: Any) -> None:
    for path, m in zip(leaf_paths(multipliers), jax.tree_util.tree_leaves(multipliers)):
        m = np.asarray(m)
        if not np.issubdtype(m.dtype, np.number) or not np.all(np.isfinite(m)) or np.any(m < 0):
            raise UserError(f"multiplier at {path or '(root)'} is {m.tolist()!r}; a learning-rate multiplier is a "
                            "finite number >= 0 (an array of them, one per layer, for a stacked leaf)",
                            hint="Build the tree with jt.lr_multipliers(params, rules, layer_ids, layer_decay).")


def scale_by_multipliers(multipliers: Any) -> optax.GradientTransformation:
    """Multiplies each leaf's update by its learning-rate multiplier: the per-leaf rates of a rule
    table (``lr_mult``, layer-wise decay) in an optax chain of your own.

    Put it after the optimizer: scaling an Adam(W) update by ``m`` equals scaling its learning rate
    by ``m``, decoupled weight decay included (what :func:`make_optimizer` does inside).
    ``multipliers`` has the parameters' structure (numbers, or a ``(L, 1, ...)`` array for a stacked
    leaf), e.g. :func:`lr_multipliers`; built from an ``nnx.State``, it fits its ``nnx.as_pure``
    arrays too. Inside ``optax.partition``/``multi_transform``/``masked`` the leaves the group does
    not hold pass through. No state; the multipliers are constants of the compiled step.

    Example::

        >>> tx = optax.chain(optax.sgd(1.0), scale_by_multipliers({"emb": 0.5, "head": 2.0}))
        >>> params = {"emb": jnp.ones(2), "head": jnp.ones(2)}
        >>> updates, _ = tx.update(params, tx.init(params))
        >>> updates["emb"].tolist(), updates["head"].tolist()
        ([-0.5, -0.5], [-2.0, -2.0])
    """
    multipliers = strip_variables(multipliers)
    _check_multipliers(multipliers)
    expected = jax.tree_util.tree_structure(multipliers)

    def scale(m, u):
        if u is None or isinstance(u, optax.MaskedNode):
            return u
        return u * jnp.asarray(m, u.dtype) if np.any(np.asarray(m) != 1.0) else u

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        pure = strip_variables(updates)
        try:
            scaled = jax.tree_util.tree_map(scale, multipliers, pure)
        except ValueError:
            raise ValueError(f"scale_by_multipliers: the multipliers ({expected}) do not fit the updates "
                             f"({jax.tree_util.tree_structure(pure)}); build them from the same params as the "
                             "optimizer, e.g. jt.lr_multipliers(params, rules, model.layer_ids, 0.8)") from None
        return _like(updates, scaled), state

    return optax.GradientTransformation(init, update)


def _accepting_variables(tx: optax.GradientTransformationExtraArgs) -> optax.GradientTransformationExtraArgs:
    """``tx`` for params, updates and masks as an ``nnx.State`` of ``Variable`` objects or as plain arrays
    (what ``nnx.Optimizer`` passes: ``init`` gets the former, ``update`` the latter); updates come
    back in the structure of the ``updates`` given."""
    def init(params):
        return tx.init(strip_variables(params))

    def update(updates, state, params=None, **extra_args):
        extra_args = {k: strip_variables(v) for k, v in extra_args.items()}
        new, state = tx.update(strip_variables(updates), state, strip_variables(params), **extra_args)
        return _like(updates, new), state

    return optax.GradientTransformationExtraArgs(init, update)


def _default_weight_decay(optimizer: Callable, kwargs: dict) -> tuple[bool, float]:
    try:
        params = inspect.signature(optimizer).parameters
    except (TypeError, ValueError):
        params = {}
    accepts = "weight_decay" in params
    if "weight_decay" in kwargs:
        return accepts, float(kwargs.pop("weight_decay"))
    default = params["weight_decay"].default if accepts else 0.0
    return accepts, float(default) if isinstance(default, (int, float)) else 0.0


def _weight_decay_of(s: Settings, default: float) -> float:
    if s.weight_decay is None or s.weight_decay is True:
        return default
    if s.weight_decay is False:
        return 0.0
    return float(s.weight_decay)


def _build(optimizer: Callable, wd: float, accepts_wd: bool, kwargs: dict, anchor_strength: float, decoupled: bool,
           stacked: Any) -> optax.GradientTransformation:
    """One group's optimizer at learning rate 1 (the rate is applied after it, from the global step),
    with per-leaf, stage-fresh statistics (:func:`jaxtune.stage_fresh.per_leaf`)."""
    if accepts_wd:
        tx = optimizer(learning_rate=1.0, weight_decay=wd, **kwargs)
    else:
        tx = optimizer(learning_rate=1.0, **kwargs)
        # Coupled (L2) decay for optimizers without their own: equal to decoupled decay for SGD.
        tx = optax.chain(optax.add_decayed_weights(wd), tx) if wd else tx
    tx = per_leaf(tx, stacked)
    if not anchor_strength:
        return tx
    if decoupled:  # pulled towards the anchor after the optimizer, as AdamW decays weights
        return optax.chain(tx, forgetting.anchor_decay(anchor_strength, 1.0))
    # L2-SP as a loss term: its gradient goes in before the optimizer, like the data gradient.
    return optax.chain(forgetting.l2_sp(anchor_strength), tx)


class WeightDecayState(NamedTuple):
    """Runtime-mode weight decay: a float32 decay per leaf (per layer for a stacked leaf)."""

    weight_decay: Any


def _decay_by_state(weight_decay: Any, decoupled: bool) -> optax.GradientTransformation:
    """Weight decay read from the state, at learning rate 1 (the rate and the multipliers come after):
    decoupled ``u - wd * w`` after the optimizer (what ``optax.adamw`` adds to Adam's update), or
    coupled ``g + wd * w`` before it.

    Example::

        >>> tx = _decay_by_state({"w": np.float32(0.5)}, decoupled=True)
        >>> params = {"w": jnp.full(2, 2.0)}
        >>> tx.update({"w": jnp.zeros(2)}, tx.init(params), params)[0]["w"].tolist()
        [-1.0, -1.0]
    """
    sign = -1.0 if decoupled else 1.0

    def init(params):
        del params
        return WeightDecayState(jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), weight_decay))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("runtime weight decay needs the parameters: call tx.update(grads, opt_state, params)")
        decayed = jax.tree_util.tree_map(lambda u, p, wd: u + (sign * wd * p).astype(u.dtype), updates, params,
                                         state.weight_decay)
        return decayed, state

    return optax.GradientTransformation(init, update)


def _per_leaf_values(values: list[float], factors: list[np.ndarray]) -> list[np.ndarray]:
    """One float32 value per leaf, shaped like its multiplier (per layer for a stacked leaf)."""
    return [np.broadcast_to(np.float32(v), f.shape).copy() for v, f in zip(values, factors)]


def _runtime_group(found: list[Settings], factors: list[np.ndarray], treedef: Any, optimizer: Callable,
                   accepts_wd: bool, default_wd: float, kwargs: dict, l2_sp: float, decoupled: bool,
                   stacked: Any) -> optax.GradientTransformation:
    """Runtime mode's one group: one ``optimizer`` (learning rate 1, ``weight_decay=0``) per leaf,
    stage-fresh (:func:`jaxtune.stage_fresh.per_leaf`), with the weight decay and the L2-SP
    strengths as per-leaf arrays in the state. Frozen leaves take the values they would have
    unfrozen; only leaves with a non-zero strength keep an anchor."""
    unflatten = lambda leaves: jax.tree_util.tree_unflatten(treedef, leaves)
    wd = _per_leaf_values([_weight_decay_of(s, default_wd) for s in found], factors)
    strengths = _per_leaf_values([l2_sp_strength(s, l2_sp) for s in found], factors)
    base = optimizer(learning_rate=1.0, weight_decay=0.0, **kwargs) if accepts_wd else \
        optimizer(learning_rate=1.0, **kwargs)
    decay = _decay_by_state(unflatten(wd), decoupled=accepts_wd)
    chain = [per_leaf(base, stacked), decay] if accepts_wd else [decay, per_leaf(base, stacked)]
    anchored = [bool(np.any(x > 0)) for x in strengths]
    if any(anchored):
        strength_tree = unflatten([x if a else optax.MaskedNode() for x, a in zip(strengths, anchored)])
        if decoupled:
            chain.append(forgetting.anchor_decay(strength_tree, 1.0, unflatten(anchored), runtime=True))
        else:
            chain.insert(0, forgetting.l2_sp(strength_tree, unflatten(anchored), runtime=True))
    return optax.chain(*chain)


def make_optimizer(params: Any, rules: Sequence[Rule], optimizer: Callable[..., optax.GradientTransformation] = optax.adamw,
                   learning_rate: float | optax.Schedule = 1e-3, *, layer_ids: Callable[[str], Any] | None = None,
                   layer_decay: float | None = None, runtime: bool = False, allow_unused: bool = False,
                   l2_sp: float = 0.0, l2_sp_decoupled: bool = False,
                   **optimizer_kwargs) -> optax.GradientTransformation:
    """Compiles a rule table into one optax optimizer.

    Args:
      params: the parameter pytree (dict, FrozenDict, ``nnx.State``, ...); only its structure,
        paths and shapes are used. Built from an ``nnx.State`` (or its ``nnx.as_pure`` arrays),
        the optimizer takes either form, so it works in ``nnx.Optimizer(model, tx, wrt=nnx.Param)``.
      rules: ordered ``(regex, jt.settings(...) | jt.freeze())`` pairs; first full match wins.
      optimizer: an optax constructor taking ``learning_rate`` (and ``weight_decay`` if it has one;
        otherwise non-zero decay is added as ``optax.add_decayed_weights`` before it).
      learning_rate: float or optax schedule (see :func:`warmup_cosine`, :func:`warmup_linear`).
      layer_ids: path -> layer index (embeddings 0, block i -> i+1, head L+1), or a sequence of
        indices for a stacked leaf. Needed for ``layer_decay``.
      layer_decay: LLRD factor: a leaf of layer ``l`` gets ``lr * layer_decay ** (L + 1 - l)``.
      runtime: keep multipliers, trainable flags, weight decay and L2-SP strengths as per-leaf
        arrays in the state (frozen leaves keep optimizer state, which stays as it is while they
        are frozen; one group, its ``optimizer`` built with ``weight_decay=0`` and the decay applied
        after it as ``-lr(t) * wd * w``), so :func:`set_trainable`, :func:`set_lr_multipliers`,
        :func:`set_weight_decay` and :func:`set_l2_sp` change the strategy without recompiling.
        Only leaves built with a non-zero L2-SP strength keep an anchor. The decay equals the
        optimizer's own for those that decay as AdamW does (``adamw``, ``nadamw``, ``adamaxw``,
        ``lion``), not for one that transforms it further (``optax.lamb``'s trust ratio).
        Default (static): frozen leaves carry no state.
      allow_unused: do not raise for rules that match no parameter.
      l2_sp: L2-SP strength of the groups whose rule leaves ``l2_sp`` unset (default 0: off). A
        group with a strength keeps its starting weights (those given to ``init``) in the state
        and adds ``strength * (w - w_start)`` to its gradient (:func:`jaxtune.l2_sp`).
      l2_sp_decoupled: instead, pull those groups towards their starting weights after the
        optimizer by ``lr * strength * (w - w_start)`` (:func:`jaxtune.anchor_decay`), as AdamW
        decouples weight decay.
      **optimizer_kwargs: passed to ``optimizer`` (e.g. ``weight_decay=0.01, b2=0.98``).

    Example::

        rules = [(r"embeddings/.*", jt.freeze()), (r".*(bias|scale)", jt.settings(weight_decay=False)),
                 (r".*", jt.settings())]
        tx = jt.make_optimizer(params, rules, optax.adamw, 1e-4, weight_decay=0.01,
                               layer_ids=model.layer_ids, layer_decay=0.8)
    """
    _check_optimizer_args(learning_rate, layer_decay, l2_sp, optimizer_kwargs)
    paths, found, treedef = _resolve(params, rules, allow_unused=allow_unused)
    factors = layer_factors(params, rules, layer_ids, layer_decay, allow_unused=allow_unused)
    accepts_wd, default_wd = _default_weight_decay(optimizer, optimizer_kwargs)
    stacked = [np.ndim(f) > 0 for f in factors]
    stacked_tree = jax.tree_util.tree_unflatten(treedef, stacked)
    trainable = [np.asarray(0.0 if s.frozen else 1.0, np.float32) for s in found]
    if runtime:
        labels = [_RUNTIME] * len(found)
        transforms = {_RUNTIME: _runtime_group(found, factors, treedef, optimizer, accepts_wd, default_wd,
                                               optimizer_kwargs, l2_sp, l2_sp_decoupled, stacked_tree)}
    else:
        labels, transforms = _static_groups(found, optimizer, accepts_wd, default_wd, optimizer_kwargs, l2_sp,
                                            l2_sp_decoupled, stacked_tree)
    partitioned = optax.partition(transforms, jax.tree_util.tree_unflatten(treedef, labels),
                                  mask_compatible_extra_args=True)
    runtime_trainable = None
    if runtime:
        runtime_trainable = jax.tree_util.tree_unflatten(
            treedef, [np.broadcast_to(t, f.shape).copy() for t, f in zip(trainable, factors)])
    factor_tree = jax.tree_util.tree_unflatten(treedef, factors)
    return _accepting_variables(
        scale_by_learning_rate_and_multipliers(partitioned, learning_rate, factor_tree, stacked, runtime_trainable))


def _static_groups(found: list[Settings], optimizer: Callable, accepts_wd: bool, default_wd: float, kwargs: dict,
                   l2_sp: float, decoupled: bool, stacked: Any) -> tuple[list[str], dict]:
    """Static mode: frozen leaves get ``optax.set_to_zero()``, the others one group per distinct
    (weight decay, L2-SP strength). Returns each leaf's label and each label's transform."""
    labels, groups = [], {}
    for s in found:
        if s.frozen:
            labels.append(_FROZEN)
            continue
        wd, strength = _weight_decay_of(s, default_wd), l2_sp_strength(s, l2_sp)
        label = f"wd={wd:g}" + (f",l2_sp={strength:g}" if strength else "")
        groups[label] = (wd, strength)
        labels.append(label)
    transforms = {label: _build(optimizer, wd, accepts_wd, kwargs, strength, decoupled, stacked)
                  for label, (wd, strength) in sorted(groups.items())}
    if _FROZEN in labels:
        transforms[_FROZEN] = optax.set_to_zero()
    return labels, transforms


def _replace_state(opt_state: Any, kind: type | tuple[type, ...], fn: Callable[[Any], Any], missing: str) -> Any:
    """``opt_state`` with every sub-state of type ``kind`` replaced by ``fn(sub_state)``."""
    hits = []

    def walk(node):
        if isinstance(node, kind):
            hits.append(True)
            return fn(node)
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*(walk(c) for c in node))
        if isinstance(node, (tuple, list)):
            return type(node)(walk(c) for c in node)
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return node

    new = walk(opt_state)
    if not hits:
        raise ValueError(missing)
    return new


_NOT_RUNTIME = ("this optimizer state has no runtime {what}; build the optimizer with "
                "jt.make_optimizer(..., runtime=True) to change {what} during training")


def _replace_multiplier_state(opt_state: Any, fn: Callable[[MultiplierState], MultiplierState]) -> Any:
    return _replace_state(opt_state, MultiplierState, fn, _NOT_RUNTIME.format(what="multipliers"))


def _refill_leaf(old: Any, new: Any, what: str, path: str) -> jax.Array:
    new = np.asarray(new, np.float32)
    if new.size == old.size:
        new = new.reshape(old.shape)
    elif new.size != 1:
        raise ValueError(f"{what} has a leaf of shape {new.shape} at {path} where the optimizer keeps one of shape "
                         f"{old.shape}; per-layer values need a stacked leaf: build the optimizer with "
                         "layer_ids returning one id per layer for it")
    # Same shape and dtype as before: the jitted step sees identical avals and is not retraced.
    return jnp.asarray(np.broadcast_to(new, old.shape), jnp.float32)


def _refill(old_tree: Any, new_tree: Any, what: str) -> Any:
    """``new_tree``'s values in ``old_tree``'s arrays; a leaf the state keeps no value for
    (``optax.MaskedNode``) must get 0."""
    is_masked = lambda x: isinstance(x, optax.MaskedNode)
    old_leaves, treedef = jax.tree_util.tree_flatten(old_tree, is_leaf=is_masked)
    new_leaves = jax.tree_util.tree_leaves(new_tree)
    if len(new_leaves) != len(old_leaves):
        raise ValueError(f"{what} has {len(new_leaves)} leaves but the parameters have {len(old_leaves)}; "
                         "pass a pytree with the parameters' structure")
    out = []
    for path, old, new in zip(leaf_paths(new_tree), old_leaves, new_leaves):
        if is_masked(old):
            if np.any(np.asarray(new) != 0):
                raise ValueError(f"{what}: {path} has no anchor in the optimizer state, so its strength must stay 0; "
                                 "build the optimizer with a non-zero l2_sp for its group (rule or make_optimizer's "
                                 "l2_sp=) to keep one, then set any strength, 0 included")
            out.append(old)
            continue
        out.append(_refill_leaf(old, new, what, path))
    return jax.tree_util.tree_unflatten(treedef, out)


def set_trainable(opt_state: Any, mask: Any) -> Any:
    """Runtime mode: sets which leaves train (True/1) or stay frozen (False/0), without recompiling.

    ``mask`` has the parameters' structure (e.g. from :func:`jaxtune.trainable_mask` or
    :func:`unfreezing_stages`); a stacked leaf may take one flag per layer.

    Example::

        opt_state = jt.set_trainable(opt_state, jt.trainable_mask(params, stage_rules))
    """
    return _replace_multiplier_state(opt_state, lambda s: s._replace(trainable=_refill(s.trainable, mask, "mask")))


def set_lr_multipliers(opt_state: Any, multipliers: Any) -> Any:
    """Runtime mode: replaces the per-leaf learning-rate multipliers, without recompiling.

    Example::

        opt_state = jt.set_lr_multipliers(opt_state, jt.lr_multipliers(params, new_rules, model.layer_ids, 0.8))
    """
    return _replace_multiplier_state(opt_state, lambda s: s._replace(lr_mult=_refill(s.lr_mult, multipliers, "multipliers")))


def set_weight_decay(opt_state: Any, weight_decay: Any) -> Any:
    """Runtime mode: replaces the per-leaf weight decay (a pytree with the parameters' structure, a
    number per leaf; per layer for a stacked leaf), without recompiling.

    Runtime mode applies it as AdamW does, decoupled: ``w -= lr(t) * mult * wd * w`` after an
    optimizer that takes ``weight_decay`` (built with 0); before one without, as ``g += wd * w``.
    A frozen leaf is not decayed.

    Example::

        opt_state = jt.set_weight_decay(opt_state, jax.tree.map(lambda _: 0.05, params))
    """
    return _replace_state(opt_state, WeightDecayState,
                          lambda s: s._replace(weight_decay=_refill(s.weight_decay, weight_decay, "weight decay")),
                          _NOT_RUNTIME.format(what="weight decay"))


def set_l2_sp(opt_state: Any, strengths: Any) -> Any:
    """Runtime mode: replaces the per-leaf L2-SP strengths (a pytree with the parameters' structure),
    without recompiling. Only leaves built with a non-zero strength keep an anchor; the others
    must get 0.

    Example::

        opt_state = jt.set_l2_sp(opt_state, jax.tree.map(lambda _: 0.1, params))
    """
    kinds = (forgetting.RuntimeL2SPState, forgetting.RuntimeAnchorDecayState)
    return _replace_state(opt_state, kinds, lambda s: s._replace(strength=_refill(s.strength, strengths, "l2_sp")),
                          "this optimizer state has no runtime L2-SP strengths; build the optimizer with "
                          "jt.make_optimizer(..., runtime=True) and a non-zero l2_sp (rule or default)")
