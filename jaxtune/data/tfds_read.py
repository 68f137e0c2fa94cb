"""Reading TFDS data sets back by index: a local data set written by
:func:`jaxtune.data.tfds_write.build_dataset` (:func:`load_dataset`) or a TFDS catalogue data set by
name (:func:`tfds_source`), both as random-access sources whose text comes back as ``str``.

Example::

    ds = load_dataset("reviews", "/data/tfds")
    ds.source("train")[0]        # {'label': 1, 'text': 'good'}
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxtune.data.tfds_offline import check_obtainable, not_prepared_message

VERSION_PATTERN = re.compile(r"\d+\.\d+\.\d+")     # "major.minor.patch", the version directory's name


def _decode_plan(feature: Any) -> Any:
    """Plain-data recipe (picklable) for turning a raw TFDS record into str/arrays."""
    if isinstance(feature, tfds.features.FeaturesDict):
        return {key: _decode_plan(feature[key]) for key in feature}
    if isinstance(feature, tfds.features.Text):
        return "text"
    if isinstance(feature, tfds.features.Sequence):
        inner = feature.feature
        if isinstance(inner, tfds.features.Text):
            return "texts"
        if isinstance(inner, (tfds.features.ClassLabel, tfds.features.Tensor)):
            return np.dtype(inner.np_dtype).str
    return None


def _decode(plan: Any, value: Any) -> Any:
    if plan is None:
        return value
    if isinstance(plan, dict):
        return {key: _decode(plan.get(key), v) for key, v in value.items()}
    if plan == "text":
        return value.decode("utf-8") if isinstance(value, bytes) else value
    if plan == "texts":
        return tuple(v.decode("utf-8") if isinstance(v, bytes) else v for v in value)
    return np.asarray(value, dtype=plan)


class DecodedSource:
    """A TFDS data source whose ``Text`` fields come back as ``str`` (not ``bytes``), sequences
    of text as tuples of ``str`` and sequences of ids/numbers as arrays of the declared dtype
    (also when empty). Random access, picklable.

    Args:
      source: a TFDS data source (``builder.as_data_source(split)`` / ``tfds.data_source``).
      features: its ``FeaturesDict``; defaults to ``source.dataset_info.features``.
    """

    def __init__(self, source: Any, features: Any = None):
        self._source = source
        self._plan = _decode_plan(features if features is not None else source.dataset_info.features)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Any:
        return _decode(self._plan, self._source[index])

    def __repr__(self) -> str:
        return f"DecodedSource({self._source!r})"


@dataclasses.dataclass(frozen=True)
class LocalDataset:
    """A TFDS data set on disk, opened without its builder class (``tfds.builder_from_directory``).

    Attributes:
      builder: the read-only TFDS builder.
    """

    builder: Any

    @property
    def name(self) -> str:
        return self.builder.name

    @property
    def version(self) -> str:
        return str(self.builder.version)

    @property
    def path(self) -> str:
        """The version directory holding the files."""
        return os.fspath(self.builder.data_dir)

    @property
    def features(self) -> Any:
        return self.builder.info.features

    @property
    def fingerprint(self) -> str | None:
        """Input fingerprint stored when the data set was built."""
        return self.builder.info.metadata.get("fingerprint") if self.builder.info.metadata else None

    @property
    def split_sizes(self) -> dict[str, int]:
        """``{split: number of examples}``."""
        return {name: info.num_examples for name, info in self.builder.info.splits.items()}

    def label_names(self, feature: str = "label") -> tuple[str, ...]:
        """Class names of a ``ClassLabel`` feature (or of the ``ClassLabel`` inside a Sequence)."""
        if feature not in self.features:
            raise KeyError(f"{self.name}: no feature {feature!r}; it has {sorted(self.features)}.")
        feat = self.features[feature]
        feat = getattr(feat, "feature", feat)
        if not isinstance(feat, tfds.features.ClassLabel):
            raise TypeError(f"{self.name}: feature {feature!r} is {type(feat).__name__}, not ClassLabel.")
        return tuple(feat.names)

    def source(self, split: str, *, decode: bool = True) -> Any:
        """Random-access source of ``split`` (``len`` + indexing), for :class:`Loader`.

        With ``decode`` (default) text is ``str`` and sequences are arrays; otherwise TFDS's raw
        records (text as ``bytes``).
        """
        if split not in self.split_sizes:
            raise KeyError(f"{self.name}: no split {split!r}; it has {sorted(self.split_sizes)}.")
        raw = self.builder.as_data_source(split)
        return DecodedSource(raw, self.features) if decode else raw


def load_dataset(name: str, data_dir: str | os.PathLike, version: str | None = None) -> LocalDataset:
    """Opens a data set written by :func:`build_dataset` (newest version unless ``version``).

    Example:
        >>> ds = load_dataset("reviews", "/data/tfds")  # doctest: +SKIP
        >>> ds.source("train")[0]  # doctest: +SKIP
    """
    root = os.path.join(os.fspath(data_dir), name)
    versions = _versions(root)
    if not versions:
        raise FileNotFoundError(
            f"no TFDS data set {name!r} under {data_dir} (looked for {root}/<version>/"
            f"dataset_info.json); build it first with build_dataset/build_*."
        )
    if version is None:
        version = max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))
    elif version not in versions:
        raise FileNotFoundError(f"{root}: no version {version!r}; found {sorted(versions)}.")
    return LocalDataset(tfds.builder_from_directory(os.path.join(root, version)))


def _versions(root: str) -> list[str]:
    if not os.path.isdir(root):
        return []
    return [
        v for v in os.listdir(root)
        if VERSION_PATTERN.fullmatch(v) and os.path.isfile(os.path.join(root, v, "dataset_info.json"))
    ]


def tfds_source(
    name: str, split: str, data_dir: str | os.PathLike | None = None, *,
    download: bool = True, decode: bool = True,
) -> Any:
    """A TFDS catalogue data set by name (``"glue/sst2"``, ``"cifar10"``, ...) as a random-access
    source, via ``tfds.data_source``.

    The data must be (or, with ``download``, becomes) prepared in ``array_record`` format;
    preparing most catalogue data sets needs internet and, for many, TensorFlow -- reading them
    back does not. Prepare once on a machine that has both (``tfds build glue/sst2
    --file_format=array_record``) and copy ``data_dir`` over if needed.

    A data set not prepared in a local ``data_dir`` fails at once -- instead of after minutes of
    download retries -- when ``download`` is off, when the name is not in the TFDS catalogue, or
    when none of the hosts of its recorded download URLs can be reached within a few seconds.

    Raises:
      FileNotFoundError: the data set is not in ``data_dir`` and could not be prepared.

    Example:
        >>> train = tfds_source("glue/sst2", "train")  # doctest: +SKIP
        >>> train[0]["sentence"]  # doctest: +SKIP
    """
    check_obtainable(name, split, data_dir, download)
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise FileNotFoundError(not_prepared_message(
            name, split, data_dir, f"; TFDS said: {str(error).splitlines()[0]}")) from None
    return DecodedSource(source) if decode else source
