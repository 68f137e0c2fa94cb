"""Data: real offline data sets, tokenisation, label alignment, QA features, length buckets, image
preprocessing, a restartable grain loader and rehearsal mixing. Local files -> TFDS format lives in
``jaxtune.data.tfds_local`` (imported on use: it loads tensorflow-datasets).

The grain-based names (``Loader``, ``LoaderIterator``, ``example_stream``, ``Rehearsal``,
``RehearsalBatches``, ``RehearsalSchedule``) are imported on first use, so ``import jaxtune`` works
where grain is not installed (an accelerator image that only benchmarks or evaluates, say)::

    from jaxtune.data import Loader   # imports grain here
"""
import importlib

from jaxtune.data.checks import (
    DataError,
    check_data_fits_model,
    check_finite_inputs,
    check_labels,
    check_lengths,
    check_num_labels,
    check_token_ids,
)
from jaxtune.data.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocessing,
    center_crop,
    decode_image,
    horizontal_flip,
    normalize,
    random_crop,
    random_horizontal_flip,
    resize,
    resize_shorter_side,
    to_rgb,
)
from jaxtune.data.pairs import (
    SNLI_LABELS,
    DataPackageMissing,
    QASplit,
    TextPairSplit,
    data_dir,
    format_pairs,
    load_snli,
    load_squad,
    load_stsb,
    read_snli_jsonl,
    read_squad_json,
    read_sts_tsv,
)
from jaxtune.data.sources import (
    TWEET_SENTIMENT_LABELS,
    WNUT16_LABELS,
    ImageClassificationSplit,
    Splits,
    TextClassificationSplit,
    TokenTaggingSplit,
    load_mnist_digits,
    load_tweet_sentiment,
    load_wnut_ner,
    read_text_classification_csv,
    read_token_tag_file,
    split_indices,
)
from jaxtune.data.t5_pairs import PAIR_NAMES, GeneratedTargets, score_text, target_texts, tokenize_t5_pairs
from jaxtune.data.text import (
    IGNORE_INDEX,
    QAFeatures,
    Tokenized,
    align_labels,
    batch_shapes,
    bucket_batches,
    bucket_for,
    decode_qa_predictions,
    length_buckets,
    load_tokenizer,
    pad_batch,
    prepare_qa_features,
    tokenize_text_to_text,
    tokenize_texts,
    tokenize_words,
    word_predictions,
)

__all__ = [
    "DataError",
    "DataPackageMissing",
    "GeneratedTargets",
    "check_data_fits_model",
    "check_finite_inputs",
    "check_labels",
    "check_lengths",
    "check_num_labels",
    "check_token_ids",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImagePreprocessing",
    "Loader",
    "LoaderIterator",
    "Rehearsal",
    "RehearsalBatches",
    "RehearsalSchedule",
    "center_crop",
    "decode_image",
    "example_stream",
    "horizontal_flip",
    "normalize",
    "random_crop",
    "random_horizontal_flip",
    "resize",
    "resize_shorter_side",
    "to_rgb",
    "IGNORE_INDEX",
    "PAIR_NAMES",
    "SNLI_LABELS",
    "TWEET_SENTIMENT_LABELS",
    "WNUT16_LABELS",
    "ImageClassificationSplit",
    "QAFeatures",
    "QASplit",
    "Splits",
    "TextClassificationSplit",
    "TextPairSplit",
    "TokenTaggingSplit",
    "Tokenized",
    "align_labels",
    "batch_shapes",
    "bucket_batches",
    "bucket_for",
    "data_dir",
    "decode_qa_predictions",
    "format_pairs",
    "length_buckets",
    "load_mnist_digits",
    "load_snli",
    "load_squad",
    "load_stsb",
    "load_tokenizer",
    "load_tweet_sentiment",
    "load_wnut_ner",
    "pad_batch",
    "prepare_qa_features",
    "read_snli_jsonl",
    "read_squad_json",
    "read_sts_tsv",
    "read_text_classification_csv",
    "read_token_tag_file",
    "score_text",
    "split_indices",
    "target_texts",
    "tokenize_t5_pairs",
    "tokenize_text_to_text",
    "tokenize_texts",
    "tokenize_words",
    "word_predictions",
]

# name -> module of the names that need grain; resolved on first access (PEP 562).
_GRAIN_NAMES = {
    "Loader": "jaxtune.data.loader",
    "LoaderIterator": "jaxtune.data.loader",
    "example_stream": "jaxtune.data.loader",
    "Rehearsal": "jaxtune.data.rehearsal",
    "RehearsalBatches": "jaxtune.data.rehearsal",
    "RehearsalSchedule": "jaxtune.data.rehearsal",
}


def __getattr__(name: str):
    if name in _GRAIN_NAMES:
        value = getattr(importlib.import_module(_GRAIN_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxtune.data' has no attribute {name!r}")
