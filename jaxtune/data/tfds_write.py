"""Writing examples once into TFDS's own format: a ``tfds.core.GeneratorBasedBuilder`` writes
``data_dir/<name>/<version>/`` as ``array_record`` files, skipped when a data set with the same
input fingerprint (SHA-256 over name, version, feature spec and every example) is already there.
Every example is checked on the way in (empty split, missing or undeclared field, label outside
its label set), naming the split and the example.

Example::

    >>> import tempfile
    >>> import tensorflow_datasets as tfds
    >>> features = {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=["neg", "pos"])}
    >>> ds = build_dataset("reviews", {"train": [{"text": "good", "label": "pos"}]}, features, tempfile.mkdtemp())
    >>> ds.split_sizes
    {'train': 1}
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxtune.data.tfds_read import VERSION_PATTERN, LocalDataset

log = logging.getLogger(__name__)

_NAME = re.compile(r"[a-z][a-z0-9_]*")

Examples = Iterable[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]]


def _hash_value(h: hashlib._Hash, value: Any) -> None:
    if isinstance(value, Mapping):
        h.update(b"{%d" % len(value))
        for key in sorted(value):
            _hash_value(h, str(key))
            _hash_value(h, value[key])
    elif isinstance(value, str):
        data = value.encode("utf-8")
        h.update(b"s%d:" % len(data) + data)
    elif isinstance(value, bytes):
        h.update(b"b%d:" % len(value) + value)
    elif isinstance(value, (list, tuple)) and any(isinstance(v, (str, bytes, Mapping)) for v in value):
        h.update(b"[%d" % len(value))
        for v in value:
            _hash_value(h, v)
    else:
        array = np.ascontiguousarray(np.asarray(value))
        h.update(f"a{array.dtype.str}{array.shape}".encode() + array.tobytes())


def _class_labels(feature: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(field path, ClassLabel)`` for every ClassLabel, also inside Sequence/FeaturesDict."""
    if isinstance(feature, tfds.features.ClassLabel):
        yield path, feature
    elif isinstance(feature, tfds.features.FeaturesDict):
        for key in feature:
            yield from _class_labels(feature[key], f"{path}/{key}" if path else key)
    elif isinstance(feature, tfds.features.Sequence):
        yield from _class_labels(feature.feature, path)


def _feature_signature(features: Any) -> dict:
    return {
        "spec": features.to_json(),
        "labels": {path: list(f.names) for path, f in _class_labels(features)},
    }


def check_label(value: Any, feature: Any, where: str) -> None:
    names = list(feature.names)
    if isinstance(value, (str, bytes)):
        text = value.decode("utf-8") if isinstance(value, bytes) else value
        if text not in names:
            raise ValueError(f"{where}: label {text!r} is not in the label set {names}.")
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if not 0 <= int(value) < len(names):
            raise ValueError(
                f"{where}: label id {int(value)} is outside the label set of {len(names)} "
                f"classes {names}."
            )
    else:
        raise TypeError(f"{where}: label {value!r} must be a class name (str) or an id (int).")


def _check_example(example: Any, features: Any, where: str) -> None:
    if not isinstance(example, Mapping):
        raise TypeError(f"{where}: an example must be a dict of fields, got {type(example).__name__}.")
    declared = set(features)
    missing = sorted(declared - set(example))
    extra = sorted(set(example) - declared)
    if missing or extra:
        raise KeyError(
            f"{where}: "
            + (f"missing field(s) {missing}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"undeclared field(s) {extra}" if extra else "")
            + f"; the feature spec declares {sorted(declared)}."
        )
    for key in declared:
        feature = features[key]
        if isinstance(feature, tfds.features.ClassLabel):
            check_label(example[key], feature, f"{where}, field {key!r}")
        elif isinstance(feature, tfds.features.Sequence) and isinstance(
                feature.feature, tfds.features.ClassLabel):
            for j, value in enumerate(example[key]):
                check_label(value, feature.feature, f"{where}, field {key!r}[{j}]")


def _checked(split: str, examples: Examples, features: Any, where: Callable[[int], str] | None) -> Iterator[Mapping[str, Any]]:
    items = examples() if callable(examples) else examples
    count = 0
    for i, example in enumerate(items):
        _check_example(example, features, where(i) if where else f"split {split!r}, example {i}")
        count += 1
        yield example
    if count == 0:
        raise ValueError(f"split {split!r} is empty: a data set split needs at least one example.")


def _as_features(features: Any) -> Any:
    if isinstance(features, tfds.features.FeaturesDict):
        return features
    if isinstance(features, Mapping) and features:
        return tfds.features.FeaturesDict(dict(features))
    raise TypeError(
        "features must be a non-empty dict of tfds.features (Text, ClassLabel, Tensor, Sequence) "
        f"or a FeaturesDict, got {features!r}."
    )


def _make_builder_class(name: str, version: str, features: Any, splits: Mapping[str, Examples],
                        where: Mapping[str, Callable[[int], str]], metadata: dict,
                        description: str) -> type:
    class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(version)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, description=description, features=features,
                metadata=tfds.core.MetadataDict(metadata), disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in splits}

        def _generate_examples(self, split):
            yield from enumerate(_checked(split, splits[split], features, where.get(split)))

        # TFDS prints these two lines to stdout; a library should log them instead.
        def _log_download_bytes(self):
            log.info("%s: writing TFDS array_record files to %s", self.name, self.data_dir)

        def _log_download_done(self):
            log.info("%s: prepared in %s", self.name, self.data_dir)

    LocalBuilder.name = name
    return LocalBuilder


