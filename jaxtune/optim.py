"""Rule table -> one optax optimizer: frozen groups without state, per-group weight decay, LLRD.

The optimizer is ``chain(partition(...), multipliers)``:

* ``optax.partition`` gives every frozen leaf ``optax.set_to_zero()`` (no state at all) and every
  trainable leaf the user's optimizer, one instance per distinct weight-decay value;
* a multiplier transform then scales each leaf's update by its learning-rate multiplier
  (``lr_mult * layer_decay ** (top - layer_id)``). Scaling an Adam(W) update equals scaling its
  learning rate, decoupled weight decay included, so one optimizer instance serves every layer.

In *runtime* mode one optimizer instance serves every leaf (frozen ones keep state too) and the
strategy is arrays in the optimizer state: multipliers and a 0/1 "trainable" factor per leaf, the
weight decay per leaf (applied after the optimizer, decoupled, as ``optax.adamw`` does) and the
L2-SP strengths. :func:`set_trainable`, :func:`set_lr_multipliers`, :func:`set_weight_decay` and
:func:`set_l2_sp` change them between steps without recompiling the jitted step, and states with
different values stack into members of one step (:func:`jaxtune.stack_members`).

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
from jaxtune.rules import Rule, Settings, _layer_id, _resolve, l2_sp_strength, layer_factors, leaf_paths

_FROZEN = "frozen"


def warmup_cosine(peak_value: float, warmup_steps: int, total_steps: int, end_value: float = 0.0) -> optax.Schedule:
    """Linear warm-up from 0 to ``peak_value``, then cosine decay to ``end_value`` at ``total_steps``.

    Example::

        >>> sched = warmup_cosine(1e-3, warmup_steps=10, total_steps=100)
        >>> float(sched(10))
        0.001
    """
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps})")
    return optax.warmup_cosine_decay_schedule(0.0, peak_value, warmup_steps, total_steps, end_value)


def warmup_linear(peak_value: float, warmup_steps: int, total_steps: int, end_value: float = 0.0) -> optax.Schedule:
    """Linear warm-up from 0 to ``peak_value``, then linear decay to ``end_value`` at ``total_steps``.

    Example::

        >>> sched = warmup_linear(1e-3, warmup_steps=10, total_steps=110)
        >>> float(sched(60))
        0.0005
    """
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps})")
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


def _scale_by_constants(factors: Any) -> optax.GradientTransformation:
    """Multiplies each update by a compile-time constant (no state); factors of 1 cost nothing."""

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map(
            lambda u, f: u if np.all(f == 1.0) else u * jnp.asarray(f, u.dtype), updates, factors)
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class MultiplierState(NamedTuple):
    """Runtime-mode strategy in the optimizer state: update = update * lr_mult * trainable."""

    lr_mult: Any
    trainable: Any


def _scale_by_state(lr_mult: Any, trainable: Any) -> optax.GradientTransformation:
    def init(params):
        del params
        as_array = lambda x: jnp.asarray(x, jnp.float32)
        return MultiplierState(jax.tree_util.tree_map(as_array, lr_mult), jax.tree_util.tree_map(as_array, trainable))

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map(lambda u, m, t: u * (m * t).astype(u.dtype), updates, state.lr_mult, state.trainable)
        return scaled, state

    return optax.GradientTransformation(init, update)


class WeightDecayState(NamedTuple):
    """Runtime-mode weight decay: updates seen (for the schedule) and a float32 decay per leaf."""

    count: jax.Array
    weight_decay: Any


def _decay_by_state(weight_decay: Any, learning_rate: Any, decoupled: bool) -> optax.GradientTransformation:
    """Weight decay read from the state: decoupled ``u - lr(t) * wd * w`` after the optimizer (what
    ``optax.adamw`` does: ``-lr(t) * (adam + wd * w)``), or coupled ``g + wd * w`` before it."""

    def init(params):
        del params
        return WeightDecayState(jnp.zeros((), jnp.int32),
                                jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), weight_decay))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("runtime weight decay needs the parameters: call tx.update(grads, opt_state, params)")
        if decoupled:
            lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
            decayed = jax.tree_util.tree_map(lambda u, p, wd: u - (lr * wd * p).astype(u.dtype), updates, params,
                                             state.weight_decay)
        else:
            decayed = jax.tree_util.tree_map(lambda g, p, wd: g + (wd * p).astype(g.dtype), updates, params,
                                             state.weight_decay)
        return decayed, state._replace(count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init, update)


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


def _build(optimizer: Callable, learning_rate: Any, wd: float, accepts_wd: bool, kwargs: dict,
           anchor_strength: float, decoupled: bool) -> optax.GradientTransformation:
    if accepts_wd:
        tx = optimizer(learning_rate=learning_rate, weight_decay=wd, **kwargs)
    else:
        tx = optimizer(learning_rate=learning_rate, **kwargs)
        # Coupled (L2) decay for optimizers without their own: equal to decoupled decay for SGD.
        tx = optax.chain(optax.add_decayed_weights(wd), tx) if wd else tx
    if not anchor_strength:
        return tx
    if decoupled:  # pulled towards the anchor after the optimizer, as AdamW decays weights
        return optax.chain(tx, forgetting.anchor_decay(anchor_strength, learning_rate))
    # L2-SP as a loss term: its gradient goes in before the optimizer, like the data gradient.
    return optax.chain(forgetting.l2_sp(anchor_strength), tx)


def _per_leaf(values: list[float], factors: list[np.ndarray]) -> list[np.ndarray]:
    """One float32 value per leaf, shaped like its multiplier (per layer for a stacked leaf)."""
    return [np.broadcast_to(np.float32(v), f.shape).copy() for v, f in zip(values, factors)]


def _runtime_optimizer(found: list[Settings], factors: list[np.ndarray], treedef: Any, optimizer: Callable,
                       learning_rate: Any, accepts_wd: bool, default_wd: float, kwargs: dict, l2_sp: float,
                       decoupled: bool) -> optax.GradientTransformation:
    """One ``optimizer`` instance for every leaf (frozen ones keep state); weight decay, L2-SP
    strengths, multipliers and trainable flags are per-leaf arrays in the state."""
    unflatten = lambda leaves: jax.tree_util.tree_unflatten(treedef, leaves)
    # Frozen leaves take the values they would have unfrozen (the trainable factor zeroes them).
    wd = _per_leaf([_weight_decay_of(s, default_wd) for s in found], factors)
    strengths = _per_leaf([l2_sp_strength(s, l2_sp) for s in found], factors)
    base = optimizer(learning_rate=learning_rate, weight_decay=0.0, **kwargs) if accepts_wd else \
        optimizer(learning_rate=learning_rate, **kwargs)
    decay = _decay_by_state(unflatten(wd), learning_rate, decoupled=accepts_wd)
    chain = [base, decay] if accepts_wd else [decay, base]
    anchored = [bool(np.any(x > 0)) for x in strengths]
    if any(anchored):  # an anchor (one copy) only for the leaves with a strength
        strength_tree = unflatten([x if a else optax.MaskedNode() for x, a in zip(strengths, anchored)])
        if decoupled:
            chain.append(forgetting.anchor_decay(strength_tree, learning_rate, unflatten(anchored), runtime=True))
        else:
            chain.insert(0, forgetting.l2_sp(strength_tree, unflatten(anchored), runtime=True))
    trainable = [np.broadcast_to(np.float32(0.0 if s.frozen else 1.0), f.shape).copy() for s, f in zip(found, factors)]
    return optax.chain(*chain, _scale_by_state(unflatten(factors), unflatten(trainable)))


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
      runtime: keep multipliers, trainable flags, weight decay and L2-SP strengths as per-leaf arrays
        in the state (frozen leaves keep optimizer state; one ``optimizer`` instance built with
        ``weight_decay=0``, the decay applied after it as ``-lr(t) * wd * w``), so
        :func:`set_trainable`, :func:`set_lr_multipliers`, :func:`set_weight_decay` and
        :func:`set_l2_sp` change the strategy without recompiling. Only leaves built with a
        non-zero L2-SP strength keep an anchor. The decay equals the optimizer's own for those that
        decay as AdamW does (``adamw``, ``nadamw``, ``adamaxw``, ``lion``), not for one that
        transforms it further (``optax.lamb``'s trust ratio). Default (static): frozen leaves
        carry no state.
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
    paths, found, treedef = _resolve(params, rules, allow_unused=allow_unused)
    factors = layer_factors(params, rules, layer_ids, layer_decay, allow_unused=allow_unused)
    accepts_wd, default_wd = _default_weight_decay(optimizer, optimizer_kwargs)
    if l2_sp < 0:
        raise ValueError(f"l2_sp must be >= 0, got {l2_sp}")
    if runtime:
        return _runtime_optimizer(found, factors, treedef, optimizer, learning_rate, accepts_wd, default_wd,
                                  optimizer_kwargs, l2_sp, l2_sp_decoupled)
    labels, groups = [], {}
    for s in found:
        if s.frozen:
            labels.append(_FROZEN)
            continue
        wd, strength = _weight_decay_of(s, default_wd), l2_sp_strength(s, l2_sp)
        label = f"wd={wd:g}" + (f",l2_sp={strength:g}" if strength else "")
        groups[label] = (wd, strength)
        labels.append(label)
    transforms = {label: _build(optimizer, learning_rate, wd, accepts_wd, optimizer_kwargs, strength, l2_sp_decoupled)
                  for label, (wd, strength) in sorted(groups.items())}
    if _FROZEN in labels:
        transforms[_FROZEN] = optax.set_to_zero()
    label_tree = jax.tree_util.tree_unflatten(treedef, labels)
    scale = _scale_by_constants(jax.tree_util.tree_unflatten(treedef, factors))
    return optax.chain(optax.partition(transforms, label_tree), scale)


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

    Runtime mode applies it as AdamW does, decoupled: ``w -= lr(t) * wd * w`` after an optimizer
    that takes ``weight_decay`` (built with 0), scaled by the leaf's multiplier; before one
    without, as ``g += wd * w``.

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
        raise ValueError(f"num_stages={num_stages} but the model has {len(distinct)} distinct layer ids")
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

