"""Pretrained word vectors (Word2Vec text/binary, GloVe text) as an embedding table for a vocabulary.

Three file formats are read, streaming (one row at a time into one preallocated float32 array; a
``keep`` set of words skips every other row, so a 5 GB GloVe file costs only the rows you need):

* ``"word2vec"``: text, a header line ``"<count> <dim>"``, then ``word v1 ... v_dim`` per line;
* ``"word2vec_binary"``: the original C tool's / gensim's binary: the same header line, then per
  word the UTF-8 word, one space, ``dim`` little-endian float32 (``4 * dim`` bytes) and, from the
  C tool, an optional newline;
* ``"glove"``: text without a header, ``word v1 ... v_dim`` per line.

Malformed rows, wrong dimensions, a header whose count does not match the rows and truncated binary
records are :class:`VectorFileError` naming the file, the line (or binary record and byte offset)
and what was expected.

:func:`embedding_table` aligns the vectors to a vocabulary (a list of words, a ``{word: id}`` dict,
a Hugging Face tokenizer's word-level vocabulary, or a :class:`Vocabulary` built here from a corpus)
and returns the ``[vocab, dim]`` float32 table with a :class:`CoverageReport`.

Example::

    vocab = jt.build_vocabulary(train_texts, min_count=2, max_size=20_000)
    vectors = jt.load_vectors("vectors.bin", keep=vocab.words)          # format detected
    table, report = jt.embedding_table(vectors, vocab, init="normal", seed=0)
    print(report)   # 18,312 of 20,000 words found (17,950 exact, 362 lower-cased), ...
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.errors import UserError

__all__ = [
    "CoverageReport",
    "VectorFileError",
    "Vocabulary",
    "WordVectors",
    "build_vocabulary",
    "detect_vector_format",
    "embedding_table",
    "load_glove",
    "load_vectors",
    "load_word2vec",
    "simple_tokenize",
    "vocabulary_words",
]

FORMATS = ("word2vec", "word2vec_binary", "glove")
INIT_RULES = ("normal", "uniform", "zeros")

_CHUNK = 1 << 20  # bytes read at a time from a binary file


class VectorFileError(UserError):
    """A word-vector file is malformed (bad header, wrong number of values, truncated record)."""


@dataclasses.dataclass(frozen=True)
class WordVectors:
    """Word vectors read from a file.

    Attributes:
      words: the words, in file order (only the kept ones when a ``keep`` set was given).
      vectors: float32 array ``[len(words), dim]``.
      path: the file read.
      format: one of ``"word2vec"``, ``"word2vec_binary"``, ``"glove"``.
      rows_read: rows parsed in the file (kept or not).
      duplicates: rows whose word had already been seen (the first vector is kept).
    """

    words: tuple[str, ...] = dataclasses.field(repr=False)
    vectors: np.ndarray = dataclasses.field(repr=False)
    path: str
    format: str
    rows_read: int
    duplicates: int = 0

    def __post_init__(self):
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self._index

    def index(self, word: str) -> int | None:
        """Row of ``word`` in :attr:`vectors`, or ``None``."""
        return self._index.get(word)

    def __getitem__(self, word: str) -> np.ndarray:
        i = self._index.get(word)
        if i is None:
            raise KeyError(f"{word!r} is not among the {len(self.words)} words read from {self.path}")
        return self.vectors[i]


class _Rows:
    """A growable float32 ``[n, dim]`` buffer that keeps the first vector of each word."""

    def __init__(self, dim: int, capacity: int):
        self.data = np.empty((max(capacity, 1), dim), np.float32)
        self.words: list[str] = []
        self.seen: set[str] = set()
        self.duplicates = 0

    def add(self, word: str, vector: np.ndarray) -> None:
        if word in self.seen:
            self.duplicates += 1
            return
        n = len(self.words)
        if n == self.data.shape[0]:
            # In place when possible: never two full copies of the table.
            self.data.resize((2 * n, self.data.shape[1]), refcheck=False)
        self.data[n] = vector
        self.words.append(word)
        self.seen.add(word)

    def finish(self, path: str, fmt: str, rows_read: int) -> WordVectors:
        self.data.resize((len(self.words), self.data.shape[1]), refcheck=False)
        return WordVectors(tuple(self.words), self.data, path, fmt, rows_read, self.duplicates)


def _keep_set(keep: Iterable[str] | None, lowercase: bool) -> set[str] | None:
    if keep is None:
        return None
    words = set(keep)
    return words | {w.lower() for w in words} if lowercase else words


def _parse_header(line: bytes, path: str, encoding: str) -> tuple[int, int]:
    parts = line.decode(encoding, errors="replace").split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[1]) == 0:
        raise VectorFileError(
            f"{path}, line 1: expected a Word2Vec header '<count> <dim>' (two positive integers), got "
            f"{line[:80]!r}. Hint: a file without a header is GloVe format: load_vectors(path, format='glove').")
    return int(parts[0]), int(parts[1])


def _parse_text_row(line: str, dim: int | None, dim_source: str, path: str, lineno: int) -> tuple[str, np.ndarray]:
    fields = line.rstrip().split(" ")
    if len(fields) < 2:
        raise VectorFileError(f"{path}, line {lineno}: expected a word followed by its vector values, "
                              f"got {line[:80]!r}")
    if dim is not None and len(fields) - 1 != dim:
        raise VectorFileError(
            f"{path}, line {lineno}: word {fields[0]!r} has {len(fields) - 1} values, expected {dim} "
            f"({dim_source}). Hint: words must not contain "
            "spaces and values are separated by single spaces.")
    try:
        vector = np.asarray(fields[1:], dtype=np.float32)
    except ValueError as e:
        raise VectorFileError(f"{path}, line {lineno}: word {fields[0]!r} has a value that is not a "
                              f"number ({e})") from None
    return fields[0], vector


def _read_text(path: str, has_header: bool, keep: set[str] | None, limit: int | None,
               encoding: str, errors: str) -> WordVectors:
    fmt = "word2vec" if has_header else "glove"
    with open(path, "rb") as raw:
        count, dim, first = None, None, 1
        if has_header:
            count, dim = _parse_header(raw.readline(), path, encoding)
            first = 2
        wanted = count if count is not None else 1024
        if limit is not None:
            wanted = min(wanted, limit)
        if keep is not None:
            wanted = min(wanted, len(keep))
        rows, rows_read = None, 0
        dim_source = "the header's dimension" if has_header else "the dimension of the first row"
        for lineno, raw_line in enumerate(raw, start=first):
            try:
                line = raw_line.decode(encoding, errors=errors)
            except UnicodeDecodeError as e:
                raise VectorFileError(f"{path}, line {lineno}: bytes {e.start}..{e.end} are not valid {encoding} "
                                      f"({e.reason}). Hint: pass errors='replace' or the file's encoding.") from None
            if not line.strip():
                continue
            if limit is not None and rows_read >= limit:
                break
            if count is not None and rows_read >= count:
                raise VectorFileError(f"{path}, line {lineno}: the header announces {count} vectors but "
                                      "the file has more rows. Hint: fix the header's count.")
            word, vector = _parse_text_row(line, dim, dim_source, path, lineno)
            dim = vector.shape[0] if dim is None else dim
            rows = _Rows(dim, wanted) if rows is None else rows
            rows_read += 1
            if keep is None or word in keep:
                rows.add(word, vector)
    if count is not None and rows_read < count and (limit is None or rows_read < limit):
        raise VectorFileError(f"{path}: the header announces {count} vectors but the file ends after "
                              f"{rows_read}. Hint: the file may be truncated.")
    if rows is None:
        if dim is None:
            raise VectorFileError(f"{path}: the file holds no vectors.")
        rows = _Rows(dim, 1)
    return rows.finish(path, fmt, rows_read)


def _read_binary(path: str, keep: set[str] | None, limit: int | None, encoding: str, errors: str) -> WordVectors:
    with open(path, "rb") as f:
        header = f.readline()
        count, dim = _parse_header(header, path, encoding)
        n = count if limit is None else min(count, limit)
        rows = _Rows(dim, n if keep is None else min(n, len(keep)))
        nbytes = 4 * dim
        buf, pos, offset = b"", 0, len(header)  # offset: file position of buf[0]
        for record in range(1, n + 1):
            while True:
                space = buf.find(b" ", pos)
                if space != -1 and len(buf) - space - 1 >= nbytes:
                    break
                more = f.read(_CHUNK)
                if not more:
                    word_bytes = buf[pos:].lstrip(b"\n") if space == -1 else buf[pos:space].lstrip(b"\n")
                    start = offset + len(buf) - len(buf[pos:].lstrip(b"\n"))
                    what = ("no complete word" if space == -1 else
                            f"{len(buf) - space - 1} of the {nbytes} vector bytes of {word_bytes[:40]!r}")
                    raise VectorFileError(
                        f"{path}, binary record {record} of {count} (byte {start}): the file ends with "
                        f"{what}. Hint: the file is truncated, or it is not Word2Vec binary with dim={dim} "
                        "(a text file needs format='word2vec').")
                offset += pos
                buf, pos = buf[pos:] + more, 0
            raw_word = buf[pos:space].lstrip(b"\n")  # the C tool ends each vector with a newline
            start = offset + space - len(raw_word)
            try:
                word = raw_word.decode(encoding, errors=errors)
            except UnicodeDecodeError as e:
                raise VectorFileError(
                    f"{path}, binary record {record} (byte {start}): word {raw_word[:40]!r} is not "
                    f"valid {encoding} ({e.reason}). Hint: the C tool truncates long words mid-character; "
                    "pass errors='ignore'.") from None
            if not word or "\n" in word:
                problem = "a word with a newline" if word else "an empty word"
                raise VectorFileError(
                    f"{path}, binary record {record} of {count} (byte {start}): {problem} ({raw_word[:40]!r}), "
                    f"so the records are out of step. Hint: the header's dim ({dim}) is wrong, or the file is "
                    "text (format='word2vec').")
            if keep is None or word in keep:
                rows.add(word, np.frombuffer(buf, dtype="<f4", count=dim, offset=space + 1))
            pos = space + 1 + nbytes
    return rows.finish(path, "word2vec_binary", n)


def detect_vector_format(path: str | os.PathLike) -> str:
    """Guesses the format of a vector file from its first bytes.

    A first line of two integers is a Word2Vec header; the record after it is then text if it is a
    word followed by ``dim`` numbers, binary otherwise. Anything else is GloVe.

    Example::

        >>> detect_vector_format("glove.6B.100d.txt")  # doctest: +SKIP
        'glove'
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        first = f.readline()
        parts = first.split()
        if not (len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit()):
            return "glove"
        dim = int(parts[1])
        second = f.read(_CHUNK).split(b"\n", 1)[0]
    fields = second.rstrip().split(b" ")
    if len(fields) == dim + 1:
        try:
            [float(x) for x in fields[1:]]
            return "word2vec"
        except ValueError:
            pass
    return "word2vec_binary"


