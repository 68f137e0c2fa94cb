"""Pure, jitted training and evaluation steps.

``train_step(state, batch) -> (state, metrics)`` is one jitted function with the state donated.
Parameters stay float32 (master weights) and are cast to the compute dtype inside the step
(bfloat16 by default on GPU/TPU, float32 on CPU). Metrics come back as device arrays: the step
never waits on the host.

A loss function takes one of two forms. The plain one, for models without state or dropout::

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()   # or (loss, metrics)

and the full one::

    def loss_fn(params, batch, *, rng, model_state):
        logits, updates = model.apply({"params": params, **model_state}, batch["x"],
                                      mutable=list(model_state), rngs={"dropout": rng})
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["y"]).mean()
        return loss, ({"accuracy": (logits.argmax(-1) == batch["y"]).mean()}, updates)

(``model_state`` holds non-trained collections such as ``batch_stats``; ``{}`` when there are none.)
A loss that is a weighted mean (padding rows weigh 0, as in :mod:`jaxtune.tasks`) reports its total
weight as the scalar ``metrics["weight"]``; gradient accumulation then weighs micro-batches by it.

Example::

    state = jt.TrainState.create(params, tx)
    train_step = jt.make_train_step(loss_fn, tx)
    state, metrics = train_step(state, batch)
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtune.lora import LoraParams, merged_params
from jaxtune.lora_forward import LoraForward, lora_dropout_key
from jaxtune.nonfinite import FLAG, nonfinite_leaf
from jaxtune.sharding import DATA_AXIS, batch_sharding, fsdp_gather, tree_shardings
from jaxtune.xla_options import AUTO, resolve_compiler_options

LossFn = Callable[..., tuple[jax.Array, tuple[dict, Any]]]
WEIGHT_KEY = "weight"  # metrics[WEIGHT_KEY]: the total weight of a weighted-mean loss


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: step count, params, optimizer state, model state, RNG key."""

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any
    rng: jax.Array

    @classmethod
    def create(cls, params: Any, optimizer: optax.GradientTransformation, *, model_state: Any = None,
               rng: int | jax.Array = 0) -> "TrainState":
        """Initial state: ``optimizer.init(params)``, step 0, ``model_state`` (e.g. batch stats).

        Example::

            >>> state = TrainState.create({"w": jnp.zeros(3)}, optax.sgd(0.1))
            >>> int(state.step)
            0
        """
        key = jax.random.key(rng) if isinstance(rng, int) else rng
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                   model_state={} if model_state is None else model_state, rng=key)


def default_compute_dtype() -> jnp.dtype:
    """bfloat16 on GPU/TPU, float32 on CPU."""
    return jnp.dtype(jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32)


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Casts the floating-point leaves of ``tree`` to ``dtype`` (other leaves unchanged)."""
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree)


LOSS_FN_FORMS = """\
  loss_fn(params, batch) -> loss                                       (a scalar)
  loss_fn(params, batch) -> (loss, metrics)                            (metrics: a dict of arrays)
  loss_fn(params, batch, *, rng, model_state) -> (loss, (metrics, new_model_state))"""


def _loss_form(loss_fn: Callable) -> str:
    """``"full"`` when ``loss_fn`` can be called as ``loss_fn(params, batch, rng=..., model_state=...)``,
    else ``"plain"`` when it can be called as ``loss_fn(params, batch)``; anything else is an error
    showing the accepted forms."""
    try:
        signature = inspect.signature(loss_fn)
    except (TypeError, ValueError):  # no signature to read (some builtins, C callables): the full contract
        return "full"
    for form, args, kwargs in (("full", (0, 0), {"rng": 0, "model_state": 0}), ("plain", (0, 0), {})):
        try:
            signature.bind(*args, **kwargs)
            return form
        except TypeError:
            pass
    name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    raise TypeError(f"loss_fn {name}{signature} has none of the accepted signatures:\n{LOSS_FN_FORMS}\n"
                    "(rng: a PRNG key for dropout; model_state: the non-trained collections, e.g. batch_stats, "
                    "{} when there are none)")


def _plain_result(out: Any) -> tuple[jax.Array, dict]:
    """``(loss, metrics)`` of a plain loss function's result ``loss`` or ``(loss, metrics)``."""
    if isinstance(out, (tuple, list)):
        if len(out) != 2 or not isinstance(out[1], Mapping):
            raise TypeError(f"loss_fn(params, batch) returned a {type(out).__name__} of {len(out)} item(s); it must "
                            f"return loss or (loss, metrics) with metrics a dict. Accepted forms:\n{LOSS_FN_FORMS}")
        return out[0], out[1]
    return out, {}