def build_dataset(
    name: str,
    splits: Mapping[str, Examples],
    features: Mapping[str, Any] | Any,
    data_dir: str | os.PathLike,
    *,
    version: str = "1.0.0",
    description: str = "",
    metadata: Mapping[str, Any] | None = None,
    fingerprint: str | None = None,
    example_locations: Mapping[str, Callable[[int], str]] | None = None,
) -> LocalDataset:
    """Writes examples once into ``data_dir/name/version`` as a TFDS ``array_record`` data set.

    Args:
      name: snake_case data set name (the directory name).
      splits: ``{split: examples}``; examples are a sequence of dicts or a zero-argument
        callable returning an iterable of dicts (read twice: once to fingerprint, once to
        write); with ``fingerprint`` given, any iterable (read once, and not at all when the
        data set is up to date).
      features: ``{field: tfds feature}`` -- ``tfds.features.Text()``,
        ``ClassLabel(names=...)``, ``Tensor(shape=..., dtype=...)``, ``Sequence(...)``.
      data_dir: root directory of the user's TFDS data sets.
      version: ``"major.minor.patch"``.
      description, metadata: stored with the data set (``metadata`` must be JSON-serialisable).
      fingerprint: identifies the inputs; computed from every example when None.
      example_locations: per split, ``index -> "file, line n"`` used in error messages.

    Returns:
      The data set, reopened from disk. Nothing is written when the same name, version and
      fingerprint already exist.

    Raises:
      ValueError / KeyError / TypeError: empty split, missing or undeclared field, label outside
        its label set -- naming the split and example.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"data set name {name!r} must be snake_case: [a-z][a-z0-9_]*.")
    if not VERSION_PATTERN.fullmatch(version):
        raise ValueError(f"version {version!r} must look like '1.0.0'.")
    if not splits:
        raise ValueError(f"{name}: no splits given; pass e.g. {{'train': examples}}.")
    for split, examples in splits.items():
        if not _NAME.fullmatch(split):
            raise ValueError(f"split name {split!r} must be snake_case (train, validation, test).")
        if fingerprint is None and not (callable(examples) or isinstance(examples, Sequence)):
            raise TypeError(
                f"split {split!r}: examples must be a sequence or a zero-argument callable "
                f"returning an iterable (they are read twice), got {type(examples).__name__}; "
                f"or pass fingerprint= to read them once."
            )
    features = _as_features(features)
    where = dict(example_locations or {})
    if fingerprint is None:
        h = hashlib.sha256()
        _hash_value(h, {"name": name, "version": version,
                        "features": json.dumps(_feature_signature(features), sort_keys=True)})
        for split in sorted(splits):
            _hash_value(h, split)
            for example in _checked(split, splits[split], features, where.get(split)):
                _hash_value(h, example)
        fingerprint = h.hexdigest()

    version_dir = os.path.join(os.fspath(data_dir), name, version)
    if os.path.isfile(os.path.join(version_dir, "dataset_info.json")):
        existing = LocalDataset(tfds.builder_from_directory(version_dir))
        if existing.fingerprint == fingerprint:
            log.info("%s: up to date (fingerprint %s), not rebuilding.", version_dir, fingerprint[:12])
            return existing
        log.warning("%s: inputs changed (fingerprint %s -> %s); rebuilding.",
                    version_dir, str(existing.fingerprint)[:12], fingerprint[:12])
        shutil.rmtree(version_dir)

    full_metadata = {**dict(metadata or {}), "fingerprint": fingerprint}
    builder_cls = _make_builder_class(name, version, features, splits, where, full_metadata, description)
    builder = builder_cls(data_dir=os.fspath(data_dir), file_format="array_record")
    with tempfile.TemporaryDirectory() as downloads:
        builder.download_and_prepare(download_dir=downloads)
    return LocalDataset(tfds.builder_from_directory(version_dir))
