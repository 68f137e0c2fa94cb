"""The runner's data: a named offline data set -> per-example arrays for the model, and epoch batches.

Used by :func:`jaxtune.finetune` (and re-exported from ``jaxtune.experiment``); usable alone::

    data = prepare_data(jt.load_config("experiments/configs/tweets_minilm.yaml").data, "minilm")
    batches = epoch_batches(data, data.train, batch_size=32, seed=jt.epoch_seed(0, epoch=0))
    len(data.train), batches[0]["input_ids"].shape
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxtune.data.checks import check_num_labels
from jaxtune.errors import UserError

@dataclasses.dataclass
class PreparedData:
    """Examples ready for batching: per-example dicts of numpy arrays for each split.

    Example::

        data = jt.prepare_data(cfg.data, cfg.model.path)
        data.label_names, len(data.train), data.description
    """

    task: str
    train: list[dict]
    validation: list[dict]
    test: list[dict]
    label_names: tuple[str, ...]
    buckets: tuple[int, ...] | None
    pad_token_id: int
    description: str
    qa: dict | None = None
    """For extractive QA: split name -> (:class:`jaxtune.data.QAFeatures`, :class:`jaxtune.data.QASplit`),
    the windows' map back to questions, contexts and all gold answers (for EM/F1)."""
    generated: Any = None
    """For text-to-text sentence pairs: the :class:`jaxtune.data.GeneratedTargets` that reads the
    model's generated answers back as classes or scores (evaluation scores those, not tokens)."""


def _model_dir(path: str) -> str:
    if path == "minilm":
        from jaxtune.hub import minilm_path
        return str(minilm_path())
    return path


def _take(split, limit: int | None, seed: int):
    if limit is None or limit >= len(split):
        return split
    return split.take(np.sort(np.random.default_rng(seed).permutation(len(split))[:limit]))


def _dataset(name: str):
    """(loader, task) of an offline data set name."""
    from jaxtune.data import pairs, sources

    table = {"tweet_sentiment": (sources.load_tweet_sentiment, "sequence_classification"),
             "wnut_ner": (sources.load_wnut_ner, "token_classification"),
             "mnist_digits": (sources.load_mnist_digits, "image_classification"),
             "snli": (pairs.load_snli, "pair_classification"),
             "stsb": (lambda seed: pairs.load_stsb(), "sequence_regression"),
             "squad": (pairs.load_squad, "question_answering")}
    if name not in table:
        raise UserError(f"unknown dataset {name!r}; available offline: {sorted(table)}")
    return table[name]


def data_subsets(data_cfg) -> tuple:
    """``(splits, {"train": ..., "validation": ..., "test": ...})``: the named data set and the seeded
    subsets (``train_limit`` / ``eval_limit`` / ``test_limit``) that :func:`prepare_data` tokenises, as
    raw examples (for baselines scored on exactly the run's examples).

    Example::

        splits, parts = data_subsets(jt.load_config(None, ["data.dataset=stsb", "data.test_limit=100"]).data)
        len(parts["test"])   # 100
    """
    loader, _ = _dataset(data_cfg.dataset)
    splits = loader(seed=data_cfg.seed)
    return splits, {"train": _take(splits.train, data_cfg.train_limit, data_cfg.seed),
                    "validation": _take(splits.validation, data_cfg.eval_limit, data_cfg.seed + 1),
                    "test": _take(splits.test, data_cfg.test_limit, data_cfg.seed + 2)}


def _image_examples(split, image_size: int) -> list[dict]:
    from jaxtune.data import image as I

    return [{"images": I.normalize(I.resize(I.to_rgb(img), image_size)), "labels": np.int32(label)}
            for img, label in zip(split.images, split.labels)]