def full_loss_fn(loss_fn: Callable) -> LossFn:
    """``loss_fn`` in the full form ``(params, batch, *, rng, model_state) -> (loss, (metrics,
    new_model_state))``: a plain ``loss_fn(params, batch) -> loss | (loss, metrics)`` is wrapped (its
    model state passes through unchanged); a full one is returned as it is.

    Example::

        >>> full = full_loss_fn(lambda params, batch: (params["w"] * batch).sum())
        >>> loss, (metrics, state) = full({"w": 2.0}, jnp.ones(3), rng=None, model_state={})
        >>> float(loss), metrics, state
        (6.0, {}, {})
    """
    if _loss_form(loss_fn) == "full":
        return loss_fn

    def full(params, batch, *, rng, model_state):
        del rng
        loss, metrics = _plain_result(loss_fn(params, batch))
        return loss, (metrics, model_state)

    return full


def _checked_full_result(out: Any) -> tuple[jax.Array, tuple[dict, Any]]:
    """A full-form loss function's ``(loss, (metrics, new_model_state))``, or an error showing the forms."""
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], (tuple, list))
            and len(out[1]) == 2 and isinstance(out[1][0], Mapping)):
        raise TypeError("loss_fn(params, batch, *, rng, model_state) must return (loss, (metrics, new_model_state)) "
                        f"with metrics a dict; it returned {type(out).__name__} {jax.tree.structure(out)}. "
                        f"Accepted forms:\n{LOSS_FN_FORMS}")
    return out[0], (out[1][0], out[1][1])


def compile_count(step: Any) -> int:
    """How many compilations a jitted function holds: one per distinct signature of its arguments
    (shapes, dtypes, shardings, static values) it was called with. Use it to check that a loop does
    not recompile, e.g. through runtime unfreezing (:func:`jaxtune.set_trainable` changes arrays in
    the state, not the compiled step).

    Works on the steps :func:`make_train_step`, :func:`make_eval_step` and
    :func:`jaxtune.make_member_step` return, on a :class:`StagedTrainStep` (the sum over its stages'
    steps) and on any ``jax.jit`` function. Feed a step device arrays of fixed shapes: a host
    (numpy) array where a device array was before counts as a new signature.

    Example::

        >>> f = jax.jit(lambda x: 2 * x)
        >>> _ = f(jnp.ones(3)); _ = f(jnp.zeros(3)); compile_count(f)
        1
        >>> _ = f(jnp.ones(4)); compile_count(f)
        2
    """
    if isinstance(step, StagedTrainStep):
        return step.compile_count
    cache_size = getattr(step, "_cache_size", None)
    if not callable(cache_size):
        raise TypeError(f"compile_count takes a jax.jit-ed function (e.g. from jt.make_train_step) or a "
                        f"jt.StagedTrainStep; got {type(step).__name__} {getattr(step, '__name__', '')!s}".rstrip())
    return int(cache_size())


