"""Task-shaped TFDS builders: labelled text files (CSV/TSV/JSONL), token-tag files, image arrays
and :class:`jaxtune.data.sources.Splits` written into TFDS format with the feature spec of their
task; a single input is cut deterministically into train/validation/test.

Example::

    ds = build_text_classification("mrpc_local", "/data/tfds", "pairs.jsonl", ["different", "paraphrase"],
                                   text_fields=("sentence1", "sentence2"))
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
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
from jaxtune.data.tfds_read import LocalDataset
from jaxtune.data.tfds_write import Examples, build_dataset, check_label

SPLITS = ("train", "validation", "test")


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
        check_label(label, label_feature, f"{where}, field {label_field!r}")
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
