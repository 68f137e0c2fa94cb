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

In *runtime* mode the multipliers (and a 0/1 "trainable" flag per leaf) are arrays in the
optimizer state, frozen leaves keep state too, and :func:`set_trainable` / :func:`set_lr_multipliers`
change the strategy between steps without recompiling the jitted step. In both modes
``tx.update(grads, state, params, trainable=mask)`` (what a structural step passes) trains only
the leaves of ``mask``.

Example::

    tx = jt.make_optimizer(params, rules, optax.adamw, learning_rate=jt.warmup_cosine(3e-5, 100, 1000),
                           layer_ids=model.layer_ids, layer_decay=0.9, weight_decay=0.01)
    opt_state = tx.init(params)
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune import forgetting
from jaxtune.errors import UserError, check_number
from jaxtune.rules import Rule, Settings, _layer_id, _resolve, l2_sp_strength, layer_factors, leaf_paths
from jaxtune.stage_fresh import MultiplierState, per_leaf, scale_by_learning_rate_and_multipliers

_FROZEN = "frozen"


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
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), factors)


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


def make_optimizer(params: Any, rules: Sequence[Rule], optimizer: Callable[..., optax.GradientTransformation] = optax.adamw,
                   learning_rate: float | optax.Schedule = 1e-3, *, layer_ids: Callable[[str], Any] | None = None,
                   layer_decay: float | None = None, runtime: bool = False, allow_unused: bool = False,
                   l2_sp: float = 0.0, l2_sp_decoupled: bool = False,
                   **optimizer_kwargs) -> optax.GradientTransformation:
    """Compiles a rule table into one optax optimizer.

    Args:
      params: the parameter pytree (dict, FrozenDict, ``nnx.State``, ...); only its structure,
        paths and shapes are used.
      rules: ordered ``(regex, jt.settings(...) | jt.freeze())`` pairs; first full match wins.
      optimizer: an optax constructor taking ``learning_rate`` (and ``weight_decay`` if it has one;
        otherwise non-zero decay is added as ``optax.add_decayed_weights`` before it).
      learning_rate: float or optax schedule (see :func:`warmup_cosine`, :func:`warmup_linear`).
      layer_ids: path -> layer index (embeddings 0, block i -> i+1, head L+1), or a sequence of
        indices for a stacked leaf. Needed for ``layer_decay``.
      layer_decay: LLRD factor: a leaf of layer ``l`` gets ``lr * layer_decay ** (L + 1 - l)``.
      runtime: keep multipliers and trainable flags as arrays in the state (frozen leaves keep
        optimizer state, which stays as it is while they are frozen), so :func:`set_trainable` /
        :func:`set_lr_multipliers` change the strategy without recompiling. Default (static):
        frozen leaves carry no state.
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
    labels, trainable, groups = [], [], {}
    for s in found:
        trainable.append(np.asarray(0.0 if s.frozen else 1.0, np.float32))
        if s.frozen and not runtime:
            labels.append(_FROZEN)
            continue
        # Runtime mode keeps frozen leaves' state; they take the strength they would have unfrozen.
        wd, strength = _weight_decay_of(s, default_wd), l2_sp_strength(s, l2_sp)
        label = f"wd={wd:g}" + (f",l2_sp={strength:g}" if strength else "")
        groups[label] = (wd, strength)
        labels.append(label)
    stacked = [np.ndim(f) > 0 for f in factors]
    stacked_tree = jax.tree_util.tree_unflatten(treedef, stacked)
    transforms = {label: _build(optimizer, wd, accepts_wd, optimizer_kwargs, strength, l2_sp_decoupled, stacked_tree)
                  for label, (wd, strength) in sorted(groups.items())}
    if _FROZEN in labels:
        transforms[_FROZEN] = optax.set_to_zero()
    partitioned = optax.partition(transforms, jax.tree_util.tree_unflatten(treedef, labels),
                                  mask_compatible_extra_args=True)
    runtime_trainable = None
    if runtime:
        runtime_trainable = jax.tree_util.tree_unflatten(
            treedef, [np.broadcast_to(t, f.shape).copy() for t, f in zip(trainable, factors)])
    factor_tree = jax.tree_util.tree_unflatten(treedef, factors)
    return scale_by_learning_rate_and_multipliers(partitioned, learning_rate, factor_tree, stacked, runtime_trainable)


def _replace_multiplier_state(opt_state: Any, fn: Callable[[MultiplierState], MultiplierState]) -> Any:
    hits = []

    def walk(node):
        if isinstance(node, MultiplierState):
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
        raise ValueError("this optimizer state has no runtime multipliers; build the optimizer with "
                         "jt.make_optimizer(..., runtime=True) to change the strategy during training")
    return new


def _refill(old_tree: Any, new_tree: Any, what: str) -> Any:
    old_leaves, treedef = jax.tree_util.tree_flatten(old_tree)
    new_leaves = jax.tree_util.tree_leaves(new_tree)
    if len(new_leaves) != len(old_leaves):
        raise ValueError(f"{what} has {len(new_leaves)} leaves but the parameters have {len(old_leaves)}; "
                         "pass a pytree with the parameters' structure")
    out = []
    for old, new in zip(old_leaves, new_leaves):
        new = np.asarray(new, np.float32)
        if new.size == old.size:
            new = new.reshape(old.shape)
        elif new.size != 1:
            raise ValueError(f"{what} has a leaf of shape {new.shape} where the optimizer keeps one of shape "
                             f"{old.shape}; per-layer values need a stacked leaf: build the optimizer with "
                             "layer_ids returning one id per layer for it")
        # Same shape and dtype as before: the jitted step sees identical avals and is not retraced.
        out.append(jnp.asarray(np.broadcast_to(new, old.shape), jnp.float32))
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


def unfreezing_stages(params: Any, layer_ids: Callable[[str], Any], rules: Sequence[Rule] | None = None,
                      num_stages: int | None = None) -> list[Any]:
    """Trainable masks of a gradual-unfreezing schedule (ULMFiT): the top layer group first, then one
    more group below per stage, until every (not rule-frozen) leaf trains.

    Layer ids are grouped into ``num_stages`` contiguous groups (default: one stage per distinct id).
    A stacked leaf gets a per-layer bool array.

    Example::

        stages = jt.unfreezing_stages(params, model.layer_ids, num_stages=3)
        opt_state = jt.set_trainable(opt_state, stages[0])   # head only
    """
    paths = leaf_paths(params)
    ids = [_layer_id(layer_ids, p) for p in paths]
    distinct = sorted({int(i) for a in ids for i in np.ravel(a)}, reverse=True)
    n = len(distinct) if num_stages is None else num_stages
    if not 1 <= n <= len(distinct):
        raise UserError(f"num_stages={num_stages} but the model has {len(distinct)} distinct layer ids",
                        config_hint=f"(optim.unfreeze_stages: at most {len(distinct)} for this model)")
    groups = np.array_split(np.asarray(distinct), n)
    allowed = [True] * len(paths)
    if rules is not None:
        allowed = [not s.frozen for s in _resolve(params, rules)[1]]
    treedef = jax.tree_util.tree_structure(params)
    stages = []
    for k in range(n):
        threshold = int(groups[k].min())
        masks = [(a >= threshold) & ok if a.ndim else bool(a >= threshold and ok) for a, ok in zip(ids, allowed)]
        stages.append(jax.tree_util.tree_unflatten(treedef, masks))
    return stages