def _mask_flags(trainable: Any, n_leaves: int) -> list[Any]:
    if trainable is None:
        return [True] * n_leaves
    flags = jax.tree_util.tree_leaves(trainable)
    if len(flags) != n_leaves:
        raise ValueError(f"trainable mask has {len(flags)} leaves but the parameters have {n_leaves}; "
                         "build it with jt.trainable_mask(params, rules)")
    out = []
    for f in flags:
        f = np.asarray(f, bool)
        out.append(bool(f) if f.ndim == 0 else (True if f.all() else (tuple(f.tolist()) if f.any() else False)))
    return out


def mask_key(trainable: Any) -> tuple:
    """Hashable key of a trainable mask (one entry per leaf; per-layer tuples for stacked leaves)."""
    leaves = jax.tree_util.tree_leaves(trainable)
    return tuple(_mask_flags(trainable, len(leaves)))


def _split_micro_batches(batch: Any, k: int) -> Any:
    """``(k, n/k, ...)`` micro-batches taken by stride: micro-batch j holds rows j, j+k, j+2k, ... so
    that, with the batch split over devices in contiguous blocks, every micro-batch is spread over
    all of them."""
    def split(path, x):
        if np.shape(x)[0] % k:
            raise ValueError(f"batch field {jax.tree_util.keystr(path)} has leading size {np.shape(x)[0]}, "
                             f"not divisible by accumulate={k}")
        return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)
    return jax.tree_util.tree_map_with_path(split, batch)


def _pop_weight(metrics: dict) -> tuple[jax.Array, dict]:
    """The loss weight a loss_fn reports as ``metrics["weight"]`` (1 when it reports none)."""
    metrics = dict(metrics)
    weight = metrics.pop(WEIGHT_KEY, 1.0)
    if jnp.ndim(weight):
        raise ValueError(f"loss_fn reported metrics[{WEIGHT_KEY!r}] of shape {jnp.shape(weight)}; it must be a "
                         "scalar: the sum of the example weights of the loss (a weighted mean)")
    return jax.lax.stop_gradient(jnp.asarray(weight, jnp.float32)), metrics


def _static_trainable(flags: list[Any], treedef: Any) -> Any:
    """The structural mask as the ``trainable`` argument of ``tx.update`` (bool arrays per leaf)."""
    return jax.tree_util.tree_unflatten(treedef, [np.asarray(f, bool) for f in flags])