def load_vectors(path: str | os.PathLike, format: str | None = None, *, keep: Iterable[str] | None = None,
                 lowercase: bool = True, limit: int | None = None, encoding: str = "utf-8",
                 errors: str = "strict") -> WordVectors:
    """Reads a Word2Vec (text or binary) or GloVe file, streaming.

    Args:
      path: the file.
      format: ``"word2vec"``, ``"word2vec_binary"``, ``"glove"``, or ``None`` to detect it
        (:func:`detect_vector_format`).
      keep: only keep the vectors of these words (e.g. ``vocab.words``); with ``lowercase=True`` the
        lower-cased forms are kept too, for :func:`embedding_table`'s lower-case fallback.
      limit: read only the first ``limit`` rows (files are usually sorted by frequency).
      encoding, errors: how words are decoded (``errors="ignore"`` for C-tool files with words
        truncated mid-character).

    Raises :class:`VectorFileError` naming the file and line/record of a malformed row.

    Example::

        vectors = jt.load_vectors("glove.6B.100d.txt", keep=vocab.words)
        vectors["the"].shape   # (100,)
    """
    path = os.fspath(path)
    fmt = detect_vector_format(path) if format is None else format
    if fmt not in FORMATS:
        raise ValueError(f"unknown vector format {fmt!r}; use one of {FORMATS} or None to detect it")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of rows, got {limit}")
    keep_set = _keep_set(keep, lowercase)
    if fmt == "word2vec_binary":
        return _read_binary(path, keep_set, limit, encoding, errors)
    return _read_text(path, fmt == "word2vec", keep_set, limit, encoding, errors)


