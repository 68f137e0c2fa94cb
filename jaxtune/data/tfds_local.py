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

This module gathers the public names of three, one job each: :mod:`jaxtune.data.tfds_read`
(reading back), :mod:`jaxtune.data.tfds_write` (fingerprinted, checked writing) and
:mod:`jaxtune.data.tfds_builders` (task-shaped builders from files and arrays).

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
from jaxtune.data.tfds_builders import (
    build_from_splits,
    build_image_classification,
    build_text_classification,
    build_token_tagging,
    read_labelled_records,
)
from jaxtune.data.tfds_read import DecodedSource, LocalDataset, load_dataset, tfds_source
from jaxtune.data.tfds_write import build_dataset

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