def train_step_fn(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, trainable: Any = None,
                  accumulate: int = 1, compute_dtype: Any = None, mesh: Mesh | None = None,
                  fsdp: bool = False, fsdp_min_size: int = 2 ** 12, axis_name: str = DATA_AXIS) -> Callable:
    """The pure, unjitted ``step(state, batch) -> (state, metrics)`` of :func:`make_train_step` (same
    arguments, without ``donate``), to be transformed further (``jax.vmap``, ``jax.jit``).

    Example::

        step = jax.jit(jax.vmap(jt.train_step_fn(loss_fn, tx), in_axes=(0, None)))   # a stack of members
    """
    dtype = jnp.dtype(compute_dtype) if compute_dtype is not None else default_compute_dtype()
    if accumulate < 1:
        raise ValueError(f"accumulate must be >= 1, got {accumulate}")
    with_trainable = optax.with_extra_args_support(optimizer)
    loss_fn = full_loss_fn(loss_fn)

    def step(state: TrainState, batch: Any):
        if mesh is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding(mesh, axis_name))
        leaves, treedef = jax.tree_util.tree_flatten(state.params)
        flags = _mask_flags(trainable, len(leaves))  # trace time only
        train_idx = [i for i, f in enumerate(flags) if f is not False]

        def loss_of(train_leaves, micro_batch, rng, model_state):
            full = [jax.lax.stop_gradient(x) for x in leaves]
            for i, x in zip(train_idx, train_leaves):
                full[i] = x
            tree = jax.tree_util.tree_unflatten(treedef, full)
            if isinstance(tree, LoraParams):   # LoRA'd linen Dense / 1x1 Conv calls run unmerged
                if mesh is not None and fsdp:
                    tree = fsdp_gather(tree, mesh, axis_name, fsdp_min_size)
                with LoraForward(tree.params, tree.adapters, rng=lora_dropout_key(rng), dtype=dtype) as params:
                    out = loss_fn(params, micro_batch, rng=rng, model_state=model_state)
            else:
                params = cast_floating(tree, dtype)
                if mesh is not None and fsdp:  # one all-gather per sharded leaf; its gradient is reduce-scattered
                    params = fsdp_gather(params, mesh, axis_name, fsdp_min_size)
                out = loss_fn(params, micro_batch, rng=rng, model_state=model_state)
            loss, (metrics, new_model_state) = _checked_full_result(out)
            weight, metrics = _pop_weight(metrics)
            return loss.astype(jnp.float32), (weight, metrics, new_model_state)

        grad_fn = jax.value_and_grad(loss_of, has_aux=True)
        rng, step_rng = jax.random.split(state.rng)
        train_leaves = [leaves[i] for i in train_idx]
        if accumulate == 1:
            (loss, (_, metrics, model_state)), grads = grad_fn(train_leaves, batch, step_rng, state.model_state)
        else:
            # Weighted means over micro-batches: sum(w_i * x_i) / sum(w_i), x = loss, gradients, metrics.
            def micro(carry, xs):
                sums, model_state = carry
                micro_batch, micro_rng = xs
                (loss, (weight, metrics, model_state)), grads = grad_fn(train_leaves, micro_batch, micro_rng,
                                                                        model_state)
                weighted = jax.tree_util.tree_map(lambda x: weight * x.astype(jnp.float32), (loss, grads, metrics))
                return (jax.tree_util.tree_map(jnp.add, sums, (weight, weighted)), model_state), None

            micro_batches = _split_micro_batches(batch, accumulate)
            if mesh is not None:
                micro_batches = jax.lax.with_sharding_constraint(
                    micro_batches, NamedSharding(mesh, PartitionSpec(None, axis_name)))
            xs = (micro_batches, jax.random.split(step_rng, accumulate))
            first = jax.tree_util.tree_map(lambda x: x[0], micro_batches)
            (_, (_, metric_shapes, _)), _ = jax.eval_shape(grad_fn, train_leaves, first, step_rng, state.model_state)
            zeros_like = lambda x: jnp.zeros(jnp.shape(x), jnp.float32)
            zeros = (zeros_like(0.0), jax.tree_util.tree_map(zeros_like, (0.0, train_leaves, metric_shapes)))
            ((total, (loss, grads, metrics)), model_state), _ = jax.lax.scan(micro, (zeros, state.model_state), xs)
            mean = lambda x: jnp.where(total > 0, x / jnp.where(total > 0, total, 1.0), jnp.zeros_like(x))
            loss, grads, metrics = jax.tree_util.tree_map(mean, (loss, grads, metrics))

        full_grads = [jnp.zeros_like(x) for x in leaves]
        for i, g in zip(train_idx, grads):
            full_grads[i] = g.astype(leaves[i].dtype)
        grad_tree = jax.tree_util.tree_unflatten(treedef, full_grads)
        if trainable is None:
            updates, opt_state = optimizer.update(grad_tree, state.opt_state, state.params)
        else:  # optimizers from jt.make_optimizer keep the statistics of the leaves it does not train
            updates, opt_state = with_trainable.update(grad_tree, state.opt_state, state.params,
                                                       trainable=_static_trainable(flags, treedef))
        update_leaves = jax.tree_util.tree_leaves(updates)
        new_leaves = list(leaves)
        for i in train_idx:
            u = update_leaves[i]
            if isinstance(flags[i], tuple):
                u = u * jnp.asarray(flags[i], u.dtype).reshape((-1,) + (1,) * (u.ndim - 1))
            new_leaves[i] = (leaves[i] + u).astype(leaves[i].dtype)
        new_state = state.replace(step=state.step + 1, params=jax.tree_util.tree_unflatten(treedef, new_leaves),
                                  opt_state=opt_state, model_state=model_state, rng=rng)
        if mesh is not None:
            new_state = jax.lax.with_sharding_constraint(new_state, tree_shardings(new_state, mesh, fsdp, axis_name, fsdp_min_size))
        grad_norm = optax.tree.norm(grads)
        flag = nonfinite_leaf(loss, grad_norm, [full_grads[i] for i in train_idx], [new_leaves[i] for i in train_idx],
                              train_idx)
        return new_state, {"loss": loss, "grad_norm": grad_norm, **metrics, FLAG: flag}

    return step


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, trainable: Any = None,
                    accumulate: int = 1, compute_dtype: Any = None, mesh: Mesh | None = None,
                    fsdp: bool = False, fsdp_min_size: int = 2 ** 12, axis_name: str = DATA_AXIS,
                    donate: bool = True, members: int | None = None, per_member_batch: bool = False,
                    compiler_options: Any = AUTO) -> Callable:
    """Builds the jitted ``train_step(state, batch) -> (state, metrics)``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> loss`` or ``-> (loss, metrics)`` for a model without
        state or dropout, else ``loss_fn(params, batch, *, rng, model_state) -> (loss, (metrics,
        new_model_state))`` (the form is read from the signature; another one is a ``TypeError``
        showing these). ``loss`` is a mean; a weighted mean (e.g. over real rows, padding rows
        weighing 0) reports its total weight as the scalar ``metrics["weight"]`` (not returned among
        the step's metrics).
      optimizer: e.g. from :func:`jaxtune.make_optimizer`.
      trainable: structural mode: a bool pytree (``jt.trainable_mask(params, rules)``). Gradients
        are taken only w.r.t. the True leaves (nothing is back-propagated into a frozen prefix) and
        only they are updated. With a :class:`jaxtune.LoraParams` state the loss function runs
        under :class:`jaxtune.LoraForward`: a linen model's LoRA'd Dense / 1x1 Conv calls compute
        ``x @ W + scale * (dropout(x) @ A) @ B`` with ``W`` frozen (no gradient of the whole
        kernel), other uses see the merged kernel ``W + scale * A @ B``; LoRA dropout draws from a
        key folded from the step's dropout key. A stacked leaf may take a per-layer bool array. The mask is passed
        to the optimizer as ``tx.update(..., trainable=mask)``: one from :func:`jaxtune.make_optimizer`
        keeps the other leaves' statistics (moments, step counts) as they are.
      accumulate: gradient accumulation over this many micro-batches of the batch (a ``lax.scan``;
        micro-batch j holds rows j, j+k, ...). Losses, gradients and metrics are averaged with the
        micro-batches' weights (``metrics["weight"]``, else 1 each), so the result equals one step
        on the whole batch for a weighted-mean loss, whatever rows are padding.
      compute_dtype: dtype the parameters are cast to for the forward/backward pass (default
        :func:`default_compute_dtype`); master parameters and optimizer state stay as they are.
      mesh: a ``jax.sharding.Mesh``: the batch (and every micro-batch) is split along ``axis_name``;
        parameters and optimizer state are replicated, or FSDP-sharded with ``fsdp=True`` (arrays of
        at least ``fsdp_min_size`` elements; use the same value as in :func:`jaxtune.shard_train_state`).
      donate: donate the state's buffers to the step (update in place).
      compiler_options: XLA options of the step's compilation. ``"auto"`` (default):
        :func:`jaxtune.step_compiler_options` (the memory-optimised scheduler on CPU: fewer page
        faults, same results); None: XLA's defaults (needed when you call the step inside another
        jit: JAX takes compiler options on the outermost jit only); or a dict of XLA options.
      members: N: the step trains N members stacked on a leading axis (:func:`jaxtune.stack_members`)
        in one ``jax.vmap``-ped call (see :func:`jaxtune.make_member_step`); metrics get a leading
        axis of N.
      per_member_batch: with ``members``: every batch field has a leading axis of N (member i
        trains on ``batch[i]``); else one batch serves all members.

    Returns metrics ``{"loss", "grad_norm", **your metrics, "nonfinite_leaf"}`` as device arrays
    (``nonfinite_leaf`` is -1 when all is finite: :func:`jaxtune.nonfinite.nonfinite_leaf`). The
    unjitted step is :func:`train_step_fn`.

    Example::

        step = jt.make_train_step(loss_fn, tx, trainable=jt.trainable_mask(params, rules))
        state, metrics = step(state, batch)
    """
    step_kwargs = dict(trainable=trainable, accumulate=accumulate, compute_dtype=compute_dtype, mesh=mesh, fsdp=fsdp,
                       fsdp_min_size=fsdp_min_size, axis_name=axis_name)
    if members is not None:
        from jaxtune.members import make_member_step  # members builds on this module
        return make_member_step(loss_fn, optimizer, members=members, per_member_batch=per_member_batch, donate=donate,
                                compiler_options=compiler_options, **step_kwargs)
    if per_member_batch:
        raise ValueError("per_member_batch=True needs members=N (the number of stacked members)")
    return jax.jit(train_step_fn(loss_fn, optimizer, **step_kwargs), donate_argnums=(0,) if donate else (),
                   compiler_options=resolve_compiler_options(compiler_options, mesh))


