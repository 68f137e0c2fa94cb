"""Host-side image preprocessing: decode, resize, crop, flip, normalise -> NHWC float32.

Pure NumPy functions on ``(H, W, C)`` arrays (uint8 0-255 before :func:`normalize`, float32
after), usable as :class:`jaxtune.data.loader.Loader` transforms. Only :func:`decode_image` (PNG/JPEG
bytes) and :func:`resize_shorter_side`/:func:`resize` need Pillow; they resize exactly as the
Hugging Face image processors do (Pillow, the checkpoint's resampling filter, output size
truncated with ``int``), so a checkpoint sees the same pixels it was trained and evaluated with.

:class:`ImagePreprocessing` bundles the steps: build it by hand or from a checkpoint's
``preprocessor_config.json`` (:meth:`ImagePreprocessing.from_pretrained`), then use
:meth:`~ImagePreprocessing.eval_transform` / :meth:`~ImagePreprocessing.train_transform` in a
loader.

Example:
    >>> import numpy as np
    >>> prep = ImagePreprocessing(crop_size=(4, 4), resize=6)
    >>> prep(np.zeros((12, 8), np.uint8)).shape   # grey 12x8 -> resize 9x6 -> crop 4x4 RGB
    (4, 4, 3)
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImagePreprocessing",
    "center_crop",
    "decode_image",
    "horizontal_flip",
    "normalize",
    "random_crop",
    "random_horizontal_flip",
    "resize",
    "resize_shorter_side",
    "shorter_side_size",
    "to_rgb",
]

#: Per-channel RGB mean and standard deviation of ImageNet, on the 0-1 scale.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Pillow resampling filter codes, as stored in Hugging Face preprocessor configs ("resample").
_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def _pil():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is installed with transformers' vision extra
        raise ImportError(
            "decoding and resizing images need Pillow: pip install pillow"
        ) from None
    return Image


def _size2(size: int | Sequence[int], what: str) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {size!r}.")
    return int(h), int(w)


def _check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{what} must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {image.shape}."
        )
    return image


def decode_image(data: bytes | np.ndarray) -> np.ndarray:
    """PNG/JPEG/... bytes (via Pillow) or an array -> ``(H, W, C)`` uint8 with C 1, 3 or 4.

    Arrays pass through after a shape/dtype check (``(H, W)`` gains a channel axis).

    Example:
        >>> decode_image(np.zeros((2, 3), np.uint8)).shape
        (2, 3, 1)
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        with _pil().open(io.BytesIO(bytes(data))) as img:
            if img.mode not in ("L", "RGB", "RGBA"):
                img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
            image = np.asarray(img)
    else:
        image = np.asarray(data)
        if image.dtype != np.uint8:
            raise TypeError(
                f"image arrays must be uint8 (0-255) before normalisation, got {image.dtype}; "
                f"convert with np.clip(x, 0, 255).astype(np.uint8) or pass encoded bytes."
            )
    return _check_image(image)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Grey ``(H, W)``/``(H, W, 1)`` -> 3 equal channels; RGBA -> RGB (alpha dropped).

    Example:
        >>> to_rgb(np.array([[7]], np.uint8)).tolist()
        [[[7, 7, 7]]]
    """
    image = _check_image(image)
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[:, :, :3]


def shorter_side_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """Output ``(h, w)`` when the shorter side becomes ``shorter`` (longer side truncated, as HF).

    Example:
        >>> shorter_side_size(480, 640, 256)
        (256, 341)
    """
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


def resize(image: np.ndarray, size: int | Sequence[int], method: str = "bilinear") -> np.ndarray:
    """Resizes a uint8 ``(H, W, C)`` image to ``size`` (``(h, w)`` or an int for a square).

    ``method``: nearest, bilinear, bicubic, lanczos, box or hamming (Pillow filters).
    """
    image = _check_image(image)
    if image.dtype != np.uint8:
        raise TypeError(f"resize works on uint8 images (before normalize), got {image.dtype}.")
    if method not in _RESAMPLE:
        raise ValueError(f"unknown resize method {method!r}; choose one of {sorted(_RESAMPLE)}.")
    h, w = _size2(size, "resize size")
    if (h, w) == image.shape[:2]:
        return image
    Image = _pil()
    channels = image.shape[-1]
    pil = Image.fromarray(image[:, :, 0] if channels == 1 else image)
    out = np.asarray(pil.resize((w, h), resample=_RESAMPLE[method]))
    return out[:, :, None] if channels == 1 else out


def resize_shorter_side(image: np.ndarray, shorter: int, method: str = "bilinear") -> np.ndarray:
    """Resizes so the shorter side is ``shorter`` pixels, keeping the aspect ratio.

    Example:
        >>> resize_shorter_side(np.zeros((20, 40, 3), np.uint8), 10).shape
        (10, 20, 3)
    """
    image = _check_image(image)
    return resize(image, shorter_side_size(*image.shape[:2], int(shorter)), method)


def _crop(image: np.ndarray, top: int, left: int, h: int, w: int) -> np.ndarray:
    return image[top:top + h, left:left + w]


def _crop_room(image: np.ndarray, size: int | Sequence[int]) -> tuple[int, int, int, int]:
    image = _check_image(image)
    h, w = _size2(size, "crop size")
    H, W = image.shape[:2]
    if h > H or w > W:
        raise ValueError(
            f"crop size {(h, w)} is larger than the image {(H, W)}; resize the image first "
            f"(e.g. resize_shorter_side)."
        )
    return H - h, W - w, h, w


def center_crop(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """The central ``size`` window; an odd margin puts the extra pixel at the bottom/right (HF).

    Example:
        >>> center_crop(np.arange(16, dtype=np.uint8).reshape(4, 4), 2)[:, :, 0].tolist()
        [[5, 6], [9, 10]]
    """
    room_h, room_w, h, w = _crop_room(image, size)
    return _crop(_check_image(image), room_h // 2, room_w // 2, h, w)


def random_crop(image: np.ndarray, size: int | Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A ``size`` window at a uniformly random position drawn from ``rng``.

    Example:
        >>> img = np.arange(16, dtype=np.uint8).reshape(4, 4)
        >>> random_crop(img, (4, 2), np.random.default_rng(0)).shape
        (4, 2, 1)
    """
    room_h, room_w, h, w = _crop_room(image, size)
    top = int(rng.integers(room_h + 1))
    left = int(rng.integers(room_w + 1))
    return _crop(_check_image(image), top, left, h, w)


