"""ResNet-18/34/50/101/152 in Flax linen (NHWC), laid out like Hugging Face ``ResNetModel`` /
``ResNetForImageClassification`` so that ``config.json`` + safetensors checkpoints load and save with
a short name map.

Structure (HF semantics, ``transformers/models/resnet/modeling_resnet.py``): a stem (7x7 stride-2 conv,
BatchNorm, activation, 3x3 stride-2 max-pool with padding 1), ``len(depths)`` stages of basic
(two 3x3 convs) or bottleneck (1x1 -> 3x3 -> 1x1, channels reduced 4x) residual blocks with a 1x1
conv + BatchNorm shortcut where the shape changes, global average pooling and, for
``image_classification``, one linear classifier of any size.

BatchNorm follows PyTorch exactly: in training it normalises with the biased batch variance and
updates the running statistics (collection ``batch_stats``) with momentum 0.1 and the *unbiased*
variance; in evaluation it uses the running statistics. Three modes::

    logits = model.apply(variables, images)                                  # eval: running stats
    logits, updates = model.apply(variables, images, train=True,
                                  mutable=["batch_stats"])                  # train: batch stats,
    variables = {**variables, **updates}                                     #   running stats updated
    frozen = model.clone(frozen_bn=True)                                     # train with frozen BN:
    logits = frozen.apply(variables, images, train=True)                     #   running stats, no update

``frozen_bn=True`` is the usual choice when fine-tuning with small batches: BatchNorm behaves as in
evaluation (its scale and bias still train, unless a rule freezes them) and ``batch_stats`` needs no
``mutable``. ``frozen_bn`` may also be a set of BatchNorm module paths, frozen one by one: the runner
passes :func:`jaxtune.frozen_batch_norm` of the rule table, so a frozen group's BatchNorm keeps its
running statistics while the trained layers' BatchNorm adapts::

    model = model.clone(frozen_bn=jt.frozen_batch_norm(variables, rules))

Layer ids (for layer-wise LR decay and gradual unfreezing) count *stages*: the stem is 0, stage ``s``
(``stages_{s}``) is ``s + 1`` and the classifier is ``L + 1`` with ``L = len(config.depths)`` (4 for
every standard ResNet). Stages are the natural unit of a CNN (each changes resolution and width) and
keep the ids comparable across ResNet-18 ... ResNet-152.

Example::

    from jaxtune.models import resnet
    config = resnet.resnet_config(50, num_labels=10)
    model = resnet.ResNetForImageClassification(config)
    variables = model.init(jax.random.key(0), *resnet.example_inputs(config, "image_classification"))
    logits = model.apply(variables, images_nhwc)          # (batch, 10)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.models.batch_norm import BatchNorm, FrozenBN
from jaxtune.models.family import ModelFamily, NameMap, NameRule
from jaxtune.rules import Settings, settings

TASKS = (None, "image_classification")

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "relu6": nn.relu6,
    "leaky_relu": nn.leaky_relu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),
    "silu": nn.silu,
    "swish": nn.silu,
    "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
}

# depth -> (layer_type, depths, hidden_sizes) of the standard ImageNet ResNets (He et al. 2016).
_STANDARD = {
    18: ("basic", (2, 2, 2, 2), (64, 128, 256, 512)),
    34: ("basic", (3, 4, 6, 3), (64, 128, 256, 512)),
    50: ("bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048)),
    101: ("bottleneck", (3, 4, 23, 3), (256, 512, 1024, 2048)),
    152: ("bottleneck", (3, 8, 36, 3), (256, 512, 1024, 2048)),
}


# --------------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Hyper-parameters of a ResNet, named as in HF ``ResNetConfig`` (``config.json``).

    Attributes:
      num_channels: input image channels.
      embedding_size: channels of the stem convolution.
      hidden_sizes: output channels of each stage.
      depths: residual blocks per stage.
      layer_type: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50 and deeper).
      hidden_act: activation name (HF ``ACT2FN`` names such as ``"relu"``).
      downsample_in_first_stage: the first stage's first block uses stride 2.
      downsample_in_bottleneck: a bottleneck block strides in its first 1x1 conv instead of the 3x3.
      num_labels: classifier size of the checkpoint (``None`` when it has no head).
      id2label: label names by id, kept for saving (not part of the hash).
      batch_norm_eps: BatchNorm epsilon (PyTorch default 1e-5).
      batch_norm_momentum: weight of the new batch statistic in the running average, PyTorch
        convention (0.1 = Flax ``momentum=0.9``).
    """

    num_channels: int = 3
    embedding_size: int = 64
    hidden_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    layer_type: str = "bottleneck"
    hidden_act: str = "relu"
    downsample_in_first_stage: bool = False
    downsample_in_bottleneck: bool = False
    num_labels: int | None = None
    id2label: Mapping[int, str] | None = dataclasses.field(default=None, hash=False)
    batch_norm_eps: float = 1e-5
    batch_norm_momentum: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        if self.layer_type not in ("basic", "bottleneck"):
            raise ValueError(f"ResNetConfig.layer_type={self.layer_type!r}; use 'basic' or 'bottleneck'")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"ResNetConfig.hidden_act={self.hidden_act!r} is not supported; "
                             f"use one of {sorted(_ACTIVATIONS)}")
        if len(self.hidden_sizes) != len(self.depths) or not self.depths:
            raise ValueError(f"ResNetConfig: hidden_sizes {self.hidden_sizes} and depths {self.depths} "
                             "must be non-empty and of the same length (one entry per stage)")
        if self.layer_type == "bottleneck" and any(h % 4 for h in self.hidden_sizes):
            raise ValueError(f"ResNetConfig: bottleneck hidden_sizes {self.hidden_sizes} must be "
                             "multiples of 4 (the bottleneck reduces channels 4x)")

    @property
    def num_stages(self) -> int:
        """Number of stages, the ``L`` of the layer ids."""
        return len(self.depths)


