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

import dataclasses
from collections.abc import Callable, Collection, Sequence
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


_MOMENTUM_FIELDS = ("bn_momentum", "batch_norm_momentum")   # MobileNetV2 / EfficientNet-Lite / VGG, ResNet


def batch_statistics(model: nn.Module) -> Callable[[dict, Any], dict]:
    """``stats(variables, images) -> batch_stats``, a pure function: every batch-norm layer's mean and
    unbiased variance over ``images`` (train-mode batch norm, so each layer sees the activations the
    layers below give in training), in ``variables["batch_stats"]``'s structure. Layers that
    ``model.frozen_bn`` names keep their running statistics (they normalise with them in training too).
    Jit or vmap it (members); :func:`recompute_batch_stats` averages it over batches.

    Example::

        stats = jax.jit(batch_statistics(model))
        means = jax.tree.map(lambda s: s[..., 0], stats(variables, images))
    """
    config = getattr(model, "config", None)
    field = next((f for f in _MOMENTUM_FIELDS if hasattr(config, f)), None)
    if field is None:
        raise UserError(f"batch statistics need a jaxtune CNN with batch norm (a config field "
                        f"{' or '.join(_MOMENTUM_FIELDS)}); got {type(model).__name__}")
    probe = model.clone(config=dataclasses.replace(config, **{field: 1.0}))

    def stats(variables: dict, images: Any) -> dict:
        return probe.apply(variables, images, train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.key(0)})[1]["batch_stats"]

    return stats


def average_batch_statistics(stats: Callable[[Any], Any], count: int, batch_size: int) -> Any:
    """The average of ``stats(start, stop)`` (a statistics tree of rows ``start:stop``) over batches of
    ``batch_size`` of ``count`` rows, each weighted by its size: what :func:`recompute_batch_stats` and
    the vmapped members of the experiments both compute. Raises on no rows or a batch size below 1.

    Example::

        average_batch_statistics(lambda a, b: stats(variables, images[a:b]), len(images), 256)
    """
    if count == 0 or batch_size < 1:
        raise UserError(f"re-estimating batch-norm statistics needs images and batch_size >= 1, got {count} "
                        f"images, batch_size={batch_size}")
    total = None
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        weighted = jax.tree.map(lambda s: s * (stop - start), stats(start, stop))
        total = weighted if total is None else jax.tree.map(jnp.add, total, weighted)
    return jax.tree.map(lambda s: s / count, total)


def recompute_batch_stats(model: nn.Module, variables: dict, images: Any, batch_size: int = 256) -> dict:
    """``variables`` with every batch-norm layer's running ``mean`` / ``var`` re-estimated over ``images``
    (NHWC, normalised as the model expects): the average over batches of each batch's statistics, weighted
    by batch size (unbiased variance, as training stores it); the weights are unchanged. It is PyTorch's
    ``torch.optim.swa_utils.update_bn``, for weights whose running statistics lag behind them: after few
    steps with a small momentum (EfficientNet-Lite keeps 0.99 of the old statistics per step), or averaged
    weights (EMA, SWA). Layers that ``model.frozen_bn`` names keep their statistics, as in training (a
    frozen backbone's features stay those its head learnt on); ``model.clone(frozen_bn=False)``
    re-estimates them too.

    Example::

        variables = jt.recompute_batch_stats(model, variables, train_images)
        logits = model.apply(variables, test_images)    # evaluation with the re-estimated statistics
    """
    if "batch_stats" not in variables:
        raise UserError(f"recompute_batch_stats needs a jaxtune CNN with batch norm and variables['batch_stats']; "
                        f"got {type(model).__name__} with variables {sorted(variables)}")
    stats = jax.jit(batch_statistics(model))   # the weights as arguments, not constants folded into the program
    return {**variables, "batch_stats": average_batch_statistics(lambda a, b: stats(variables, images[a:b]),
                                                                 len(images), batch_size)}
