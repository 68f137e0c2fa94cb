"""VGG (Simonyan & Zisserman 2014), with or without batch norm, in Flax, loading torchvision state dicts.

The network is torchvision's ``vgg11/13/16/19[_bn]``: 3x3 convolutions (with bias) + ReLU, batch norm
after each conv in the ``_bn`` variants, 2x2 max pooling, adaptive average pooling to 7x7 (exactly
PyTorch's bins, so any input size of at least 32x32 works; at 224x224 it is the identity), then
``classifier.0`` (25088 -> 4096), ReLU, dropout, ``classifier.3`` (4096 -> 4096), ReLU, dropout and the
head ``classifier.6``. The pooled map is flattened in PyTorch's channel-major order so the first
classifier weight is torchvision's, transposed.

Flax names: the ``j``-th convolution is ``conv_j`` and its batch norm ``bn_j`` (torchvision numbers
them by their position in ``features``, which the name map handles); the classifier keeps torchvision's
indices: ``classifier_0``, ``classifier_3``, ``classifier_6``.

Layer ids: ``conv_j``/``bn_j`` -> ``j`` (the first conv is the stem, 0), ``classifier_0`` ->
``num_layers - 1``, ``classifier_3`` -> ``num_layers``, the head ``classifier_6`` -> ``num_layers + 1``,
with ``num_layers`` = convolutions + 1 (14 for VGG16).

``frozen_bn=True`` keeps batch norm in eval mode while training. ``FAMILY`` lets ``jaxtune.hub`` save
and load the model with torchvision's tensor names: ``save_pretrained`` writes ``model.pth``, a state
dict that ``torchvision.models.vgg16(num_classes=N)`` (``vgg16_bn``, ...) loads when the classifier is
torchvision's 4096 wide, plus ``model.safetensors`` and a ``config.json`` with ``model_type:
"torchvision_vgg"`` (jaxtune also reads the older ``"vgg"``). No VGG weights ship on
PyPI; ``from_torch`` reads torchvision's ``vgg16-397923af.pth`` / ``vgg16_bn-6c64b313.pth`` files.

Example::

    from jaxtune.models import vgg
    model, variables = vgg.from_torch("vgg16_bn-6c64b313.pth", num_labels=10)   # config inferred
    logits = model.apply(variables, vgg.normalize_images(photos))
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
from jaxtune.models._cnn import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    adaptive_avg_pool2d,
    normalize_images,
)
from jaxtune.models.family import NameMap, NameRule
from jaxtune.models.batch_norm import BatchNorm, FrozenBN

__all__ = [
    "FAMILY",
    "HEAD_PATHS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG",
    "VGG_LAYOUTS",
    "VGGConfig",
    "default_rules",
    "from_torch",
    "layer_ids",
    "name_map",
    "normalize_images",
    "vgg",
    "vgg16",
]

HEAD_PATHS = (r"params/classifier_6/.*",)
_M = "M"
VGG_LAYOUTS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, _M, 128, _M, 256, 256, _M, 512, 512, _M, 512, 512, _M),
    "vgg13": (64, 64, _M, 128, 128, _M, 256, 256, _M, 512, 512, _M, 512, 512, _M),
    "vgg16": (64, 64, _M, 128, 128, _M, 256, 256, 256, _M, 512, 512, 512, _M, 512, 512, 512, _M),
    "vgg19": (64, 64, _M, 128, 128, _M, 256, 256, 256, 256, _M, 512, 512, 512, 512, _M, 512, 512, 512, 512, _M),
}
"""torchvision's feature layouts: conv output channels, ``"M"`` = 2x2 max pooling."""


