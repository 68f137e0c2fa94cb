"""Many variants of one fine-tuning run in one compiled step: members stacked on a leading axis.

A *member* is one :class:`jaxtune.TrainState` (step, params, optimizer state, model state, RNG key).
N members built with the same optimizer and model (the same tree structure and shapes) but
different values stack on axis 0 (:func:`stack_members`), and :func:`make_member_step` (or
``jt.make_train_step(..., members=N)``) runs ``jax.vmap`` of the pure single-member step
(:func:`jaxtune.train_step_fn`) over them: one compilation serves all N.

Members may differ in anything that is an array of the state:

* seeds: head initialisation (different ``params``), dropout (``rng``), data order (a batch per
  member, ``per_member_batch=True``);
* runtime-mode strategy (``jt.make_optimizer(..., runtime=True)``): learning-rate multipliers and
  layer decay (:func:`jaxtune.set_lr_multipliers`), trainable masks (:func:`jaxtune.set_trainable`),
  weight decay (:func:`jaxtune.set_weight_decay`), L2-SP strengths (:func:`jaxtune.set_l2_sp`).

Memory: each member keeps its own optimizer state, trained parameters, model state and RNG key,
stacked once (the input states can be dropped). Parameters listed in ``share=`` are stored once for
all members, without the member axis (a leading axis of 1): this is for a backbone that the
step's *structural* trainable mask leaves frozen and that every member holds identical (the
pretrained weights). Everything else, anchors of L2-SP included, is per member; a leaf frozen in
runtime mode (:func:`jaxtune.set_trainable`) is per member too, since the step still writes it.

Example::

    tx = jt.make_optimizer(params, rules, optax.adamw, 1e-4, weight_decay=0.01, runtime=True)
    states = [jt.TrainState.create(init_params(seed), tx, rng=seed) for seed in range(4)]
    states = [s.replace(opt_state=jt.set_weight_decay(s.opt_state, jax.tree.map(lambda _: wd, params)))
              for s, wd in zip(states, (0.0, 0.01, 0.03, 0.1))]
    state = jt.stack_members(states)
    step = jt.make_train_step(loss_fn, tx, members=4)
    state, metrics = step(state, batch)          # metrics["loss"].shape == (4,)
    best = jt.unstack_members(state, int(metrics["loss"].argmin()))
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune.rules import leaf_paths
from jaxtune.train import LossFn, TrainState, _mask_flags, train_step_fn
from jaxtune.xla_options import AUTO, resolve_compiler_options

_PARTS = ("step", "params", "opt_state", "model_state", "rng")


def _share_flags(share: Any, params: Any) -> list[bool]:
    n = len(jax.tree_util.tree_leaves(params))
    if share is None:
        return [False] * n
    flags = jax.tree_util.tree_leaves(share)
    if len(flags) != n:
        raise ValueError(f"share has {len(flags)} leaves but the parameters have {n}; pass a bool pytree with the "
                         "parameters' structure, e.g. jax.tree.map(lambda t: not t, jt.trainable_mask(params, rules))")
    return [bool(np.all(f)) for f in flags]


def _check_same_layout(states: Sequence[TrainState]) -> None:
    first = states[0]
    for i, other in enumerate(states[1:], start=1):
        for part in _PARTS:
            a, b = getattr(first, part), getattr(other, part)
            if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
                raise ValueError(f"member {i}'s {part} has another structure than member 0's; members must come from "
                                 "the same model and the same optimizer (jt.make_optimizer(..., runtime=True)), with "
                                 "values changed by jt.set_trainable / set_lr_multipliers / set_weight_decay / "
                                 "set_l2_sp")
            for path, x, y in zip(leaf_paths(a), jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
                if np.shape(x) != np.shape(y) or jnp.result_type(x) != jnp.result_type(y):
                    raise ValueError(f"member {i}'s {part} leaf {path or '(root)'} is {jnp.result_type(y)}"
                                     f"{list(np.shape(y))} but member 0's is {jnp.result_type(x)}{list(np.shape(x))}")


def stack_members(states: Sequence[TrainState], *, share: Any = None) -> TrainState:
    """Stacks N train states on a new leading axis (the member axis).

    Args:
      states: train states with the same structure, shapes and dtypes (one model, one optimizer;
        values may differ: parameters, RNG keys, runtime strategy arrays, model state).
      share: optional bool pytree with the parameters' structure: the True leaves are stored once
        (a leading axis of 1, not N) and must be identical in every member. Use it for parameters
        the step's structural ``trainable`` mask freezes (``make_member_step(..., trainable=mask)``
        refuses to train a shared leaf).

    Example::

        mask = jt.trainable_mask(params, rules)                    # structural: backbone frozen
        state = jt.stack_members(states, share=jax.tree.map(lambda t: not t, mask))
        step = jt.make_member_step(loss_fn, tx, members=len(states), trainable=mask)
    """
    states = list(states)
    if not states:
        raise ValueError("stack_members needs at least one train state")
    _check_same_layout(states)
    flags = _share_flags(share, states[0].params)
    paths = leaf_paths(states[0].params)
    per_member = [jax.tree_util.tree_leaves(s.params) for s in states]
    params = []
    for j, (path, shared) in enumerate(zip(paths, flags)):
        leaves = [p[j] for p in per_member]
        if not shared:
            params.append(_stack(leaves))
            continue
        first = np.asarray(leaves[0])
        for i, x in enumerate(leaves[1:], start=1):
            if not np.array_equal(np.asarray(x), first):
                raise ValueError(f"parameter {path} is shared (share=) but member {i} holds other values than member 0; "
                                 "share only parameters every member starts from identically and none trains "
                                 "(e.g. a frozen pretrained backbone), or leave it out of share=")
        params.append(jnp.asarray(leaves[0])[None])
    stack = lambda *xs: _stack(xs)
    return TrainState(step=_stack([s.step for s in states]),
                      params=jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(states[0].params), params),
                      opt_state=jax.tree_util.tree_map(stack, *[s.opt_state for s in states]),
                      model_state=jax.tree_util.tree_map(stack, *[s.model_state for s in states]),
                      rng=_stack([s.rng for s in states]))


def _stack(xs: Sequence[Any]) -> jax.Array:
    """``jnp.stack(xs)``, stacked on the host and put on the device in one transfer: no compiled
    concatenation per leaf shape (a model has dozens; each would compile once)."""
    if jax.dtypes.issubdtype(jnp.result_type(xs[0]), jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_stack([jax.random.key_data(x) for x in xs]))
    return jnp.asarray(np.stack([np.asarray(x) for x in xs]))


def num_members(state: TrainState) -> int:
    """How many members a stacked state holds (the length of its ``step`` vector).

    Example::

        >>> num_members(stack_members([TrainState.create({"w": jnp.zeros(2)}, optax.sgd(0.1))] * 3))
        3
    """
    if np.ndim(state.step) != 1:
        raise ValueError(f"this train state is not stacked (its step has shape {np.shape(state.step)}, a stacked "
                         "one has (N,)); build it with jt.stack_members(states)")
    return int(np.shape(state.step)[0])


def unstack_members(state: TrainState, index: int) -> TrainState:
    """Member ``index`` of a stacked state, as a plain train state (shared parameters included).

    Example::

        member = jt.unstack_members(state, 2)
        jt.make_eval_step(eval_fn)(member, batch)
    """
    n = num_members(state)
    if not -n <= index < n:
        raise IndexError(f"member {index} of a state with {n} members")
    take = lambda x: x[index]
    params = jax.tree_util.tree_map(lambda x: x[0] if x.shape[0] == 1 and n > 1 else x[index], state.params)
    return TrainState(step=state.step[index], params=params, opt_state=jax.tree_util.tree_map(take, state.opt_state),
                      model_state=jax.tree_util.tree_map(take, state.model_state), rng=state.rng[index])


def _check_stacked(state: TrainState, n: int) -> None:
    if np.shape(state.step) != (n,):
        raise ValueError(f"the member step was built for members={n} but the state's step has shape "
                         f"{np.shape(state.step)}; stack exactly {n} states with jt.stack_members")
    for part in ("opt_state", "model_state", "rng"):
        tree = getattr(state, part)
        for path, x in zip(leaf_paths(tree), jax.tree_util.tree_leaves(tree)):
            if not np.shape(x) or np.shape(x)[0] != n:
                raise ValueError(f"{part} leaf {path or '(root)'} has shape {np.shape(x)}, not a leading member axis "
                                 f"of {n}; stack the members with jt.stack_members")
    for path, x in zip(leaf_paths(state.params), jax.tree_util.tree_leaves(state.params)):
        if not np.shape(x) or np.shape(x)[0] not in (1, n):
            raise ValueError(f"parameter {path} has shape {np.shape(x)}: neither {n} members nor shared (leading 1); "
                             "stack the members with jt.stack_members")


def _shared_in_state(state: TrainState, n: int) -> list[bool]:
    return [n > 1 and np.shape(x)[0] == 1 for x in jax.tree_util.tree_leaves(state.params)]


def _check_batch(batch: Any, n: int) -> None:
    for path, x in zip(leaf_paths(batch), jax.tree_util.tree_leaves(batch)):
        if not np.shape(x) or np.shape(x)[0] != n:
            raise ValueError(f"per_member_batch=True but batch field {path or '(root)'} has shape {np.shape(x)}; "
                             f"give every field a leading axis of {n} (one batch per member), or pass one batch for "
                             "all members with per_member_batch=False")


def make_member_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, members: int,
                     per_member_batch: bool = False, donate: bool = True, compiler_options: Any = AUTO,
                     **step_kwargs) -> Callable:
    """Builds the jitted ``step(stacked_state, batch) -> (stacked_state, metrics)`` of N members:
    ``jax.vmap`` of :func:`jaxtune.train_step_fn` over the member axis.

    Args:
      loss_fn, optimizer: as for :func:`jaxtune.make_train_step` (one optimizer for all members;
        members differ through the arrays of their states).
      members: N, the number of stacked members.
      per_member_batch: False: one batch for all members; True: every batch field has a leading
        axis of N (member i trains on ``batch[i]``, e.g. its own data order).
      donate: donate the stacked state to the step.
      compiler_options: as for :func:`jaxtune.make_train_step`.
      **step_kwargs: ``trainable``, ``accumulate``, ``compute_dtype`` of :func:`jaxtune.train_step_fn`
        (the same for every member; ``mesh`` is not supported with members).

    Metrics come back with a leading axis of N. Each member's result equals a separate run of
    ``make_train_step`` on its own state (fp32: to rounding).

    Example::

        step = jt.make_member_step(loss_fn, tx, members=4, per_member_batch=True)
        state, metrics = step(state, {k: np.stack([b[k] for b in member_batches]) for k in keys})
    """
    if not isinstance(members, int) or members < 1:
        raise ValueError(f"members must be a positive int, got {members!r}")
    if step_kwargs.get("mesh") is not None:
        raise ValueError("make_member_step does not take mesh=; members run on one device (vmap), "
                         "shard one member per run for data parallelism")
    single = train_step_fn(loss_fn, optimizer, **step_kwargs)
    trainable = step_kwargs.get("trainable")

    def step(state: TrainState, batch: Any):
        _check_stacked(state, members)
        if per_member_batch:
            _check_batch(batch, members)
        shared = _shared_in_state(state, members)
        flags = _mask_flags(trainable, len(shared))
        trained_shared = [p for p, s, f in zip(leaf_paths(state.params), shared, flags) if s and f is not False]
        if trained_shared:
            raise ValueError(f"parameters shared by all members are trained by this step: {trained_shared[:3]}; "
                             "share only leaves the structural trainable= mask freezes")
        view, axes = _vmap_view(state, shared)
        run = jax.vmap(single, in_axes=(axes, 0 if per_member_batch else None), out_axes=(axes, 0))
        new_state, metrics = run(view, batch)
        treedef = jax.tree_util.tree_structure(state.params)
        new_leaves = jax.tree_util.tree_leaves(new_state.params)
        return new_state.replace(params=jax.tree_util.tree_unflatten(
            treedef, [x[None] if s else x for x, s in zip(new_leaves, shared)])), metrics

    return jax.jit(step, donate_argnums=(0,) if donate else (),
                   compiler_options=resolve_compiler_options(compiler_options, step_kwargs.get("mesh")))


def _vmap_view(state: TrainState, shared: list[bool]) -> tuple[TrainState, TrainState]:
    """``state`` with its shared parameters' leading 1 dropped, and the ``in_axes`` of ``jax.vmap``
    over it (``None`` for a shared parameter, 0 for everything else)."""
    treedef = jax.tree_util.tree_structure(state.params)
    leaves = jax.tree_util.tree_leaves(state.params)
    params = jax.tree_util.tree_unflatten(treedef, [x[0] if s else x for x, s in zip(leaves, shared)])
    param_axes = jax.tree_util.tree_unflatten(treedef, [None if s else 0 for s in shared])
    return state.replace(params=params), TrainState(step=0, params=param_axes, opt_state=0, model_state=0, rng=0)


def make_member_eval_step(eval_step: Callable, *, members: int, compiler_options: Any = AUTO) -> Callable:
    """Builds the jitted ``eval_step(stacked_state, batch) -> metrics`` of N members: ``jax.vmap`` of
    a single-member ``eval_step(state, batch)`` (e.g. from :func:`jaxtune.make_eval_step`) over the
    member axis, with one batch for all members. Every metric comes back with a leading axis of N.

    Example::

        member_eval = jt.make_member_eval_step(jt.make_eval_step(eval_fn), members=4)
        member_eval(state, batch)["loss_sum"].shape       # (4,)
    """
    if not isinstance(members, int) or members < 1:
        raise ValueError(f"members must be a positive int, got {members!r}")

    def step(state: TrainState, batch: Any):
        _check_stacked(state, members)
        view, axes = _vmap_view(state, _shared_in_state(state, members))
        return jax.vmap(eval_step, in_axes=(axes, None))(view, batch)

    return jax.jit(step, compiler_options=resolve_compiler_options(compiler_options))
