"""A ``dot_general`` for ``flax.linen.Dense`` on sequences: the leading axes are flattened first.

``nn.Dense`` on a ``(batch, length, features)`` input contracts a 3-D array with the kernel. XLA
compiles that as it is, and on CPU the weight gradient ``x^T dy`` then contracts two axes of a 3-D
array: XLA:CPU adds transposing copies and leaves the dot to its slower generic path. Reshaping to
``(batch * length, features)`` first (free: a bitcast of a row-major array) gives plain 2-D
matrix products forward and backward. On the real all-MiniLM-L6-v2 fine-tuning step (bs 16,
seq 64, one core) this cut the step from 1162 to 1025 ms; GPUs compile both forms alike.

Example::

    dense = nn.Dense(768, dot_general=flat_dot_general)
    y = dense.apply(variables, x)          # x: (batch, length, in) -> y: (batch, length, 768)
"""
from __future__ import annotations

import jax


def flat_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``jax.lax.dot_general`` that runs a Dense contraction (last axis of ``lhs`` with the first
    of a 2-D ``rhs``, no batch axes) as a 2-D matrix product; any other contraction is passed on."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    dense_like = (lhs.ndim > 2 and rhs.ndim == 2 and tuple(lhs_contract) == (lhs.ndim - 1,)
                  and tuple(rhs_contract) == (0,) and not lhs_batch and not rhs_batch)
    if not dense_like:
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)
    flat = jax.lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), rhs, (((1,), (0,)), ((), ())),
                               precision=precision, preferred_element_type=preferred_element_type)
    return flat.reshape(*lhs.shape[:-1], rhs.shape[-1])