def horizontal_flip(image: np.ndarray) -> np.ndarray:
    """Mirror left-right (``(H, W, C)``, any dtype)."""
    return _check_image(image)[:, ::-1]


def random_horizontal_flip(image: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mirror with probability ``p`` (one draw from ``rng``)."""
    return horizontal_flip(image) if rng.random() < p else _check_image(image)


def normalize(
    image: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    rescale: float = 1.0 / 255.0,
) -> np.ndarray:
    """``(image * rescale - mean) / std`` per channel, as float32.

    Example:
        >>> normalize(np.array([[[255, 0, 51]]], np.uint8), mean=(0.5,) * 3, std=(0.5,) * 3).round(4)
        array([[[ 1. , -1. , -0.6]]], dtype=float32)
    """
    image = _check_image(image)
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    channels = image.shape[-1]
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(
            f"mean {tuple(mean.tolist())} and std {tuple(std.tolist())} need one value per "
            f"channel; the image has {channels} channel(s) (use to_rgb for grey images)."
        )
    if np.any(std <= 0):
        raise ValueError(f"std must be positive, got {tuple(std.tolist())}.")
    return (image.astype(np.float32) * np.float32(rescale) - mean) / std


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
    """Decode -> RGB -> resize -> crop (-> flip) -> normalise, for one checkpoint.

    Args:
      crop_size: output ``(height, width)`` (an int for a square).
      resize: an int resizes the shorter side to it; a ``(h, w)`` pair resizes to exactly that;
        None skips resizing.
      mean, std: per-channel statistics on the rescaled (0-1) scale; ImageNet by default.
      rescale: factor applied to uint8 pixels before normalising.
      method: Pillow resampling filter for resizing.
      flip: random horizontal flips in :meth:`train`.

    Example:
        >>> prep = ImagePreprocessing(crop_size=2, resize=None, mean=(0.,) * 3, std=(1.,) * 3)
        >>> prep(np.full((3, 3), 255, np.uint8))[..., 0].tolist()
        [[1.0, 1.0], [1.0, 1.0]]
    """

    crop_size: int | tuple[int, int] = 224
    resize: int | tuple[int, int] | None = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    rescale: float = 1.0 / 255.0
    method: str = "bilinear"
    flip: bool = True

    def __post_init__(self):
        _size2(self.crop_size, "crop_size")
        if self.method not in _RESAMPLE:
            raise ValueError(f"unknown method {self.method!r}; choose one of {sorted(_RESAMPLE)}.")

    def _resized(self, image: Any) -> np.ndarray:
        image = to_rgb(decode_image(image))
        if self.resize is None:
            return image
        if isinstance(self.resize, (int, np.integer)):
            return resize_shorter_side(image, int(self.resize), self.method)
        return resize(image, self.resize, self.method)

    def __call__(self, image: Any) -> np.ndarray:
        """Evaluation preprocessing: centre crop, no randomness. Returns float32 ``(h, w, 3)``."""
        return normalize(center_crop(self._resized(image), self.crop_size),
                         self.mean, self.std, self.rescale)

    def train(self, image: Any, rng: np.random.Generator) -> np.ndarray:
        """Training preprocessing: random crop and (if ``flip``) random horizontal flip."""
        image = random_crop(self._resized(image), self.crop_size, rng)
        if self.flip:
            image = random_horizontal_flip(image, rng)
        return normalize(image, self.mean, self.std, self.rescale)

    def eval_transform(self, key: str = "image") -> _ExampleTransform:
        """``example -> example`` applying :meth:`__call__` to ``example[key]`` (for ``Loader``)."""
        return _ExampleTransform(self, key, train=False)

    def train_transform(self, key: str = "image") -> _ExampleTransform:
        """``(example, rng) -> example`` applying :meth:`train` (a ``Loader`` random_transform)."""
        return _ExampleTransform(self, key, train=True)

    @classmethod
    def from_pretrained(cls, path_or_config: str | os.PathLike | dict, **overrides) -> ImagePreprocessing:
        """Reads a Hugging Face ``preprocessor_config.json`` (a checkpoint directory, the file, or
        its parsed dict): mean/std, rescale factor, resampling filter, and the resize/crop sizes
        of the ``shortest_edge`` + ``crop_size``, ``shortest_edge`` + ``crop_pct`` (ConvNeXt/ResNet)
        and ``height``/``width`` layouts. ``overrides`` replace fields afterwards.

        Example:
            >>> ImagePreprocessing.from_pretrained(
            ...     {"size": {"shortest_edge": 224}, "crop_pct": 0.875}).resize
            256
        """
        config = _read_preprocessor_config(path_or_config)
        fields: dict[str, Any] = {}
        if config.get("do_normalize", True):
            fields["mean"] = tuple(float(v) for v in config.get("image_mean", IMAGENET_MEAN))
            fields["std"] = tuple(float(v) for v in config.get("image_std", IMAGENET_STD))
        else:
            fields["mean"], fields["std"] = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        fields["rescale"] = float(config.get("rescale_factor", 1 / 255)) if config.get(
            "do_rescale", True) else 1.0
        resample = config.get("resample", _RESAMPLE["bilinear"])
        names = {code: name for name, code in _RESAMPLE.items()}
        if resample not in names:
            raise ValueError(f"preprocessor config: unknown resample code {resample!r}.")
        fields["method"] = names[resample]
        fields.update(_sizes_from_config(config))
        fields.update(overrides)
        if fields["crop_size"] is None:
            raise ValueError(
                "the preprocessor config resizes the shortest edge without cropping, so images "
                "keep their aspect ratio and cannot be batched; pass crop_size=(h, w)."
            )
        return cls(**fields)


@dataclasses.dataclass(frozen=True)
class _ExampleTransform:
    prep: ImagePreprocessing
    key: str
    train: bool

    def __call__(self, example: dict, rng: np.random.Generator | None = None) -> dict:
        if not isinstance(example, dict) or self.key not in example:
            fields = sorted(example) if isinstance(example, dict) else type(example).__name__
            raise KeyError(f"image transform: no field {self.key!r} in the example (has {fields}).")
        if self.train and rng is None:
            raise ValueError("the training transform needs an rng: pass it as random_transform.")
        image = self.prep.train(example[self.key], rng) if self.train else self.prep(example[self.key])
        return {**example, self.key: image}


def _read_preprocessor_config(path_or_config: str | os.PathLike | dict) -> dict:
    if isinstance(path_or_config, dict):
        return path_or_config
    path = os.fspath(path_or_config)
    if os.path.isdir(path):
        path = os.path.join(path, "preprocessor_config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no preprocessor_config.json; pass ImagePreprocessing(...) fields by hand."
        )
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _sizes_from_config(config: dict) -> dict[str, Any]:
    size = config.get("size", {"shortest_edge": 224})
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop = config.get("crop_size")
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    do_resize = config.get("do_resize", True)
    do_crop = config.get("do_center_crop", crop is not None)
    if "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        if "crop_pct" in config and crop is None:
            # ConvNeXt / ResNet processors: below 384 px resize to edge / crop_pct, crop edge.
            if edge < 384:
                return {"resize": int(edge / float(config["crop_pct"])) if do_resize else None,
                        "crop_size": (edge, edge)}
            return {"resize": (edge, edge) if do_resize else None, "crop_size": (edge, edge)}
        out = (int(crop["height"]), int(crop["width"])) if (crop and do_crop) else None
        return {"resize": edge if do_resize else None, "crop_size": out}
    if "height" in size and "width" in size:
        hw = (int(size["height"]), int(size["width"]))
        out = (int(crop["height"]), int(crop["width"])) if (crop and do_crop) else hw
        return {"resize": hw if do_resize else None, "crop_size": out}
    raise ValueError(f"preprocessor config: unsupported 'size' {size!r}.")