def prepare_data(data_cfg, model_path: str, num_labels: int | None = None, task: str = "auto") -> PreparedData:
    """Loads a named offline data set and makes per-example arrays for the model.

    ``data_cfg.dataset``: ``"tweet_sentiment"`` (3-class tweets, tokenised with the model's
    tokenizer), ``"wnut_ner"`` (BIO tags), or ``"mnist_digits"`` (grey digits resized to
    ``image_size``, 3 channels, ImageNet-normalised). ``train_limit`` / ``eval_limit`` /
    ``test_limit`` take a seeded random subset of the train / validation / test split.
    ``num_labels`` (``model.num_labels``) is checked against the label set before any preprocessing.
    ``task`` (``model.task``) ``"text_to_text"`` makes ``"snli"`` / ``"stsb"`` pairs T5 examples
    (:func:`jaxtune.data.tokenize_t5_pairs`: label words / scores as targets, ``data.truncation``
    inside the sentences), scored from generated answers (``PreparedData.generated``).

    Example (prepare once, then pass it to several runs: :func:`jaxtune.finetune`'s ``data=``)::

        cfg = jt.load_config("experiments/configs/tweets_minilm.yaml")
        data = jt.prepare_data(cfg.data, cfg.model.path)
        for lr in (1e-5, 3e-5):
            jt.finetune(cfg, [f"optim.learning_rate={lr}", f"name=lr{lr}"], data=data)
    """
    from jaxtune.data import text

    splits, parts = data_subsets(data_cfg)
    check_num_labels(num_labels, splits.label_names, data_cfg.dataset)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in parts.items())
    source = f"{splits.origin}; licence: {splits.license}"
    if task == "text_to_text":
        return _t5_pair_data(text.load_tokenizer(_model_dir(model_path)), parts, data_cfg, splits, f"{sizes}; {source}")
    if data_cfg.dataset == "mnist_digits":
        examples = {k: _image_examples(v, data_cfg.image_size) for k, v in parts.items()}
        return PreparedData("image_classification", examples["train"], examples["validation"], examples["test"],
                            tuple(splits.label_names), None, 0,
                            f"{splits.name} ({sizes}; resized to {data_cfg.image_size}px RGB; {source})")
    tokenizer = text.load_tokenizer(_model_dir(model_path))
    task = _dataset(data_cfg.dataset)[1]
    if task == "question_answering":
        return _qa_data(tokenizer, parts, data_cfg, splits, f"{sizes}; {source}")
    tokenized = {}
    for name, part in parts.items():
        if data_cfg.dataset in ("snli", "stsb"):
            tokenized[name] = text.tokenize_texts(tokenizer, part.texts, part.pairs, labels=part.labels,
                                                  max_length=data_cfg.max_length, truncation=data_cfg.truncation)
        elif data_cfg.dataset == "tweet_sentiment":
            tokenized[name] = text.tokenize_texts(tokenizer, part.texts, labels=part.labels, max_length=data_cfg.max_length)
        else:
            tokenized[name] = text.tokenize_words(tokenizer, part.tokens, part.tags, max_length=data_cfg.max_length)
    truncated = sum(t.num_truncated for t in tokenized.values())
    return PreparedData(task=task, train=tokenized["train"].examples, validation=tokenized["validation"].examples,
                        test=tokenized["test"].examples, label_names=tuple(splits.label_names),
                        buckets=text.length_buckets(data_cfg.max_length), pad_token_id=int(tokenizer.pad_token_id),
                        description=f"{splits.name} ({sizes}; {truncated} truncated to {data_cfg.max_length} "
                                    f"tokens; {source})")


def _t5_pair_data(tokenizer, parts: dict, data_cfg, splits, about: str) -> PreparedData:
    """SNLI / STS-B pairs as T5 text-to-text examples (:mod:`jaxtune.data.t5_pairs`)."""
    from jaxtune.data import t5_pairs, text

    if data_cfg.dataset not in t5_pairs.PAIR_NAMES:
        raise UserError(f"model.task is text_to_text: the runner formats sentence pairs for T5 (data.dataset "
                        f"{' or '.join(sorted(t5_pairs.PAIR_NAMES))}), not {data_cfg.dataset!r}; use model.task auto")
    regression = _dataset(data_cfg.dataset)[1] == "sequence_regression"
    names = t5_pairs.PAIR_NAMES[data_cfg.dataset]
    try:
        tokenized = {name: t5_pairs.tokenize_t5_pairs(
            tokenizer, part.texts, part.pairs, t5_pairs.target_texts(part.labels, splits.label_names, regression=regression),
            names=names, max_length=data_cfg.max_length, truncation=data_cfg.truncation) for name, part in parts.items()}
    except ValueError as e:
        raise UserError(f"data ({data_cfg.dataset}, text_to_text): {e}") from None
    truncated = sum(len(t.truncated["input_ids"]) for t in tokenized.values())
    return PreparedData(task="text_to_text", train=tokenized["train"].examples,
                        validation=tokenized["validation"].examples, test=tokenized["test"].examples,
                        label_names=tuple(splits.label_names), buckets=text.length_buckets(data_cfg.max_length),
                        pad_token_id=int(tokenizer.pad_token_id),
                        description=f"{splits.name} as text to text ('{names[0]}: ... {names[1]}: ...' -> "
                                    f"{'score rounded to 0.2' if regression else 'label word'}; {about}; {truncated} "
                                    f"pairs truncated to {data_cfg.max_length} tokens)",
                        generated=t5_pairs.GeneratedTargets(tokenizer, tuple(splits.label_names), regression))


