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

Example (in a module's ``@nn.compact __call__``)::

    layer = BertLayer(config, dtype, parent=None)
    x = scan_layers(self, layer, x, mask, length=12, deterministic=True, remat="full", frozen=4)
"""
from __future__ import annotations

from typing import Any

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


def _stack_init(layer: nn.Module, length: int, args: tuple):
    """Initialiser of the stacked variable: ``layer``'s params for ``length`` keys, stacked by ``vmap``."""
    def init(rng):
        keys = jax.random.split(rng, length)
        return jax.vmap(lambda key: layer.init({"params": key}, *args, deterministic=True)["params"])(keys)
    return init


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
    check_remat(remat, "remat")
    check_unroll(unroll, "unroll")
    if not 0 <= frozen <= length:
        raise ValueError(f"frozen={frozen} layers of a stack of {length}; need 0 <= frozen <= {length}")
    stacked = module.variable("params", name, lambda: _stack_init(layer, length, (x, *args))(
        module.make_rng("params"))).value
    keys = None if deterministic else jax.random.split(module.make_rng("dropout"), length)

    def body(carry, xs):
        params, key = xs
        rngs = {} if key is None else {"dropout": key}
        return layer.apply({"params": params}, carry, *args, deterministic=deterministic, rngs=rngs), None

    if remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)

    def run(carry, start, stop, params):
        sliced = jax.tree_util.tree_map(lambda p: p[start:stop], params)
        xs = (sliced, None if keys is None else keys[start:stop])
        return jax.lax.scan(body, carry, xs, unroll=min(unroll, stop - start))[0]

    if frozen:
        x = run(x, 0, frozen, jax.lax.stop_gradient(stacked))
    return run(x, frozen, length, stacked) if frozen < length else x
