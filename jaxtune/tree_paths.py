"""Path strings of pytree leaves, the names rule tables are written against.

Works on anything JAX flattens: nested dicts, ``FrozenDict``, ``flax.nnx.State`` (without the
``Variable`` wrappers), :class:`jaxtune.LoraParams` (without its two child keys), lists and NamedTuples.
:mod:`jaxtune.rules` matches rules against these paths.

Example::

    >>> leaf_paths({"encoder": {"layer_3": {"kernel": 0.0}}})
    ['encoder/layer_3/kernel']
"""
from __future__ import annotations

import sys
from typing import Any

import jax

LORA_FACTORS = ("lora_a", "lora_b")
"""Names of the two factor leaves under a LoRA'd kernel's path (``.../query/kernel/lora_a``)."""

# Keys of jaxtune.LoraParams' two children: left out of path strings, so that the base params and
# the adapters keep the paths rules are written for.
LORA_TREE_KEYS = ("lora_params", "lora_adapters")


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path_string(keys: tuple) -> str:
    # nnx.State wraps each array in a Variable whose only child is `.value`: not part of the name.
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    return "/".join(_key_name(k) for k in keys
                    if not (isinstance(k, jax.tree_util.GetAttrKey) and k.name in LORA_TREE_KEYS))


def lora_base_path(path: str) -> str | None:
    """The kernel path of a LoRA factor path (``.../kernel/lora_a`` -> ``.../kernel``), else None.

    Example::

        >>> lora_base_path("layer_0/query/kernel/lora_b")
        'layer_0/query/kernel'
    """
    parent, _, last = path.rpartition("/")
    return parent if parent and last in LORA_FACTORS else None


def _is_variable(x: Any) -> bool:
    """Whether ``x`` is a ``flax.nnx.Variable`` (without importing flax.nnx: none exists before it is imported)."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(x, nnx.Variable)


def strip_variables(tree: Any) -> Any:
    """``tree`` with every ``flax.nnx.Variable`` replaced by its value (``nnx.as_pure``); other
    trees unchanged. An ``nnx.State`` of ``Param`` objects becomes the arrays-only tree that
    ``nnx.Optimizer`` hands to ``tx.update``.

    Example::

        >>> strip_variables({"w": 1.0})
        {'w': 1.0}
    """
    if not any(_is_variable(x) for x in jax.tree_util.tree_leaves(tree, is_leaf=_is_variable)):
        return tree
    value = lambda v: v.get_raw_value() if hasattr(v, "get_raw_value") else v.value
    return jax.tree_util.tree_map(lambda x: strip_variables(value(x)) if _is_variable(x) else x, tree,
                                  is_leaf=_is_variable)


def tree_structure(tree: Any) -> Any:
    """The structure of the trees jaxtune builds over ``tree`` (masks, labels, multipliers): that of
    ``tree`` without its ``nnx.Variable`` wrappers, so that they fit both an ``nnx.State`` and its
    ``nnx.as_pure`` arrays (a leaf is a prefix of the ``Variable`` it stands for).

    Example::

        >>> tree_structure({"a": 0.0, "b": 1.0}).num_leaves
        2
    """
    return jax.tree_util.tree_structure(strip_variables(tree))


def leaf_paths(tree: Any) -> list[str]:
    """Path strings of the leaves of ``tree``, in ``jax.tree.leaves`` order.

    Example::

        >>> leaf_paths({"dense": {"kernel": 1, "bias": 2}})
        ['dense/bias', 'dense/kernel']
    """
    return [_path_string(keys) for keys, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def param_paths(tree: Any) -> Any:
    """A pytree of the structure of ``tree`` whose leaves are path strings.

    Works on anything JAX flattens: nested dicts, ``FrozenDict``, ``flax.nnx.State`` (the
    ``.value`` of each variable is left out of the name; like every tree jaxtune builds over an
    ``nnx.State``, the result has its structure without the ``Variable`` wrappers:
    :func:`tree_structure`), lists/tuples (indices) and NamedTuples (field names).

    Example::

        >>> param_paths({"encoder": {"layer_3": {"kernel": jnp.zeros(2)}}})
        {'encoder': {'layer_3': {'kernel': 'encoder/layer_3/kernel'}}}
    """
    return jax.tree_util.tree_unflatten(tree_structure(tree), leaf_paths(tree))
