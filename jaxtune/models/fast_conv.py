"""The mobile CNNs' depthwise and 1x1 convolutions in forms that XLA's CPU backend runs fast.

XLA's CPU backend lowers a grouped convolution with one input channel per group (the depthwise layers
of MobileNetV2 and EfficientNet-Lite) to a slow generic loop, and its gradient slower still; under
``vmap`` (members) every convolution, 1x1 included, becomes a grouped one over members, slower again.
The same operations written as ``k * k`` multiply-adds of shifted slices (depthwise) and as a matrix
product over channels (1x1) are work that XLA fuses or hands to its matmul kernels
(``benchmarks/cpu_convs.py`` measures both forms). :func:`depthwise_conv` and :func:`pointwise_conv` use
them on CPU and ``lax.conv_general_dilated`` elsewhere (GPU/TPU libraries have fast convolution kernels;
the rewritten forms are not measured there). :class:`DepthwiseConv` and :class:`PointwiseConv` are
drop-ins for bias-free ``nn.Conv`` layers with the same ``kernel`` parameter.

Example::

    y = depthwise_conv(x, kernel, strides=2, padding="SAME")      # x [N, H, W, C], kernel [3, 3, 1, C]
    z = pointwise_conv(y, kernel_1x1)                              # kernel_1x1 [1, 1, C, D]
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxtune.errors import UserError

IMPLEMENTATIONS = ("auto", "cpu", "conv")
"""``"cpu"``: the forms written for XLA's CPU backend; ``"conv"``: ``lax.conv_general_dilated``; ``"auto"``:
``"cpu"`` when the default backend is the CPU, else ``"conv"``."""
_default = ["auto"]
Padding = str | Sequence[tuple[int, int]]
"""``"SAME"`` / ``"VALID"`` (TensorFlow's) or ``[(top, bottom), (left, right)]``."""


@contextlib.contextmanager
def conv_implementation(name: str) -> Iterator[None]:
    """Within the block, :func:`depthwise_conv` and :func:`pointwise_conv` called without an
    ``implementation`` (every mobile CNN layer) use ``name`` (:data:`IMPLEMENTATIONS`); it applies
    to what is traced inside, so jit inside the block.

    Example::

        with conv_implementation("conv"):       # XLA's convolutions, e.g. to time them
            step = jax.jit(train_step).lower(state, batch).compile()
    """
    _check(name)
    _default.append(name)
    try:
        yield
    finally:
        _default.pop()


def _pads(x: jax.Array, kernel_size: int, strides: int, padding: Padding) -> list[tuple[int, int]]:
    if isinstance(padding, str):
        return lax.padtype_to_pads(x.shape[1:3], (kernel_size, kernel_size), (strides, strides), padding)
    return [tuple(p) for p in padding]


def _shifted_sum(x: jax.Array, kernel: jax.Array, strides: int, pads: list[tuple[int, int]]) -> jax.Array:
    k = kernel.shape[0]
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    out_h, out_w = (x.shape[1] - k) // strides + 1, (x.shape[2] - k) // strides + 1
    out = None
    for i in range(k):
        for j in range(k):
            tap = lax.slice(x, (0, i, j, 0), (x.shape[0], i + (out_h - 1) * strides + 1,
                                              j + (out_w - 1) * strides + 1, x.shape[3]), (1, strides, strides, 1))
            term = tap * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


def _check(implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise UserError(f"convolution implementation={implementation!r}: choose one of {IMPLEMENTATIONS}")


def _use_conv(implementation: str | None) -> bool:
    implementation = _default[-1] if implementation is None else implementation
    _check(implementation)
    return implementation == "conv" or (implementation == "auto" and jax.default_backend() != "cpu")


def depthwise_conv(x: jax.Array, kernel: jax.Array, strides: int = 1, padding: Padding = "SAME",
                   implementation: str | None = None) -> jax.Array:
    """Depthwise 2-D convolution of NHWC ``x`` with an HWIO ``kernel`` of shape ``[k, k, 1, C]`` (one
    filter per channel), as ``lax.conv_general_dilated(..., feature_group_count=C)``. ``padding``:
    ``"SAME"`` / ``"VALID"`` (TensorFlow's, asymmetric for stride 2) or ``[(top, bottom), (left, right)]``.
    ``implementation`` (:data:`IMPLEMENTATIONS`): ``"cpu"`` (``k * k`` multiply-adds of strided slices,
    accumulated in at least float32), ``"conv"`` (XLA's grouped convolution), ``"auto"``, or None (the
    innermost :func:`conv_implementation`, else ``"auto"``).
    Returns ``x``'s dtype.

    Example::

        y = depthwise_conv(x, kernel, strides=1, padding=[(1, 1), (1, 1)])   # PyTorch's padding=1
    """
    k, channels = kernel.shape[0], x.shape[-1]
    if kernel.shape != (k, k, 1, channels):
        raise UserError(f"depthwise_conv needs a kernel of shape (k, k, 1, {channels}) for {channels} input "
                        f"channels; got {kernel.shape}")
    pads = _pads(x, k, strides, padding)
    if _use_conv(implementation):
        return lax.conv_general_dilated(x, kernel.astype(x.dtype), (strides, strides), pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)
    accumulate = jnp.promote_types(x.dtype, jnp.float32)
    return _shifted_sum(x.astype(accumulate), kernel.astype(accumulate), strides, pads).astype(x.dtype)


def pointwise_conv(x: jax.Array, kernel: jax.Array, implementation: str | None = None) -> jax.Array:
    """1x1 convolution (stride 1) of NHWC ``x`` with an HWIO ``kernel`` ``[1, 1, C, D]``: a matrix
    product over channels (``implementation`` ``"cpu"``) or ``lax.conv_general_dilated`` (``"conv"``);
    ``"auto"`` picks by backend (:data:`IMPLEMENTATIONS`); None: as :func:`depthwise_conv`. Returns ``x``'s dtype.

    Example::

        y = pointwise_conv(x, kernel)        # x [N, H, W, 32], kernel [1, 1, 32, 192] -> [N, H, W, 192]
    """
    if kernel.ndim != 4 or kernel.shape[:2] != (1, 1) or kernel.shape[2] != x.shape[-1]:
        raise UserError(f"pointwise_conv needs a kernel of shape (1, 1, {x.shape[-1]}, D) for {x.shape[-1]} input "
                        f"channels; got {kernel.shape}")
    kernel = kernel.astype(x.dtype)
    if _use_conv(implementation):
        return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0])


class DepthwiseConv(nn.Module):
    """A bias-free depthwise convolution layer: ``nn.Conv(C, (k, k), feature_group_count=C,
    use_bias=False)`` with the same ``kernel`` parameter (``[k, k, 1, C]``, float32), computed by
    :func:`depthwise_conv` in ``dtype``.

    Example::

        y = DepthwiseConv(kernel_size=3, strides=2, padding="SAME").apply(variables, x)
    """

    kernel_size: int = 3
    strides: int = 1
    padding: Padding = "SAME"
    dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size, 1, x.shape[-1]),
                            jnp.float32)
        return depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, self.padding)


class PointwiseConv(nn.Module):
    """A bias-free 1x1 convolution layer: ``nn.Conv(features, (1, 1), use_bias=False)`` with the same
    ``kernel`` parameter (``[1, 1, C, features]``, float32), computed by :func:`pointwise_conv` in ``dtype``.

    Example::

        y = PointwiseConv(192).apply(variables, x)
    """

    features: int
    dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), jnp.float32)
        return pointwise_conv(x.astype(self.dtype), kernel.astype(self.dtype))