def _qa_data(tokenizer, parts: dict, data_cfg, splits, about: str) -> PreparedData:
    """Question/context windows (``max_length`` tokens, ``doc_stride`` shared) for extractive QA; the
    training target is each question's first gold answer."""
    from jaxtune.data import text

    try:
        features = {name: text.prepare_qa_features(tokenizer, part.questions, part.contexts, part.first_answers(),
                                                   max_length=data_cfg.max_length, doc_stride=data_cfg.doc_stride)
                    for name, part in parts.items()}
    except ValueError as e:
        raise UserError(f"data ({data_cfg.dataset}): {e}") from None
    windows = ", ".join(f"{k} {len(v)}" for k, v in features.items())
    return PreparedData(task="question_answering", train=features["train"].examples,
                        validation=features["validation"].examples, test=features["test"].examples,
                        label_names=tuple(splits.label_names), buckets=text.length_buckets(data_cfg.max_length),
                        pad_token_id=int(tokenizer.pad_token_id),
                        description=f"{splits.name} ({about}; windows: {windows} of {data_cfg.max_length} tokens, "
                                    f"stride {data_cfg.doc_stride})",
                        qa={name: (features[name], parts[name]) for name in parts})


def epoch_plan(data: PreparedData, examples: list[dict], batch_size: int, seed: int | None) -> list[np.ndarray]:
    """The example indices of each batch of one epoch of :func:`epoch_batches` (same arguments), in
    order: which examples go in which batch, without building any.

    Example::

        plan = epoch_plan(data, data.train, 32, seed=jt.epoch_seed(0, epoch=0))
        batch = batch_rows(data, data.train, plan[0], 32)     # == epoch_batches(...)[0]
    """
    from jaxtune.data.text import bucket_plan

    if data.buckets is not None:
        if not examples:
            raise ValueError("epoch_plan got no examples.")
        return bucket_plan([len(e["input_ids"]) for e in examples], batch_size, data.buckets, seed=seed)
    order = np.arange(len(examples)) if seed is None else np.random.default_rng(seed).permutation(len(examples))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def batch_rows(data: PreparedData, examples: list[dict], chunk: np.ndarray, batch_size: int,
               rows: slice = slice(None)) -> dict:
    """Rows ``rows`` of the batch of examples ``chunk`` (an entry of :func:`epoch_plan`) padded to
    ``batch_size`` rows: exactly those rows of the whole batch (same sequence lengths, padding rows,
    ``example_mask``), built without the others. A process of a multi-process run builds its own rows.

    Example::

        mine = batch_rows(data, data.train, plan[0], 32, slice(16, 32))   # the second half of batch 0
    """
    from jaxtune.data.text import bucket_for, pad_batch

    start, stop, _ = rows.indices(batch_size)
    real = list(chunk[start:stop])
    if data.buckets is None:
        padded = list(chunk) + [chunk[-1]] * (batch_size - len(chunk))
        batch = {k: np.stack([examples[i][k] for i in padded[start:stop]]) for k in examples[chunk[0]]}
        batch["example_mask"] = np.arange(start, stop) < len(chunk)
        return batch
    # Every sequence field as long as in the whole batch, whose longest example may be in other rows.
    widths = {field: (bucket_for(max(len(examples[i][field]) for i in chunk), data.buckets),)
              for field, value in examples[chunk[0]].items() if np.ndim(value) == 1}
    if real:
        return pad_batch([examples[i] for i in real], data.buckets, pad_token_id=data.pad_token_id,
                         batch_size=stop - start, field_buckets=widths)
    # Only padding rows: those of a batch of one example, after its first row.
    padding = pad_batch([examples[chunk[0]]], data.buckets, pad_token_id=data.pad_token_id,
                        batch_size=stop - start + 1, field_buckets=widths)
    return {k: v[1:] for k, v in padding.items()}


def epoch_batches(data: PreparedData, examples: list[dict], batch_size: int, seed: int | None) -> list[dict]:
    """The batches of one epoch, deterministic for a given seed (``None``: data order).

    Text goes into length buckets (a bounded number of shapes); every batch has ``batch_size``
    rows, the last one filled with padding rows marked by ``example_mask``.
    """
    return [batch_rows(data, examples, chunk, batch_size) for chunk in epoch_plan(data, examples, batch_size, seed)]