def load_word2vec(path: str | os.PathLike, binary: bool = False, **kwargs) -> WordVectors:
    """Reads a Word2Vec file (``binary=True`` for the C tool's / gensim's binary format).

    Example::

        vectors = jt.load_word2vec("GoogleNews-vectors-negative300.bin", binary=True, limit=200_000)
    """
    return load_vectors(path, "word2vec_binary" if binary else "word2vec", **kwargs)


def load_glove(path: str | os.PathLike, **kwargs) -> WordVectors:
    """Reads a GloVe text file (no header; ``word v1 ... v_dim`` per line).

    Example::

        vectors = jt.load_glove("glove.6B.50d.txt", keep=vocab.words)
    """
    return load_vectors(path, "glove", **kwargs)


# --------------------------------------------------------------------------------------------
# Tokenizer and vocabulary
# --------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[@#]?\w+(?:'\w+)*|[^\w\s]")


def simple_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Splits text into words (``@user``/``#tag`` kept whole, ``don't`` one word) and punctuation marks.

    Example::

        >>> simple_tokenize("@united Delayed AGAIN... don't #fail")
        ['@united', 'delayed', 'again', '.', '.', '.', "don't", '#fail']
    """
    return _TOKEN.findall(text.lower() if lowercase else text)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """A word-level vocabulary: id ``i`` is ``words[i]``; ``<pad>`` is id 0 and ``<unk>`` id 1.

    Attributes:
      words: every entry, specials first, then by decreasing corpus count (ties alphabetical).
      counts: corpus count of each entry (0 for the specials).
      tokenizer: the function that split the corpus; :meth:`encode` uses it too.
    """

    words: tuple[str, ...]
    counts: tuple[int, ...]
    tokenizer: Callable[[str], list[str]] = simple_tokenize
    pad_token: str = "<pad>"
    unk_token: str = "<unk>"

    def __post_init__(self):
        object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.words)})
        if len(self._ids) != len(self.words):
            raise ValueError("Vocabulary words must be unique")

    def __len__(self) -> int:
        return len(self.words)

    @property
    def pad_id(self) -> int:
        return self._ids[self.pad_token]

    @property
    def unk_id(self) -> int:
        return self._ids[self.unk_token]

    def get_vocab(self) -> dict[str, int]:
        """``{word: id}``, like a Hugging Face tokenizer."""
        return dict(self._ids)

    def encode(self, texts: Sequence[str], max_length: int) -> np.ndarray:
        """int32 ids ``[len(texts), max_length]``: tokenized, unknown words -> ``<unk>``, truncated,
        padded with ``<pad>``.

        Example::

            ids = vocab.encode(["fix os x please"], max_length=8)   # shape (1, 8)
        """
        out = np.full((len(texts), max_length), self.pad_id, np.int32)
        unk = self.unk_id
        for row, text in enumerate(texts):
            ids = [self._ids.get(w, unk) for w in self.tokenizer(text)[:max_length]]
            out[row, :len(ids)] = ids
        return out


def build_vocabulary(texts: Iterable[str], *, min_count: int = 1, max_size: int | None = None,
                     tokenizer: Callable[[str], list[str]] = simple_tokenize) -> Vocabulary:
    """Counts the words of a corpus (build it from the training split only) into a :class:`Vocabulary`.

    Words seen fewer than ``min_count`` times are left out; ``max_size`` caps the number of entries,
    ``<pad>`` and ``<unk>`` included (the most frequent words are kept).

    Example::

        >>> vocab = build_vocabulary(["a b a", "b a c"], min_count=2)
        >>> vocab.words
        ('<pad>', '<unk>', 'a', 'b')
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if max_size is not None and max_size < 3:
        raise ValueError(f"max_size must leave room for <pad>, <unk> and a word (>= 3), got {max_size}")
    counts = collections.Counter(w for text in texts for w in tokenizer(text))
    for special in ("<pad>", "<unk>"):
        counts.pop(special, None)
    ranked = sorted(((c, w) for w, c in counts.items() if c >= min_count), key=lambda cw: (-cw[0], cw[1]))
    if max_size is not None:
        ranked = ranked[:max_size - 2]
    return Vocabulary(("<pad>", "<unk>") + tuple(w for _, w in ranked), (0, 0) + tuple(c for c, _ in ranked),
                      tokenizer=tokenizer)


def vocabulary_words(vocabulary: Any) -> list[str]:
    """The word of each id of a vocabulary: a list of words, a ``{word: id}`` dict, a
    :class:`Vocabulary`, or a Hugging Face tokenizer (its ``get_vocab()``; word-level entries).

    Example::

        >>> vocabulary_words({"b": 1, "a": 0})
        ['a', 'b']
    """
    if hasattr(vocabulary, "get_vocab") and not isinstance(vocabulary, Mapping):
        vocabulary = vocabulary.get_vocab()
    if isinstance(vocabulary, Mapping):
        ids = sorted(vocabulary.values())
        if ids != list(range(len(ids))):
            gaps = sorted(set(range(len(ids))) - set(ids))[:5]
            raise ValueError(f"a {{word: id}} vocabulary needs the ids 0..{len(ids) - 1}, each once; missing "
                             f"{gaps}, and {len(ids) - len(set(ids))} duplicate ids")
        words = [""] * len(ids)
        for w, i in vocabulary.items():
            words[i] = w
        return words
    if isinstance(vocabulary, str) or not isinstance(vocabulary, Sequence):
        raise TypeError(f"a vocabulary is a list of words, a {{word: id}} dict or a tokenizer with get_vocab(), "
                        f"got {type(vocabulary).__name__}")
    words = list(vocabulary)
    if len(set(words)) != len(words):
        dup = [w for w, c in collections.Counter(words).items() if c > 1][:5]
        raise ValueError(f"the vocabulary repeats words, e.g. {dup}")
    return words


# --------------------------------------------------------------------------------------------
# Embedding table
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CoverageReport:
    """How a vocabulary was matched against word vectors.

    Attributes:
      vocab_size: entries in the vocabulary.
      exact: entries whose word has a vector.
      lowercased: entries found only through their lower-cased form.
      not_found: entries initialised by ``init`` (the padding entry excluded).
      padding_index: the entry set to zeros, or ``None``.
      init: the rule used for words without a vector, in words.
      missing: the first (up to 20) words without a vector, in id order.
      token_coverage: fraction of corpus tokens whose word has a vector (when the vocabulary has counts).
      source: the vector file.
    """

    vocab_size: int
    exact: int
    lowercased: int
    not_found: int
    padding_index: int | None
    init: str
    missing: tuple[str, ...]
    token_coverage: float | None
    source: str

    @property
    def found(self) -> int:
        return self.exact + self.lowercased

    def __str__(self) -> str:
        tokens = "" if self.token_coverage is None else f"; {100 * self.token_coverage:.1f}% of corpus tokens covered"
        pad = "" if self.padding_index is None else f"; padding id {self.padding_index} = zeros"
        return (f"{self.found:,} of {self.vocab_size:,} words found in {self.source} "
                f"({self.exact:,} exact, {self.lowercased:,} lower-cased), {self.not_found:,} not found{tokens}{pad}; "
                f"unknown words: {self.init}")


def _default_padding_index(vocabulary: Any) -> int | None:
    if isinstance(vocabulary, Vocabulary):
        return vocabulary.pad_id
    pad = getattr(vocabulary, "pad_token_id", None)
    return pad if isinstance(pad, int) else None


def _init_unknown(rule: str, found: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, str]:
    dim = found.shape[1]
    if rule == "zeros":
        return np.zeros((n, dim), np.float32), "zeros"
    if len(found) < 2:
        raise ValueError(f"init={rule!r} takes its statistics from the vectors found, but only {len(found)} "
                         "vocabulary word(s) have one. Hint: check the tokenizer's casing against the vector "
                         "file, or use init='zeros'.")
    rng = np.random.default_rng(seed)
    if rule == "normal":
        mean, std = found.mean(0, dtype=np.float64), found.std(0, dtype=np.float64)
        values = rng.standard_normal((n, dim)) * std + mean
        return values.astype(np.float32), f"normal with the per-dimension mean/std of the found vectors, seed {seed}"
    a = float(np.sqrt(3.0) * found.std(dtype=np.float64))
    return (rng.uniform(-a, a, (n, dim)).astype(np.float32),
            f"uniform(-{a:.4g}, {a:.4g}) (variance of the found vectors), seed {seed}")


def embedding_table(vectors: WordVectors, vocabulary: Any, *, init: str = "normal", seed: int = 0,
                    lowercase: bool = True,
                    padding_index: int | None | str = "auto") -> tuple[np.ndarray, CoverageReport]:
    """A float32 ``[len(vocabulary), dim]`` embedding table whose row ``i`` is the vector of word ``i``.

    A word is looked up as is, then (``lowercase=True``) lower-cased. Words without a vector are
    initialised by ``init``:

    * ``"normal"``: drawn from a normal with the per-dimension mean and standard deviation of the
      vectors found (so they look like the others), seeded by ``seed``;
    * ``"uniform"``: ``U(-a, a)`` with the variance of the vectors found (Kim, 2014), seeded;
    * ``"zeros"``.

    The padding row (``padding_index``; ``"auto"``: a :class:`Vocabulary`'s ``<pad>`` or a tokenizer's
    ``pad_token_id``) is zeros.

    Example::

        table, report = jt.embedding_table(vectors, vocab, init="normal", seed=0)
        params = bag.with_embedding_table(params, table)
    """
    if init not in INIT_RULES:
        raise ValueError(f"unknown init rule {init!r}; use one of {INIT_RULES}")
    words = vocabulary_words(vocabulary)
    if padding_index == "auto":
        padding_index = _default_padding_index(vocabulary)
    if padding_index is not None and not 0 <= padding_index < len(words):
        raise ValueError(f"padding_index {padding_index} is outside the vocabulary's 0..{len(words) - 1}")
    rows = np.full(len(words), -1, np.int64)
    how = np.zeros(len(words), np.int8)  # 0 not found, 1 exact, 2 lower-cased
    for i, w in enumerate(words):
        j = vectors.index(w)
        if j is not None:
            rows[i], how[i] = j, 1
        elif lowercase and (j := vectors.index(w.lower())) is not None:
            rows[i], how[i] = j, 2
    if padding_index is not None:
        rows[padding_index], how[padding_index] = -1, 0
    hit = rows >= 0
    table = np.empty((len(words), vectors.dim), np.float32)
    table[hit] = vectors.vectors[rows[hit]]
    unknown = ~hit
    if padding_index is not None:
        unknown[padding_index] = False
    table[unknown], rule = _init_unknown(init, table[hit], int(unknown.sum()), seed)
    if padding_index is not None:
        table[padding_index] = 0.0
    token_coverage = None
    counts = getattr(vocabulary, "counts", None)
    if counts is not None and sum(counts) > 0:
        counts = np.asarray(counts, np.float64)
        token_coverage = float(counts[hit].sum() / counts.sum())
    missing = tuple(words[i] for i in np.flatnonzero(unknown)[:20])
    report = CoverageReport(len(words), int((how == 1).sum()), int((how == 2).sum()), int(unknown.sum()),
                            padding_index, rule, missing, token_coverage, vectors.path)
    return table, report
