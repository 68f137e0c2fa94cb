"""TensorFlow Datasets without TensorFlow: local files written once into TFDS's own format, and
TFDS catalogue data sets by name -- both read back by random access.

Local data (CSV/JSONL text with labels, token-tag files, image arrays, or any examples with a
declared feature spec) is written by a ``tfds.core.GeneratorBasedBuilder`` into
``data_dir/<name>/<version>/`` as ``array_record`` files -- a versioned TFDS data set with
``dataset_info.json``, label files and per-split example counts -- and read back with
``tfds.builder_from_directory(...).as_data_source(split)``: O(1) access to example ``i``, which
is what :class:`jaxtune.data.loader.Loader` needs for seeded shuffling and exact restarts.

A build is skipped when the data set already exists with the same *input fingerprint* (a
SHA-256 over the name, version, feature spec and every example); when the inputs changed, the
old version directory is replaced. Examples are checked on the way in: an empty split, a
missing or unexpected field, or a label outside the label set is an error that names the
split, the example (file and line for files) and the value.

Only what works without TensorFlow is used (tensorflow-datasets 4.9.10): ``Text``,
``ClassLabel``, ``Sequence`` and ``Tensor`` features, ``array_record`` files,
``as_data_source``. Images are stored as uint8 ``Tensor`` features, not ``Image`` (whose
encoding needs TensorFlow). Where TensorFlow is installed, the same builders also serve
``builder.as_dataset(...)`` for a ``tf.data`` pipeline.

Example:
    >>> import tempfile
    >>> import tensorflow_datasets as tfds
    >>> examples = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    >>> features = {"text": tfds.features.Text(),
    ...             "label": tfds.features.ClassLabel(names=["neg", "pos"])}
    >>> ds = build_dataset("reviews", {"train": examples}, features, tempfile.mkdtemp())
    >>> ds.source("train")[1]
    {'label': 0, 'text': 'bad'}
"""

from __future__ import annotations

import csv
import dataclasses
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

from jaxtune.data.sources import (
    ImageClassificationSplit,
    Splits,
    TextClassificationSplit,
    TokenTaggingSplit,
    read_token_tag_file,
    split_indices,
)
from jaxtune.data.text_files import open_text
from jaxtune.data.tfds_offline import check_obtainable, not_prepared_message

__all__ = [
    "DecodedSource",
    "LocalDataset",
    "build_dataset",
    "build_from_splits",
    "build_image_classification",
    "build_text_classification",
    "build_token_tagging",
    "load_dataset",
    "read_labelled_records",
    "tfds_source",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_VERSION = re.compile(r"\d+\.\d+\.\d+")

Examples = Iterable[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]]


# --------------------------------------------------------------------------------------------
# Reading back
# --------------------------------------------------------------------------------------------


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
        if _VERSION.fullmatch(v) and os.path.isfile(os.path.join(root, v, "dataset_info.json"))
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


# --------------------------------------------------------------------------------------------
# Fingerprints and checks
# --------------------------------------------------------------------------------------------


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


def _check_label(value: Any, feature: Any, where: str) -> None:
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
            _check_label(example[key], feature, f"{where}, field {key!r}")
        elif isinstance(feature, tfds.features.Sequence) and isinstance(
                feature.feature, tfds.features.ClassLabel):
            for j, value in enumerate(example[key]):
                _check_label(value, feature.feature, f"{where}, field {key!r}[{j}]")


def _checked(split: str, examples: Examples, features: Any, where: Callable[[int], str] | None) -> Iterator[Mapping[str, Any]]:
    items = examples() if callable(examples) else examples
    count = 0
    for i, example in enumerate(items):
        _check_example(example, features, where(i) if where else f"split {split!r}, example {i}")
        count += 1
        yield example
    if count == 0:
        raise ValueError(f"split {split!r} is empty: a data set split needs at least one example.")


# --------------------------------------------------------------------------------------------
# Generic builder
# --------------------------------------------------------------------------------------------


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
    if not _VERSION.fullmatch(version):
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