@dataclasses.dataclass(frozen=True)
class VGGConfig:
    """Architecture of a VGG.

    Attributes:
      layers: conv channels and ``"M"`` (max pool), e.g. ``VGG_LAYOUTS["vgg16"]`` (the default).
      batch_norm: a BatchNorm after every conv (torchvision's ``*_bn`` models).
      hidden_size: width of the two hidden classifier layers.
      pool_size: output size of the adaptive average pooling.
      dropout: dropout rate in the classifier.
      bn_momentum / bn_epsilon: PyTorch-convention batch-norm settings.
      image_size: training resolution of torchvision's weights.
      num_labels: head size the builders use when not given one.
    """

    layers: tuple[int | str, ...] = VGG_LAYOUTS["vgg16"]
    batch_norm: bool = False
    hidden_size: int = 4096
    pool_size: int = 7
    dropout: float = 0.5
    bn_momentum: float = 0.1
    bn_epsilon: float = 1e-5
    image_size: int = 224
    num_labels: int = 1000

    def __post_init__(self):
        bad = [v for v in self.layers if v != _M and not (isinstance(v, int) and v > 0)]
        if bad:
            raise ValueError(f"VGGConfig.layers: entries must be positive channel counts or 'M', got {bad}")

    @property
    def num_convs(self) -> int:
        return sum(v != _M for v in self.layers)

    @property
    def num_layers(self) -> int:
        """Convolutions + 1 (so that the two hidden classifier layers are ``num_layers - 1``, ``num_layers``)."""
        return self.num_convs + 1

    def torch_conv_indices(self) -> list[int]:
        """Position of each conv in torchvision's ``features`` Sequential."""
        indices, position = [], 0
        for v in self.layers:
            if v == _M:
                position += 1
            else:
                indices.append(position)
                position += 3 if self.batch_norm else 2
        return indices


class VGG(nn.Module):
    """VGG classifier on NHWC images normalised with :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD`.

    Attributes:
      config: the architecture (VGG16 without batch norm by default).
      num_labels: head size; ``None`` returns the ``hidden_size`` features after the second hidden layer.
      frozen_bn: batch norm (``*_bn`` models) uses its running statistics even with ``train=True``:
        ``True`` for every layer, or a set of module paths (``"bn_1"``) from
        :func:`jaxtune.frozen_batch_norm` for the layers of a frozen group.
      dtype: compute dtype (parameters stay float32). Outputs are float32.
    """

    config: VGGConfig = VGGConfig()
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
        common = {"dtype": self.dtype, "param_dtype": jnp.float32}
        dense = dict(kernel_init=_cnn.TORCH_HEAD_INIT, **common)
        x = jnp.asarray(images, self.dtype)
        j = 0
        for v in cfg.layers:
            if v == _M:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            x = nn.Conv(v, (3, 3), padding=((1, 1), (1, 1)), kernel_init=_cnn.TORCH_CONV_INIT, name=f"conv_{j}",
                        **common)(x)
            if cfg.batch_norm:
                x = BatchNorm(cfg.bn_epsilon, cfg.bn_momentum, self.dtype, self.frozen_bn, name=f"bn_{j}")(
                    x, use_running_average=not train)
            x = nn.relu(x)
            j += 1
        x = adaptive_avg_pool2d(x, (cfg.pool_size, cfg.pool_size))
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch.flatten order (C, H, W)
        for name in ("classifier_0", "classifier_3"):
            x = nn.relu(nn.Dense(cfg.hidden_size, name=name, **dense)(x))
            x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
        if self.num_labels is None:
            return x.astype(jnp.float32)
        return nn.Dense(self.num_labels, name="classifier_6", **dense)(x).astype(jnp.float32)

    def layer_ids(self, path: str) -> int:
        """Layer id of a parameter path (see :func:`layer_ids`)."""
        return layer_ids(path, self.config.num_layers)

    def default_rules(self) -> list:
        """The family's default rule table (the module's :func:`default_rules`), e.g.
        ``jt.make_optimizer(params, model.default_rules(), layer_ids=model.layer_ids, layer_decay=0.8)``."""
        return default_rules()


_CONV = re.compile(r"(?:conv|bn)_(\d+)/.+")
_CLASSIFIER = {"classifier_0": -1, "classifier_3": 0, "classifier_6": 1}


def layer_ids(path: str, num_layers: int) -> int:
    """Layer id of a VGG variable path (``params/`` or ``batch_stats/`` prefix optional).

    ``conv_j``/``bn_j`` -> ``j``; ``classifier_0`` -> ``num_layers - 1``; ``classifier_3`` ->
    ``num_layers``; ``classifier_6`` (the head) -> ``num_layers + 1``.

    Example::

        layer_ids("conv_0/kernel", 14)         # 0
        layer_ids("classifier_6/bias", 14)     # 15
    """
    path = _cnn.strip_collection(path)
    m = _CONV.fullmatch(path)
    if m and int(m.group(1)) < num_layers - 1:
        return int(m.group(1))
    offset = _CLASSIFIER.get(path.split("/", 1)[0])
    if offset is not None and "/" in path:
        return num_layers + offset
    raise KeyError(f"no VGG layer id for parameter {path!r} (num_layers={num_layers}); expected 'conv_<j>/...', "
                   "'bn_<j>/...' or 'classifier_{0,3,6}/...'")


default_rules = _cnn.default_rules


