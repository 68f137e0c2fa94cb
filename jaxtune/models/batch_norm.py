"""Batch norm with PyTorch semantics, frozen per layer.

:class:`BatchNorm` is the layer of every jaxtune CNN (ResNet, MobileNetV2, EfficientNet-Lite,
VGG-BN). A model's ``frozen_bn`` (:data:`FrozenBN`) says which of its layers keep their running
statistics in training: ``True`` (all), ``False`` (none) or a set of module paths, usually
:func:`jaxtune.frozen_batch_norm` of the rule table, so that a frozen group's batch norm stays frozen.

Example::

    model = model.clone(frozen_bn=jt.frozen_batch_norm(variables, rules))
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    # the frozen layers normalised with their running statistics; their updates are the inputs, unchanged
"""
from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtune.errors import UserError
from jaxtune.rules import leaf_paths


FrozenBN = bool | Collection[str]
"""A model's ``frozen_bn``: ``True`` (every batch-norm layer), ``False`` (none), or the module paths of
the frozen layers, as :func:`jaxtune.frozen_batch_norm` returns them (``"resnet/embedder/embedder/normalization"``)."""


def is_frozen_bn(frozen_bn: FrozenBN, path: Sequence[str]) -> bool:
    """Whether the batch-norm layer at module ``path`` (a tuple of names, ``module.path``) is frozen.

    Example::

        is_frozen_bn({"features_0/bn"}, ("features_0", "bn"))   # True
    """
    if isinstance(frozen_bn, bool):
        return frozen_bn
    _check_frozen_bn_type(frozen_bn)
    return "/".join(path) in frozen_bn


def _check_frozen_bn_type(frozen_bn: Any) -> None:
    if isinstance(frozen_bn, str) or not isinstance(frozen_bn, Collection):
        raise UserError(f"frozen_bn={frozen_bn!r}: use True, False or a set of batch-norm module paths "
                        "(jt.frozen_batch_norm(variables, rules))")


def check_frozen_bn(frozen_bn: FrozenBN, batch_stats: Any) -> None:
    """Raises unless ``frozen_bn`` is a bool or names only batch-norm layers of ``batch_stats`` (the
    parents of its ``mean``/``var`` leaves): a misspelt path would silently freeze nothing.

    Example::

        check_frozen_bn(model.frozen_bn, variables["batch_stats"])
    """
    if isinstance(frozen_bn, bool):
        return
    _check_frozen_bn_type(frozen_bn)
    layers = {p.rpartition("/")[0] for p in leaf_paths(batch_stats)}
    unknown = sorted(set(frozen_bn) - layers)
    if unknown:
        raise UserError(f"frozen_bn names {len(unknown)} module(s) that are not batch-norm layers of the variables, "
                        f"e.g. {unknown[:3]} (batch_stats layers: {sorted(layers)[:3]} ...); build the set with "
                        "jt.frozen_batch_norm(variables, rules) from this model's variables")


class BatchNorm(nn.Module):
    """BatchNorm over the last (channel) axis with PyTorch ``BatchNorm2d`` semantics.

    Parameters ``scale``/``bias``; running statistics ``mean``/``var`` in ``batch_stats``. With
    ``use_running_average=False`` it normalises with the batch mean and biased variance and, unless
    initialising, sets ``mean <- (1 - momentum) * mean + momentum * batch_mean`` and the same for
    ``var`` with the unbiased batch variance. Statistics are computed in float32 whatever ``dtype``.
    A layer that ``frozen`` names (:data:`FrozenBN`, matched against its module path) always uses and
    keeps its running statistics, as in evaluation.
    """

    epsilon: float = 1e-5
    momentum: float = 0.1
    dtype: Any = jnp.float32
    frozen: FrozenBN = False

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
        use_running_average = use_running_average or is_frozen_bn(self.frozen, self.path)
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
        x32 = x.astype(jnp.float32)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axis=axes)
            var = jnp.mean(jnp.square(x32 - mean), axis=axes)
            if not self.is_initializing():
                n = x.size // channels
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
                ra_var.value = (1.0 - self.momentum) * ra_var.value + self.momentum * unbiased
        y = (x32 - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
        return y.astype(self.dtype)