def resnet_config(depth: int, num_labels: int | None = 1000, **overrides: Any) -> ResNetConfig:
    """Config of a standard ImageNet ResNet-``depth`` (18, 34, 50, 101 or 152), as in
    ``microsoft/resnet-{depth}``.

    Example::

        config = resnet_config(50, num_labels=10)
        assert config.depths == (3, 4, 6, 3)
    """
    if depth not in _STANDARD:
        raise ValueError(f"resnet_config: no standard ResNet-{depth}; choose one of {sorted(_STANDARD)}")
    layer_type, depths, hidden_sizes = _STANDARD[depth]
    return ResNetConfig(layer_type=layer_type, depths=depths, hidden_sizes=hidden_sizes,
                        num_labels=num_labels, **overrides)


def config_from_hf(hf: Mapping[str, Any]) -> ResNetConfig:
    """HF ``config.json`` dict -> :class:`ResNetConfig` (keys it does not use are ignored).

    Example::

        config = config_from_hf(json.load(open("resnet-50/config.json")))
    """
    if hf.get("model_type", "resnet") != "resnet":
        raise ValueError(f"config_from_hf: model_type {hf.get('model_type')!r} is not a ResNet config")
    id2label = hf.get("id2label")
    id2label = {int(k): str(v) for k, v in id2label.items()} if id2label else None
    num_labels = hf.get("num_labels", len(id2label) if id2label else None)
    fields = {f.name for f in dataclasses.fields(ResNetConfig)} - {"num_labels", "id2label"}
    return ResNetConfig(num_labels=num_labels, id2label=id2label,
                        **{k: hf[k] for k in fields if k in hf})


