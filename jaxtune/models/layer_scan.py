"""Identical layers run as one ``jax.lax.scan`` over parameters stacked on a leading layer axis.

XLA compiles the scan's body once instead of every layer unrolled, so the compile time of a deep
stack hardly grows with its depth. :func:`scan_layers` is called from a Flax module's compact
method: it keeps one variable, a tree whose leaves have a leading axis of ``length`` (layer ``i``
at index ``i``), and applies ``layer`` (an unbound module, ``parent=None``) to each slice in turn.
Options:

* ``remat`` (:data:`REMAT_POLICIES`): what the backward pass recomputes instead of storing
  (``"none"``; ``"full"``: every activation of a layer; ``"dots_saveable"``: all but matmul
  outputs). :func:`remat_layer` gives an unrolled layer the same options.
* ``frozen``: the bottom ``frozen`` layers run in a scan of their own with their parameters under
  ``stop_gradient``, the others in a second scan: the backward pass computes no weight gradient for
  the frozen layers (one scan over all layers would compute it for every layer, masked or not).
* ``unroll``: layers per loop iteration (``jax.lax.scan``'s ``unroll``). 1 compiles one layer;
  ``length`` unrolls the loop, which XLA's cost analysis needs to count every layer: it counts a
  loop's body once, whatever its trip count.

:func:`run_stacked` is the scan itself, for a module that keeps its stacked variable elsewhere (a
``setup`` declaring it with :func:`stacked_params_init`) or whose layers carry more than ``x`` (a
decoder's key/value cache); T5's stacks use it.

Example (in a module's ``@nn.compact __call__``)::

    layer = BertLayer(config, dtype, parent=None)
    x = scan_layers(self, layer, x, mask, length=12, deterministic=True, remat="full", frozen=4)
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax

REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}
"""``remat`` values -> the ``jax.checkpoint`` policy of a layer (``"none"``: no rematerialisation)."""


def check_remat(remat: str, where: str) -> None:
    """Refuses a ``remat`` value that :data:`REMAT_POLICIES` does not know, naming ``where`` it was set.

    Example::

        >>> check_remat("full", "BertConfig.remat")
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"{where}={remat!r} is not a remat option; use one of {sorted(REMAT_POLICIES)} "
                         "('none': store activations, 'full': recompute each layer in the backward pass, "
                         "'dots_saveable': recompute all but the matmul outputs)")


def check_unroll(unroll: int, where: str) -> None:
    """Refuses a ``scan_unroll`` that is not an int >= 1, naming ``where`` it was set.

    Example::

        >>> check_unroll(12, "BertConfig.scan_unroll")
    """
    if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"{where}={unroll!r} must be an int >= 1: the layers one loop iteration runs (1: the "
                         "fastest compile; the layer count: no loop, as XLA's cost analysis needs)")


def remat_layer(layer_cls: type[nn.Module], remat: str, static_argnums: tuple[int, ...]) -> type[nn.Module]:
    """``layer_cls`` rematerialised with the ``remat`` option (itself for ``"none"``); for unrolled
    layers. ``static_argnums`` counts ``self`` (Flax's ``nn.remat``), e.g. ``(3,)`` for
    ``__call__(self, x, mask, deterministic)``.

    Example::

        layer = remat_layer(BertLayer, "full", static_argnums=(3,))(config, dtype, name="layer_0")
    """
    if remat == "none":
        return layer_cls
    return nn.remat(layer_cls, policy=REMAT_POLICIES[remat], static_argnums=static_argnums)


def stacked_params_init(layer: nn.Module, length: int, args: tuple, method: Any = None):
    """Initialiser (``rng -> tree``) of a stacked variable: ``layer``'s params for ``length`` keys,
    stacked by ``vmap``; ``layer.init`` runs on ``args`` (and ``method``, default ``__call__``) with
    ``deterministic=True``. For a module that declares the variable in ``setup``.

    Example::

        self.block = self.param("block", stacked_params_init(T5Block(cfg, False, parent=None), 6, (x, bias, mask)))
    """
    def init(rng):
        keys = jax.random.split(rng, length)
        return jax.vmap(lambda key: layer.init({"params": key}, *args, deterministic=True, method=method)["params"])(keys)
    return init


