"""Embedding lookups whose gradient avoids a slow, contended scatter on GPUs.

The gradient of ``jnp.take(table, ids)`` is a scatter-add into ``table``'s shape. XLA:GPU runs it
with one atomic add per element, and in bfloat16 those are compare-and-swap loops: when many ids are
equal (BERT's token types are all 0, T5's relative-position buckets repeat across a 256 x 256
grid, padding repeats one id) the loops serialise. On an H200 four such scatters took 66-78 % of
BERT-base's and T5-small's full bf16 step (benchmarks/results/gpu.md's profile).

:func:`embedding_lookup` avoids both on accelerators: a table of at most :data:`ONE_HOT_MAX_ROWS`
rows is read by a one-hot matrix product (its gradient is a matrix product too, no scatter), a larger one is
gathered from a float32 copy, so the gradient's scatter uses the hardware's float32 atomic adds. On
CPU, where XLA's scatter is a plain loop and the one-hot product the slower one
(``benchmarks/embedding_grad.py``), small tables keep ``jnp.take``. Forward values are
the same rows as ``jnp.take`` (the one-hot product runs at ``Precision.HIGHEST``, 1.0 times a row
plus zeros), returned in the requested dtype.

Example::

    rows = embedding_lookup(table, token_type_ids, jnp.bfloat16)        # (batch, seq, hidden)
    embed = Embed(30522, 768, dtype=jnp.bfloat16, name="word_embeddings")   # nn.Embed's parameters
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ONE_HOT_MAX_ROWS = 1024   # a one-hot product of this many rows costs less than a scatter's atomics


def embedding_lookup(table: jax.Array, ids: jax.Array, dtype: Any = None, *,
                     one_hot: bool | None = None) -> jax.Array:
    """``table[ids]`` in ``dtype`` (default ``table.dtype``), with a scatter-free or float32 gradient.

    ``one_hot`` picks the path: True a one-hot product, False a gather from a float32 copy, None
    (default) one-hot for at most :data:`ONE_HOT_MAX_ROWS` rows off CPU.

    Ids follow ``jnp.take``: ``-rows <= id < 0`` counts from the end, an id outside ``[-rows, rows)``
    gives a row of NaN (which the train step's non-finite check then reports).

    Example::

        embedding_lookup(jnp.eye(3), jnp.array([2, 0]))     # [[0, 0, 1], [1, 0, 0]]
    """
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"embedding ids must be integers, got dtype {ids.dtype}; cast token ids with .astype(jnp.int32)")
    dtype = jnp.dtype(dtype) if dtype is not None else table.dtype
    rows = table.shape[0]
    if one_hot is None:
        one_hot = rows <= ONE_HOT_MAX_ROWS and jax.default_backend() != "cpu"
    if one_hot:
        ids = jnp.where(ids < 0, ids + rows, ids)
        hot = jax.nn.one_hot(ids, rows, dtype=table.dtype)
        out = jnp.einsum("...r,rd->...d", hot, table, precision=jax.lax.Precision.HIGHEST)
        out = jnp.where(((ids >= 0) & (ids < rows))[..., None], out, jnp.nan)
    else:
        out = jnp.take(table.astype(jnp.promote_types(table.dtype, jnp.float32)), ids, axis=0)
    return out.astype(dtype)


class Embed(nn.Embed):
    """``flax.linen.Embed`` (same parameter, ``embedding``, same ``attend``) that calls
    :func:`embedding_lookup`.

    Example::

        x = Embed(2, 768, dtype=jnp.bfloat16, name="token_type_embeddings")(token_type_ids)
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return embedding_lookup(self.embedding, inputs, self.dtype or self.embedding.dtype)