def config_to_hf(config: ResNetConfig, task: str | None = None, num_labels: int | None = None) -> dict:
    """:class:`ResNetConfig` -> ``config.json`` dict that ``transformers`` loads for ``task``.

    Example::

        json.dump(config_to_hf(config, "image_classification"), open("out/config.json", "w"))
    """
    _check_task(task)
    hf = {
        "architectures": ["ResNetForImageClassification" if task else "ResNetModel"],
        "model_type": "resnet",
        "num_channels": config.num_channels,
        "embedding_size": config.embedding_size,
        "hidden_sizes": list(config.hidden_sizes),
        "depths": list(config.depths),
        "layer_type": config.layer_type,
        "hidden_act": config.hidden_act,
        "downsample_in_first_stage": config.downsample_in_first_stage,
        "downsample_in_bottleneck": config.downsample_in_bottleneck,
    }
    labels = num_labels if num_labels is not None else config.num_labels
    if labels is not None:
        id2label = dict(config.id2label) if config.id2label and len(config.id2label) == labels else {
            i: f"LABEL_{i}" for i in range(labels)}
        hf["id2label"] = {str(i): name for i, name in sorted(id2label.items())}
        hf["label2id"] = {name: i for i, name in sorted(id2label.items())}
    return hf


def _check_task(task: str | None) -> None:
    if task not in TASKS:
        raise ValueError(f"ResNet has no task {task!r}; supported tasks: {TASKS}")