# --------------------------------------------------------------------------------------------
# Task-shaped builders
# --------------------------------------------------------------------------------------------


def _check_split_names(parts: Mapping[str, Any]) -> None:
    unknown = sorted(set(parts) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}; use {list(SPLITS)}.")
    if not parts:
        raise ValueError(f"no splits given; use some of {list(SPLITS)}.")


def _cut(keys: Sequence[bytes], strata: Sequence[int] | None, fractions: Sequence[float],
         seed: int) -> dict[str, np.ndarray]:
    """Deterministic train/validation/test indices for one input (content-hash based)."""
    train, val, test = split_indices(keys, strata, fractions=fractions, seed=seed)
    return {"train": train, "validation": val, "test": test}


def read_labelled_records(
    path: str | os.PathLike,
    fields: Sequence[str],
    label_field: str,
    label_names: Sequence[str],
    *,
    encoding: str = "utf-8",
) -> list[tuple[dict, str]]:
    """Reads a CSV (with header) or JSONL file into ``({field: value, label_field: label}, where)``.

    The format follows the suffix (``.csv``/``.tsv``; ``.jsonl``/``.json`` with one object per
    line). Labels may be class names, or integer ids in JSON.

    Raises:
      ValueError/KeyError: empty file, missing column/key, empty text, label outside
        ``label_names``, malformed JSON, bytes invalid in ``encoding`` -- naming the file and line.

    Example:
        >>> rows = read_labelled_records("pairs.jsonl", ["premise", "hypothesis"], "label",
        ...                              ["entailment", "contradiction"])  # doctest: +SKIP
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".csv", ".tsv"):
        rows = _read_csv(path, encoding, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path, encoding)
    else:
        raise ValueError(f"{path}: unknown format {suffix!r}; use .csv, .tsv or .jsonl.")
    label_feature = tfds.features.ClassLabel(names=list(label_names))
    out = []
    for row, where in rows:
        missing = [f for f in (*fields, label_field) if f not in row]
        if missing:
            raise KeyError(f"{where}: missing field(s) {missing}; it has {sorted(row)}.")
        example = {}
        for f in fields:
            value = row[f]
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{where}: field {f!r} must be non-empty text, got {value!r}.")
            example[f] = value
        label = row[label_field]
        if isinstance(label, str):
            label = label.strip()
        _check_label(label, label_feature, f"{where}, field {label_field!r}")
        example[label_field] = label if isinstance(label, str) else label_names[int(label)]
        out.append((example, where))
    if not out:
        raise ValueError(f"{path}: no examples (the file has no data rows).")
    return out


def _read_csv(path: str, encoding: str, delimiter: str) -> list[tuple[dict, str]]:
    with open_text(path, encoding, newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            raise ValueError(f"{path}: the file is empty (no header row).")
        rows = []
        for row in reader:
            rows.append((dict(row), f"{path}, line {reader.line_num}"))
    return rows


def _read_jsonl(path: str, encoding: str) -> list[tuple[dict, str]]:
    rows = []
    with open_text(path, encoding) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg}).") from None
            if not isinstance(row, dict):
                raise TypeError(f"{where}: expected a JSON object per line, got {type(row).__name__}.")
            rows.append((row, where))
    return rows


def build_text_classification(
    name: str,
    data_dir: str | os.PathLike,
    files: str | os.PathLike | Mapping[str, str | os.PathLike],
    label_names: Sequence[str],
    *,
    text_fields: Sequence[str] = ("text",),
    label_field: str = "label",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    encoding: str = "utf-8",
    version: str = "1.0.0",
) -> LocalDataset:
    """CSV/TSV/JSONL files of labelled texts (one or more text fields, e.g. sentence pairs) ->
    TFDS data set with ``Text`` fields and a ``ClassLabel`` label.

    ``files`` is either ``{"train": path, "validation": path, "test": path}`` (any subset), or
    one file cut deterministically and stratified by class with ``fractions`` (see
    :func:`jaxtune.data.sources.split_indices`).

    Example:
        >>> ds = build_text_classification("mrpc_local", "/data/tfds", "pairs.jsonl",
        ...     ["different", "paraphrase"], text_fields=("sentence1", "sentence2"))  # doctest: +SKIP
    """
    text_fields = tuple(text_fields)
    features = {f: tfds.features.Text() for f in text_fields}
    features[label_field] = tfds.features.ClassLabel(names=list(label_names))
    if isinstance(files, Mapping):
        _check_split_names(files)
        records = {s: read_labelled_records(p, text_fields, label_field, label_names, encoding=encoding)
                   for s, p in files.items()}
    else:
        rows = read_labelled_records(files, text_fields, label_field, label_names, encoding=encoding)
        parts = _cut(
            ["\x1f".join(r[f] for f in text_fields).encode("utf-8") for r, _ in rows],
            [list(label_names).index(r[label_field]) for r, _ in rows],
            fractions, seed,
        )
        records = {s: [rows[i] for i in idx] for s, idx in parts.items()}
    return build_dataset(
        name, {s: [r for r, _ in rs] for s, rs in records.items()}, features, data_dir,
        version=version,
        example_locations={s: (lambda i, rs=rs: rs[i][1]) for s, rs in records.items()},
        metadata={"task": "text_classification", "text_fields": list(text_fields),
                  "label_field": label_field},
    )


def build_token_tagging(
    name: str,
    data_dir: str | os.PathLike,
    files: str | os.PathLike | Mapping[str, str | os.PathLike],
    label_names: Sequence[str],
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    encoding: str = "utf-8",
    version: str = "1.0.0",
) -> LocalDataset:
    """``token<TAB>tag`` files (blank line between sentences) -> TFDS data set with ``tokens``
    (Sequence of Text) and ``tags`` (Sequence of ClassLabel).

    ``files`` as in :func:`build_text_classification` (one file is cut by sentence).
    """
    if isinstance(files, Mapping):
        _check_split_names(files)
        parts = {s: read_token_tag_file(p, label_names, encoding=encoding) for s, p in files.items()}
    else:
        tagged = read_token_tag_file(files, label_names, encoding=encoding)
        idx = _cut(["\x1f".join(words).encode("utf-8") for words in tagged.tokens], None,
                   fractions, seed)
        parts = {s: tagged.take(i) for s, i in idx.items()}
    return _build_from_parts(name, data_dir, parts, label_names, version=version,
                                  metadata={"task": "token_classification"})


def build_image_classification(
    name: str,
    data_dir: str | os.PathLike,
    images: np.ndarray | Mapping[str, tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray | None,
    label_names: Sequence[str],
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    version: str = "1.0.0",
) -> LocalDataset:
    """uint8 images ``(N, H, W, C)`` with integer labels -> TFDS data set with a uint8 ``image``
    Tensor and a ``ClassLabel`` label.

    ``images`` is one array (with ``labels``; cut stratified by class with ``fractions``) or
    ``{split: (images, labels)}`` (``labels`` then None).

    Example:
        >>> ds = build_image_classification("digits", "/data/tfds", x, y,
        ...                                 [str(d) for d in range(10)])  # doctest: +SKIP
    """
    if isinstance(images, Mapping):
        if labels is not None:
            raise ValueError("with {split: (images, labels)} pass labels=None.")
        _check_split_names(images)
        parts = {s: _image_part(x, y, s) for s, (x, y) in images.items()}
    else:
        if labels is None:
            raise ValueError("labels are required with a single images array.")
        whole = _image_part(images, labels, "images")
        idx = _cut([img.tobytes() for img in whole.images], whole.labels, fractions, seed)
        parts = {s: whole.take(i) for s, i in idx.items()}
    return _build_from_parts(name, data_dir, parts, label_names, version=version,
                                  metadata={"task": "image_classification"})


def build_from_splits(
    name: str, data_dir: str | os.PathLike, splits: Splits, *, version: str = "1.0.0"
) -> LocalDataset:
    """Writes a :class:`jaxtune.data.sources.Splits` (e.g. ``load_tweet_sentiment()``,
    ``load_wnut_ner()``, ``load_mnist_digits()``) into TFDS format, with its provenance.

    Example:
        >>> from jaxtune.data import load_mnist_digits
        >>> ds = build_from_splits("mnist_digits", "/data/tfds", load_mnist_digits())  # doctest: +SKIP
    """
    parts = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    metadata = {"origin": splits.origin, "license": splits.license, "notes": list(splits.notes)}
    return _build_from_parts(
        name, data_dir, parts, splits.label_names,
        version=version, metadata=metadata, description=f"{splits.name}: {splits.origin}",
    )


def _image_part(images: Any, labels: Any, what: str) -> ImageClassificationSplit:
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(
            f"{what}: images must be a uint8 (N, H, W, C) array, got {images.dtype} {images.shape}."
        )
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{what}: labels have shape {labels.shape}, expected ({images.shape[0]},).")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{what}: labels must be integer class ids, got {labels.dtype}.")
    return ImageClassificationSplit(images, labels)


def _build_from_parts(
    name: str, data_dir: str | os.PathLike, parts: Mapping[str, Any], label_names: Sequence[str],
    *, version: str = "1.0.0", metadata: Mapping[str, Any] | None = None, description: str = "",
) -> LocalDataset:
    """Writes ``{split: TextClassificationSplit | TokenTaggingSplit | ImageClassificationSplit}``
    (all of one kind) into TFDS format; the feature spec follows the container type."""
    kinds = {type(p) for p in parts.values()}
    if len(kinds) != 1:
        raise TypeError(f"all splits must be of one kind, got {sorted(k.__name__ for k in kinds)}.")
    kind = kinds.pop()
    label = tfds.features.ClassLabel(names=list(label_names))
    examples: dict[str, Examples]
    if kind is TextClassificationSplit:
        features = {"text": tfds.features.Text(), "label": label}
        with_conf = all(p.confidence is not None for p in parts.values())
        if with_conf:
            features["confidence"] = tfds.features.Tensor(shape=(), dtype=np.float32)
        examples = {s: _text_examples(p, with_conf) for s, p in parts.items()}
    elif kind is TokenTaggingSplit:
        features = {"tokens": tfds.features.Sequence(tfds.features.Text()),
                    "tags": tfds.features.Sequence(label)}
        examples = {s: [{"tokens": list(w), "tags": t.astype(np.int64)}
                        for w, t in zip(p.tokens, p.tags)] for s, p in parts.items()}
    elif kind is ImageClassificationSplit:
        shapes = {p.images.shape[1:] for p in parts.values()}
        if len(shapes) != 1 or any(p.images.dtype != np.uint8 for p in parts.values()):
            raise ValueError(
                f"images of all splits must be uint8 of one size (H, W, C), got "
                f"{ {s: (str(p.images.dtype), p.images.shape) for s, p in parts.items()} }."
            )
        features = {"image": tfds.features.Tensor(shape=shapes.pop(), dtype=np.uint8), "label": label}
        examples = {s: [{"image": x, "label": int(y)} for x, y in zip(p.images, p.labels)]
                    for s, p in parts.items()}
    else:
        raise TypeError(f"cannot write {kind.__name__}; expected a split container from jaxtune.data.sources.")
    return build_dataset(name, examples, features, data_dir, version=version,
                         metadata=metadata, description=description)


def _text_examples(part: TextClassificationSplit, with_conf: bool) -> list[dict]:
    out = []
    for i, (text, label) in enumerate(zip(part.texts, part.labels)):
        example = {"text": text, "label": int(label)}
        if with_conf:
            example["confidence"] = np.float32(part.confidence[i])
        out.append(example)
    return out