def run_stacked(fn: Callable, stacked: Any, carry: Any, *, length: int, per_layer: Any = None,
                dropout_key: jax.Array | None = None, remat: str = "none", frozen: int = 0, unroll: int = 1) -> Any:
    """``carry`` through ``length`` layers as one ``jax.lax.scan``: layer ``i`` runs
    ``carry = fn(params_i, carry, per_layer_i, rngs_i)``, with ``params_i`` the slice ``i`` of the
    stacked tree ``stacked``, ``per_layer_i`` that of ``per_layer`` (a tree of leading size
    ``length``, or None) and ``rngs_i`` ``{"dropout": key_i}`` (one of ``length`` keys split from
    ``dropout_key``; ``{}`` without one). ``remat``, ``frozen`` and ``unroll`` as in :func:`scan_layers`.

    Example::

        def fn(params, x, _, rngs):
            return layer.apply({"params": params}, x, mask, deterministic=True, rngs=rngs)
        x = run_stacked(fn, stacked, x, length=6, remat="full", frozen=2)
    """
    check_remat(remat, "remat")
    check_unroll(unroll, "unroll")
    if not 0 <= frozen <= length:
        raise ValueError(f"frozen={frozen} layers of a stack of {length}; need 0 <= frozen <= {length}")
    keys = None if dropout_key is None else jax.random.split(dropout_key, length)

    def body(carry, xs):
        params, key, extra = xs
        return fn(params, carry, extra, {} if key is None else {"dropout": key}), None

    if remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)

    def run(carry, start, stop, params):
        xs = jax.tree_util.tree_map(lambda p: p[start:stop], (params, keys, per_layer))
        return jax.lax.scan(body, carry, xs, unroll=min(unroll, stop - start))[0]

    if frozen:
        carry = run(carry, 0, frozen, jax.lax.stop_gradient(stacked))
    return run(carry, frozen, length, stacked) if frozen < length else carry


def scan_layers(module: nn.Module, layer: nn.Module, x: jax.Array, *args: Any, length: int, deterministic: bool,
                remat: str = "none", frozen: int = 0, unroll: int = 1, name: str = "layer") -> jax.Array:
    """``x`` through ``length`` copies of ``layer``, each with its slice of one stacked variable.

    Args:
      module: the calling (bound) module; it holds the variable ``params/<name>`` and gives the
        ``"params"`` / ``"dropout"`` random streams.
      layer: an unbound module (``parent=None``) called as ``layer(x, *args, deterministic=...)``
        and returning the new ``x``; ``args`` are the same for every layer (e.g. the attention mask).
      length: the number of layers (the stacked leaves' leading size).
      deterministic: False turns dropout on (one ``"dropout"`` key per layer).
      remat: a key of :data:`REMAT_POLICIES`.
      frozen: how many bottom layers run under ``stop_gradient`` in a scan of their own
        (0 <= frozen <= length).
      unroll: layers per loop iteration (>= 1; ``length`` or more: no loop).
      name: the variable's name.

    Example::

        x = scan_layers(self, BertLayer(cfg, self.dtype, parent=None), x, mask, length=6, deterministic=True)
    """
    stacked = module.variable("params", name, lambda: stacked_params_init(layer, length, (x, *args))(
        module.make_rng("params"))).value

    def fn(params, carry, _, rngs):
        return layer.apply({"params": params}, carry, *args, deterministic=deterministic, rngs=rngs)

    return run_stacked(fn, stacked, x, length=length, dropout_key=None if deterministic else module.make_rng("dropout"),
                       remat=remat, frozen=frozen, unroll=unroll)