# --------------------------------------------------------------------------------------------- modules
def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
    """Bias-free conv with PyTorch's symmetric ``kernel // 2`` padding and HF's Kaiming init."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                   kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"), name=name)


class ResNetConvLayer(nn.Module):
    """conv -> BatchNorm -> activation (``activation=None``: no activation)."""

    config: ResNetConfig
    features: int
    kernel: int = 3
    stride: int = 1
    activation: str | None = "relu"
    frozen_bn: FrozenBN = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = _conv(self.features, self.kernel, self.stride, self.dtype, "convolution")(x)
        x = BatchNorm(self.config.batch_norm_eps, self.config.batch_norm_momentum, self.dtype, self.frozen_bn,
                      name="normalization")(x, use_running_average=not train)
        return x if self.activation is None else _ACTIVATIONS[self.activation](x)


class ResNetBlock(nn.Module):
    """One residual block (HF ``ResNetBasicLayer`` / ``ResNetBottleNeckLayer``): sub-layers
    ``layer_{k}``, a ``shortcut`` conv+BN when channels or stride change, ``hidden_act`` after the sum.

    As in HF, the activations inside the block are always ReLU; ``hidden_act`` applies only to the
    stem and to the output of each block."""

    config: ResNetConfig
    features: int
    stride: int = 1
    frozen_bn: FrozenBN = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg, common = self.config, {"config": self.config, "frozen_bn": self.frozen_bn, "dtype": self.dtype}
        if cfg.layer_type == "basic":
            specs = [(self.features, 3, self.stride, "relu"), (self.features, 3, 1, None)]
        else:
            reduced = self.features // 4
            first, middle = (self.stride, 1) if cfg.downsample_in_bottleneck else (1, self.stride)
            specs = [(reduced, 1, first, "relu"), (reduced, 3, middle, "relu"), (self.features, 1, 1, None)]
        residual = x
        if x.shape[-1] != self.features or self.stride != 1:
            residual = ResNetConvLayer(features=self.features, kernel=1, stride=self.stride, activation=None,
                                       name="shortcut", **common)(x, train)
        for k, (features, kernel, stride, act) in enumerate(specs):
            x = ResNetConvLayer(features=features, kernel=kernel, stride=stride, activation=act,
                                name=f"layer_{k}", **common)(x, train)
        return _ACTIVATIONS[cfg.hidden_act](x + residual)


class ResNetModel(nn.Module):
    """ResNet backbone (HF ``ResNetModel``).

    ``__call__(pixel_values, train=False)`` takes NHWC images and returns
    ``(last_hidden_state, pooled)``: the last stage's NHWC feature map and its global average,
    shape ``(batch, hidden_sizes[-1])``.

    Example::

        model = ResNetModel(resnet_config(18))
        variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
        features, pooled = model.apply(variables, images)
    """

    config: ResNetConfig
    frozen_bn: FrozenBN = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """``(last_hidden_state, pooled)``: the last stage's NHWC feature map and its global average.

        Args:
          pixel_values: ``(batch, height, width, num_channels)`` NHWC float images, normalised
            (:func:`jaxtune.normalize_images`).
          train: True in training: batch norm uses batch statistics and updates ``batch_stats``
            (``apply(..., mutable=["batch_stats"])``), except in the ``frozen_bn`` layers.
        """
        cfg = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[-1] != cfg.num_channels:
            raise ValueError(f"ResNet expects NHWC images with {cfg.num_channels} channels, got shape "
                             f"{pixel_values.shape}; transpose NCHW input with x.transpose(0, 2, 3, 1)")
        common = {"config": cfg, "frozen_bn": self.frozen_bn, "dtype": self.dtype}
        x = pixel_values.astype(self.dtype)
        x = _Embedder(name="embedder", **common)(x, train)
        x = _Encoder(name="encoder", **common)(x, train)
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
        return x, pooled

    def layer_ids(self, path: str) -> int:
        """Layer id of a parameter path (see :func:`layer_ids`)."""
        return layer_ids(path, self.config.num_stages)

    def default_rules(self) -> list:
        """The family's default rule table (the module's :func:`default_rules`), e.g.
        ``jt.make_optimizer(params, model.default_rules(), layer_ids=model.layer_ids, layer_decay=0.8)``."""
        return default_rules()


class _Embedder(nn.Module):
    """HF ``ResNetEmbeddings``: 7x7 stride-2 conv layer ``embedder``, then 3x3 stride-2 max-pool."""

    config: ResNetConfig
    frozen_bn: FrozenBN = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = ResNetConvLayer(self.config, self.config.embedding_size, kernel=7, stride=2,
                            activation=self.config.hidden_act, frozen_bn=self.frozen_bn, dtype=self.dtype,
                            name="embedder")(x, train)
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class _Encoder(nn.Module):
    """HF ``ResNetEncoder``: stages ``stages_{s}`` of blocks ``layers_{l}``."""

    config: ResNetConfig
    frozen_bn: FrozenBN = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.config
        for s, (features, depth) in enumerate(zip(cfg.hidden_sizes, cfg.depths)):
            stride = 2 if s > 0 or cfg.downsample_in_first_stage else 1
            x = _Stage(cfg, features, depth, stride, frozen_bn=self.frozen_bn, dtype=self.dtype,
                       name=f"stages_{s}")(x, train)
        return x


class _Stage(nn.Module):
    """HF ``ResNetStage``: ``depth`` blocks ``layers_{l}``; the first one has ``stride``."""

    config: ResNetConfig
    features: int
    depth: int
    stride: int
    frozen_bn: FrozenBN = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(self.depth):
            x = ResNetBlock(self.config, self.features, self.stride if i == 0 else 1, frozen_bn=self.frozen_bn,
                            dtype=self.dtype, name=f"layers_{i}")(x, train)
        return x


class ResNetForImageClassification(nn.Module):
    """ResNet with a linear classifier on the pooled features (HF ``ResNetForImageClassification``).

    ``__call__(pixel_values, train=False)`` takes NHWC images and returns logits
    ``(batch, config.num_labels)``.

    Example::

        model = ResNetForImageClassification(resnet_config(50, num_labels=10))
        variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
        logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    """

    config: ResNetConfig
    frozen_bn: FrozenBN = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array, train: bool = False) -> jax.Array:
        """Logits ``(batch, config.num_labels)``.

        Args:
          pixel_values: ``(batch, height, width, num_channels)`` NHWC float images, normalised
            (:func:`jaxtune.normalize_images`).
          train: True in training: batch norm uses batch statistics and updates ``batch_stats``
            (``apply(..., mutable=["batch_stats"])``), except in the ``frozen_bn`` layers.
        """
        labels = self.config.num_labels
        if not labels:
            raise ValueError(f"ResNetForImageClassification needs config.num_labels > 0 (got {labels!r}); "
                             "use resnet_config(depth, num_labels=...) or ResNetModel for features")
        _, pooled = ResNetModel(self.config, self.frozen_bn, self.dtype, name="resnet")(pixel_values, train)
        return nn.Dense(labels, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
                        name="classifier")(pooled)

    def layer_ids(self, path: str) -> int:
        """Layer id of a parameter path (see :func:`layer_ids`)."""
        return layer_ids(path, self.config.num_stages)

    def default_rules(self) -> list:
        """The family's default rule table (the module's :func:`default_rules`), e.g.
        ``jt.make_optimizer(params, model.default_rules(), layer_ids=model.layer_ids, layer_decay=0.8)``."""
        return default_rules()


def build(config: ResNetConfig, task: str | None = None, num_labels: int | None = None,
          dtype: Any = jnp.float32, frozen_bn: FrozenBN = False) -> nn.Module:
    """The Flax module for ``task`` (None: :class:`ResNetModel`, "image_classification":
    :class:`ResNetForImageClassification`). A ``num_labels`` other than ``config.num_labels`` gives
    the module a config with that many labels (generic label names), so ``model.config`` describes
    the new head when saving.

    Example::

        model = build(resnet_config(18), "image_classification", num_labels=5, frozen_bn=True)
        assert model.config.num_labels == 5
    """
    _check_task(task)
    if task is None:
        return ResNetModel(config, frozen_bn=frozen_bn, dtype=dtype)
    if num_labels is not None and num_labels != config.num_labels:
        config = dataclasses.replace(config, num_labels=num_labels, id2label=None)
    return ResNetForImageClassification(config, frozen_bn=frozen_bn, dtype=dtype)


def example_inputs(config: ResNetConfig, task: str | None = None) -> tuple[jax.Array]:
    """A small NHWC batch ``(1, 32, 32, num_channels)`` of zeros for ``model.init``.

    Example::

        variables = model.init(jax.random.key(0), *example_inputs(config, "image_classification"))
    """
    _check_task(task)
    return (jnp.zeros((1, 32, 32, config.num_channels), jnp.float32),)


# --------------------------------------------------------------------------------------------- layer ids
def layer_ids(path: str, num_layers: int) -> int:
    """Layer id of a parameter path: stem 0, stage ``s`` -> ``s + 1``, classifier ``num_layers + 1``.

    ``num_layers`` is the number of stages (``len(config.depths)``). Paths are those of
    ``variables["params"]`` (or ``batch_stats``) joined by "/", with or without the ``resnet/`` prefix.

    Example::

        layer_ids("resnet/encoder/stages_2/layers_0/layer_1/convolution/kernel", 4)   # -> 3
        layer_ids("classifier/kernel", 4)                                              # -> 5
    """
    parts = path.split("/")
    if parts and parts[0] in ("params", "batch_stats"):
        parts = parts[1:]
    if parts and parts[0] == "resnet":
        parts = parts[1:]
    if len(parts) >= 2 and parts[0] == "embedder":
        return 0
    if len(parts) >= 2 and parts[0] == "classifier":
        return num_layers + 1
    if len(parts) >= 3 and parts[0] == "encoder" and parts[1].startswith("stages_"):
        stage = parts[1][len("stages_"):]
        if stage.isdigit() and int(stage) < num_layers:
            return int(stage) + 1
        raise KeyError(f"ResNet layer_ids: stage {stage!r} in {path!r} is outside 0..{num_layers - 1} "
                       f"(num_layers={num_layers} stages); pass num_layers=len(config.depths)")
    raise KeyError(f"ResNet layer_ids: unknown parameter path {path!r}; expected "
                   "'[resnet/]embedder/...', '[resnet/]encoder/stages_<s>/...' or 'classifier/...'")


def default_rules() -> list[tuple[str, Settings]]:
    """Default rule table: no weight decay on BatchNorm scales/biases and on biases, defaults elsewhere.

    Example::

        tx = jt.make_optimizer(params, resnet.default_rules(), optax.adamw, learning_rate=1e-3)
    """
    return [
        (r".*(normalization/scale|bias)", settings(weight_decay=0.0, name="no_decay")),
        (r".*", settings()),
    ]


# --------------------------------------------------------------------------------------------- name map
def _conv_layer_rules(hf: str, flax: str) -> list[NameRule]:
    """Rules of one HF ``ResNetConvLayer`` / ``ResNetShortCut`` (conv + BatchNorm)."""
    return [
        NameRule(f"{hf}.convolution.weight", f"params/{flax}/convolution/kernel", "conv"),
        NameRule(f"{hf}.normalization.weight", f"params/{flax}/normalization/scale"),
        NameRule(f"{hf}.normalization.bias", f"params/{flax}/normalization/bias"),
        NameRule(f"{hf}.normalization.running_mean", f"batch_stats/{flax}/normalization/mean"),
        NameRule(f"{hf}.normalization.running_var", f"batch_stats/{flax}/normalization/var"),
    ]


def _name_map(task: str | None) -> NameMap:
    hf, flax = ("", "") if task is None else ("resnet.", "resnet/")
    block_hf, block_flax = f"{hf}encoder.stages.{{s}}.layers.{{l}}", f"{flax}encoder/stages_{{s}}/layers_{{l}}"
    rules = (_conv_layer_rules(f"{hf}embedder.embedder", f"{flax}embedder/embedder")
             + _conv_layer_rules(f"{block_hf}.shortcut", f"{block_flax}/shortcut")
             + _conv_layer_rules(f"{block_hf}.layer.{{k}}", f"{block_flax}/layer_{{k}}"))
    if task is not None:
        rules += [NameRule("classifier.1.weight", "params/classifier/kernel", "linear"),
                  NameRule("classifier.1.bias", "params/classifier/bias")]
    return NameMap(rules)


_NAME_MAPS = {task: _name_map(task) for task in TASKS}
_BATCHES_TRACKED = ".num_batches_tracked"


def _task_name(name: str, task: str | None) -> str:
    """HF names of either checkpoint kind (``ResNetModel``: no prefix; ``ResNetForImageClassification``:
    ``resnet.`` prefix) -> the naming of ``task``."""
    bare = name.removeprefix("resnet.")
    if task is None or bare.startswith("classifier."):
        return bare
    return "resnet." + bare


def to_flax(config: ResNetConfig, tensors: Mapping[str, np.ndarray],
            task: str | None = None) -> tuple[dict, set[str]]:
    """HF tensors -> ``({"params": ..., "batch_stats": ...}, used HF names)``.

    Reads both ``ResNetModel`` and ``ResNetForImageClassification`` checkpoints for either task.
    ``num_batches_tracked`` counters are consumed (reported as used) but not kept: Flax BatchNorm
    uses a fixed momentum.

    Example::

        variables, used = to_flax(config, safetensors.numpy.load_file("model.safetensors"),
                                  "image_classification")
    """
    _check_task(task)
    renamed = {_task_name(name, task): name for name in tensors}
    variables, used = _NAME_MAPS[task].to_flax({new: tensors[old] for new, old in renamed.items()})
    used_hf = {renamed[name] for name in used}
    used_hf |= {name for name in tensors if name.endswith(_BATCHES_TRACKED)}
    return variables, used_hf


def to_hf(config: ResNetConfig, variables: Mapping[str, Any], task: str | None = None) -> dict[str, np.ndarray]:
    """Flax variables (``params`` and ``batch_stats``) -> HF tensors of the ``task`` model, with a
    zero ``num_batches_tracked`` per BatchNorm as PyTorch checkpoints have.

    Example::

        safetensors.numpy.save_file(to_hf(config, variables, "image_classification"), "model.safetensors")
    """
    _check_task(task)
    if "params" not in variables or "batch_stats" not in variables:
        raise ValueError(f"ResNet to_hf needs the variables dict with 'params' and 'batch_stats' (got "
                         f"collections {sorted(variables)}); pass the whole dict from model.init/loading, "
                         "not only variables['params'], so the BatchNorm running statistics are saved")
    tensors = _NAME_MAPS[task].to_hf({"params": variables["params"], "batch_stats": variables["batch_stats"]})
    for name in [n for n in tensors if n.endswith(".running_mean")]:
        tensors[name[:-len(".running_mean")] + _BATCHES_TRACKED] = np.zeros((), np.int64)
    return tensors


FAMILY = ModelFamily(
    name="resnet",
    model_types=("resnet",),
    tasks=TASKS,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    build=build,
    to_flax=to_flax,
    to_hf=to_hf,
    head_paths=(r"params/classifier/.*",),
    example_inputs=example_inputs,
)