def name_map(config: VGGConfig = VGGConfig()) -> NameMap:
    """torchvision tensor names <-> Flax variable paths for ``config``."""
    rows: list[NameRule] = []
    for j, index in enumerate(config.torch_conv_indices()):
        rows += [NameRule(f"features.{index}.weight", f"params/conv_{j}/kernel", "conv"),
                 NameRule(f"features.{index}.bias", f"params/conv_{j}/bias")]
        if config.batch_norm:
            rows += _cnn.bn_rules(f"features.{index + 1}", f"bn_{j}")
    for i in (0, 3, 6):
        rows += _cnn.dense_rules(f"classifier.{i}", f"classifier_{i}")
    return NameMap(rows)


def config_from_state_dict(state: Mapping[str, np.ndarray]) -> VGGConfig:
    """Recognises torchvision's VGG11/13/16/19 (with or without BN) from tensor names and shapes.

    Example::

        config_from_state_dict(state)     # VGGConfig(layers=VGG_LAYOUTS["vgg16"], batch_norm=True, ...)
    """
    convs = [k for k, v in state.items() if k.startswith("features.") and k.endswith(".weight") and np.ndim(v) == 4]
    layouts = {sum(v != _M for v in layers): name for name, layers in VGG_LAYOUTS.items()}
    if len(convs) not in layouts:
        raise ValueError(f"state dict has {len(convs)} 'features.*' convolutions; torchvision's VGG layouts have "
                         f"{sorted(layouts)}; pass config=VGGConfig(layers=...) for another layout")
    hidden = int(np.shape(state["classifier.0.weight"])[0]) if "classifier.0.weight" in state else 4096
    return VGGConfig(layers=VGG_LAYOUTS[layouts[len(convs)]],
                     batch_norm=any(k.endswith(".running_mean") for k in state), hidden_size=hidden)


def vgg(config: VGGConfig | None = None, num_labels: int | None = None, *, include_head: bool = True,
        dtype: Any = jnp.float32, frozen_bn: FrozenBN = False) -> VGG:
    """Builds the (uninitialised) model: ``num_labels`` defaults to ``config.num_labels``;
    ``include_head=False`` leaves out ``classifier_6``.

    Example::

        model = vgg(VGGConfig(batch_norm=True), num_labels=10)
    """
    config = config or VGGConfig()
    labels = (config.num_labels if num_labels is None else num_labels) if include_head else None
    return VGG(_cnn.with_head_size(config, labels), num_labels=labels, frozen_bn=frozen_bn, dtype=dtype)


def vgg16(batch_norm: bool = False, num_labels: int = 1000, *, dtype: Any = jnp.float32,
          frozen_bn: FrozenBN = False) -> VGG:
    """torchvision's ``vgg16`` / ``vgg16_bn`` architecture (uninitialised).

    Example::

        model = vgg16(batch_norm=True, num_labels=10)
    """
    return vgg(VGGConfig(layers=VGG_LAYOUTS["vgg16"], batch_norm=batch_norm, num_labels=num_labels), dtype=dtype,
               frozen_bn=frozen_bn)


def from_torch(path_or_state_dict: str | os.PathLike | Mapping[str, np.ndarray], num_labels: int | None = None,
               config: VGGConfig | None = None, *, include_head: bool = True, dtype: Any = jnp.float32,
               frozen_bn: FrozenBN = False, rng: int | jax.Array = 0) -> tuple[VGG, dict]:
    """Loads a torchvision VGG state dict (a ``.pth`` file, read without torch, or a dict).

    ``config=None`` recognises the layout (see :func:`config_from_state_dict`). ``num_labels=None``
    keeps the checkpoint's head; another size gets a freshly initialised ``classifier_6`` (from
    ``rng``). ``include_head=False`` returns the model without ``classifier_6``. ``frozen_bn`` is passed
    to :class:`VGG`.

    Example::

        model, variables = from_torch("vgg16-397923af.pth", num_labels=10)
    """
    state, source = _cnn.read_state(path_or_state_dict)
    return _cnn.from_torch(
        state, config=config or config_from_state_dict(state), head_weight="classifier.6.weight",
        make_model=lambda cfg: vgg(cfg, include_head=include_head, dtype=dtype, frozen_bn=frozen_bn),
        name_map=name_map, head_paths=HEAD_PATHS, num_labels=num_labels, rng=rng, source=source)


FAMILY = _cnn.cnn_family(name="vgg", model_type="torchvision_vgg", config_cls=VGGConfig, model_cls=VGG,
                         name_map=name_map, head_paths=HEAD_PATHS)
