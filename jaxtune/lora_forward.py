"""LoRA applied unmerged inside a linen model: ``y = x @ W + b + scale * (dropout(x) @ A) @ B``.

Merging ``W' = W + scale * A @ B`` and running the model makes the backward pass form the
gradient of the whole kernel ``W'`` (``in x out``: as many FLOPs as full fine-tuning of that
kernel) before projecting it onto the factors. :class:`LoraForward` avoids it: around a linen
``apply`` it routes every ``nn.Dense`` / ``nn.DenseGeneral`` (2-D kernel) and 1x1 ``nn.Conv``
(no feature groups) call whose kernel carries factors through the unmerged form, with the frozen
kernel under ``stop_gradient``, so the backward pass only needs products of the rank's size
(``x^T (g @ B^T)``, ``(x @ A)^T g``). Dropout on the LoRA branch's input (PEFT's ``lora_dropout``)
is only possible here.

It works through ``flax.linen.intercept_methods``: the params it hands out hold the merged kernel
``W'`` of every LoRA'd kernel, and a call is routed when the module's own kernel *is* one of these
arrays (the same traced array, so a module path needs no matching). Whatever is not routed uses
``W'`` and stays correct (the merged path, with the full kernel gradient): kernels inside
``nn.scan`` / ``nn.vmap`` / ``nn.remat`` bodies (stacked or scanned layers: the body sees a slice),
stacked (per-layer) factors, other module types, and models that are not linen (``nnx`` models,
plain functions). The routed kernels' ``W'`` is then unused and XLA drops it.

Example::

    with jt.LoraForward(params, adapters, rng=dropout_key) as lora_params:
        logits = model.apply({"params": lora_params}, batch["input_ids"])
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.lora import LoraFactors, flat_with_factors, merge_kernel
from jaxtune.rules import RuleError

_ROUTED_MODULES = (nn.Dense, nn.DenseGeneral, nn.Conv)


def _fits(module: nn.Module, kernel: Any, factors: LoraFactors) -> bool:
    """Whether a call of ``module`` (kernel ``kernel``) can take the unmerged form with ``factors``."""
    if np.ndim(factors.lora_a) != 2:   # stacked factors: the module sees one layer's kernel
        return False
    shape = np.shape(kernel)
    if isinstance(module, nn.Conv):
        return module.feature_group_count == 1 and len(shape) >= 3 and all(d == 1 for d in shape[:-2])
    return len(shape) == 2


def _dropped(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Inverted dropout of ``x`` at ``rate`` (kept entries scaled by ``1 / (1 - rate)``)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class LoraForward:
    """Context manager: inside it, a linen ``model.apply`` with the params it returns computes
    every LoRA'd Dense / 1x1 Conv unmerged (see the module docstring for what falls back to the
    merged kernel). Pure at trace level: use it inside ``jax.jit`` / ``jax.grad`` like any other
    code, in your own loss functions and loops; jaxtune's train step uses it for
    :class:`jaxtune.LoraParams` states.

    Args:
      params: the plain params (the frozen kernels).
      adapters: from :func:`jaxtune.init_lora` / :func:`jaxtune.load_peft`.
      rng: key for dropout on the LoRA branches' inputs (factors with ``dropout > 0``); None: no
        dropout (evaluation). A factor with ``dropout > 0`` that is not routed is an error at
        trace time when ``rng`` is given: the merged path cannot drop its inputs.
      dtype: the floating leaves and factors are cast to it (the compute dtype); None: as they are.

    Call the model inside the block, in the same trace as the block (not across a ``jax.jit``
    boundary, which makes new arrays of the params). After the block, ``routed`` holds the
    kernel paths computed unmerged and ``merged`` those that were not.

    Example::

        def loss_fn(params, adapters, batch, rng):
            with jt.LoraForward(params, adapters, rng=rng) as p:
                logits = model.apply({"params": p}, batch["x"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

        grads = jax.grad(loss_fn, argnums=1)(params, adapters, batch, key)   # the factors' gradients
    """

    def __init__(self, params: Any, adapters: Any, *, rng: jax.Array | None = None, dtype: Any = None):
        self._flat, paths, leaves, self._treedef = flat_with_factors(params, adapters)
        self._rng, self._dtype = rng, dtype
        self._leaves, self._paths = leaves, paths
        self._by_id: dict[int, tuple[str, jax.Array, jax.Array, LoraFactors]] = {}
        self._interception = None
        self._calls = 0
        self.routed: list[str] = []
        self.merged: list[str] = []

    def _cast(self, x: Any) -> Any:
        floating = jnp.issubdtype(jnp.result_type(x), jnp.floating)
        return x.astype(self._dtype) if self._dtype is not None and floating else x

    def _params(self) -> Any:
        """The params handed to the model: each LoRA'd kernel merged (``stop_gradient`` on ``W``)."""
        out = []
        for path, leaf in zip(self._paths, self._leaves):
            factors = self._flat.get(path)
            if factors is None:
                out.append(self._cast(leaf))
                continue
            frozen = jax.lax.stop_gradient(leaf)
            merged = merge_kernel(path, frozen, factors, self._dtype)
            factors = factors.replace(lora_a=self._cast(factors.lora_a), lora_b=self._cast(factors.lora_b))
            self._by_id[id(merged)] = (path, merged, self._cast(frozen), factors)   # merged: kept alive for id()
            out.append(merged)
        return jax.tree_util.tree_unflatten(self._treedef, out)

    def __enter__(self) -> Any:
        params = self._params()
        self._interception = nn.intercept_methods(self._intercept)
        self._interception.__enter__()
        return params

    def __exit__(self, *exc_info) -> None:
        self._interception.__exit__(*exc_info)
        self.merged = sorted(set(self._flat) - set(self.routed))
        if exc_info[0] is None and self._rng is not None:
            dropped = [p for p in self.merged if self._flat[p].dropout > 0]
            if dropped:
                raise RuleError(
                    f"LoRA dropout is set for {len(dropped)} kernel(s) that this forward pass did not call through a "
                    f"linen nn.Dense / 1x1 nn.Conv with their own (unstacked) kernel: {dropped[:3]}; there the "
                    "factors are merged into the kernel, where their input cannot be dropped",
                    hint="Use dropout=0.0 in the jt.lora rule for these kernels (stacked or scanned layers, nnx "
                         "models, modules under nn.scan / nn.remat), or call them as plain linen modules.")

    def _intercept(self, next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, _ROUTED_MODULES) or kwargs or len(args) != 1:
            return next_fun(*args, **kwargs)
        kernel = module.get_variable("params", "kernel") if module.has_variable("params", "kernel") else None
        entry = self._by_id.get(id(kernel))
        if entry is None or entry[1] is not kernel or not _fits(module, kernel, entry[3]):
            return next_fun(*args, **kwargs)
        path, _, frozen, factors = entry
        self._calls += 1
        if path not in self.routed:
            self.routed.append(path)
        return self._unmerged(module, args[0], frozen, factors, self._calls)

    def _unmerged(self, module: nn.Module, x: jax.Array, frozen: jax.Array, factors: LoraFactors,
                  call: int) -> jax.Array:
        """``module(x)`` with kernel ``frozen``, plus ``scale * (dropout(x) @ A) @ B``; the products
        run through clones of ``module`` (its dtype, precision, strides, padding, dot_general)."""
        own = dict(module.variables["params"])
        y = module.clone(parent=None).apply({"params": {**own, "kernel": frozen}}, x)
        if factors.dropout > 0 and self._rng is not None:
            x = _dropped(x, factors.dropout, jax.random.fold_in(self._rng, call))
        a = factors.lora_a.reshape(np.shape(frozen)[:-1] + (factors.rank,))
        h = module.clone(parent=None, features=factors.rank, use_bias=False).apply({"params": {"kernel": a}}, x)
        b = factors.lora_b.astype(h.dtype)
        update = (h.reshape(-1, factors.rank) @ b).reshape(h.shape[:-1] + b.shape[-1:])   # 2-D: a plain GEMM
        return y + (update * jnp.asarray(factors.scale, h.dtype)).astype(y.dtype)


_DROPOUT_FOLD = 0x4C6F5241   # "LoRA": the LoRA dropout key is the step's dropout key folded with it


def lora_dropout_key(rng: jax.Array) -> jax.Array:
    """The key of LoRA dropout in a step whose model dropout uses ``rng`` (a different stream).

    Example::

        with jt.LoraForward(params, adapters, rng=lora_dropout_key(rng)) as p: ...
    """
    return jax.random.fold_in(rng, _DROPOUT_FOLD)