class StagedTrainStep:
    """Structural-mode steps for a strategy that changes (gradual unfreezing): one compiled step
    per distinct trainable mask, built on first use and cached.

    Example::

        staged = jt.StagedTrainStep(loss_fn, tx)
        for stage in jt.unfreezing_stages(params, model.layer_ids):
            for batch in batches:
                state, metrics = staged(state, batch, stage)
        staged.num_stages_compiled   # == number of distinct stages
    """

    def __init__(self, loss_fn: LossFn, optimizer: optax.GradientTransformation, **step_kwargs):
        if "trainable" in step_kwargs:
            raise TypeError("StagedTrainStep takes the trainable mask per call, not at construction")
        self._build = lambda mask: make_train_step(loss_fn, optimizer, trainable=mask, **step_kwargs)
        self._steps: dict[tuple, Callable] = {}

    def __call__(self, state: TrainState, batch: Any, trainable: Any):
        key = mask_key(trainable)
        if key not in self._steps:
            self._steps[key] = self._build(trainable)
        return self._steps[key](state, batch)

    @property
    def num_stages_compiled(self) -> int:
        """Number of distinct stages (masks) a step was built for."""
        return len(self._steps)

    @property
    def compile_count(self) -> int:
        """Compilations of all its stages' steps together (:func:`compile_count`)."""
        return sum(compile_count(step) for step in self._steps.values())


def make_eval_step(eval_fn: Callable[..., dict], *, compute_dtype: Any = None, mesh: Mesh | None = None,
                   axis_name: str = DATA_AXIS, compiler_options: Any = None) -> Callable:
    """Builds the jitted ``eval_step(state, batch) -> metrics``.

    ``eval_fn(params, batch, *, model_state) -> dict`` of per-batch metric arrays.
    ``compiler_options``: as for :func:`make_train_step`, but None (XLA's defaults) by default: an
    eval step is often called inside another jit (:func:`jaxtune.make_member_eval_step`), and JAX
    takes compiler options on the outermost jit only.

    Example::

        eval_step = jt.make_eval_step(lambda p, b, model_state: {"accuracy": ...})
        metrics = eval_step(state, batch)
    """
    dtype = jnp.dtype(compute_dtype) if compute_dtype is not None else default_compute_dtype()

    def step(state: TrainState, batch: Any):
        if mesh is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding(mesh, axis_name))
        return eval_fn(cast_floating(merged_params(state.params), dtype), batch, model_state=state.model_state)

    return jax.jit(step, compiler_options=resolve_compiler_options(compiler_options, mesh))
