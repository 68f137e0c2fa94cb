"""Metrics against reference implementations (scikit-learn, seqeval, sacrebleu) and hand values.

Floating-point comparisons use float64 and an absolute tolerance of 1e-12 unless stated.
"""

import math
import warnings

import numpy as np
import pytest

from jaxtune import metrics

sk = pytest.importorskip("sklearn.metrics")
seqeval = pytest.importorskip("seqeval.metrics")
sacrebleu = pytest.importorskip("sacrebleu")

TOL = 1e-12


def _cases():
    rng = np.random.default_rng(0)
    cases = {
        "random_5_classes": (rng.integers(0, 5, 200), rng.integers(0, 5, 200)),
        "perfect": (np.array([0, 1, 2, 1]), np.array([0, 1, 2, 1])),
        "class_never_predicted": (np.array([0, 1, 2, 2, 1]), np.array([0, 1, 1, 1, 1])),
        "class_only_predicted": (np.array([0, 0, 1, 1]), np.array([0, 3, 1, 1])),
        "all_one_class": (np.zeros(6, dtype=int), np.zeros(6, dtype=int)),
        "labels_one_class_preds_mixed": (np.zeros(4, dtype=int), np.array([0, 1, 0, 2])),
        "inverse_binary": (np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0])),
    }
    return pytest.mark.parametrize("y_true,y_pred", list(cases.values()), ids=list(cases))


@_cases()
def test_classification_metrics_match_sklearn(y_true, y_pred):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division warnings may leak from our code
        acc = metrics.accuracy(y_true, y_pred)
        f1 = metrics.macro_f1(y_true, y_pred)
        mcc = metrics.matthews_corrcoef(y_true, y_pred)
        confusion = metrics.confusion_matrix(y_true, y_pred)
    with warnings.catch_warnings():  # the references warn on single-class inputs
        warnings.simplefilter("ignore")
        reference_acc = sk.accuracy_score(y_true, y_pred)
        reference_f1 = sk.f1_score(y_true, y_pred, average="macro", zero_division=0)
        reference_mcc = sk.matthews_corrcoef(y_true, y_pred)
        # Ours spans class ids 0..max (absent ids get zero rows); sklearn's the ids present.
        reference_confusion = sk.confusion_matrix(
            y_true, y_pred, labels=np.arange(len(confusion)))
    assert abs(acc - reference_acc) < TOL
    assert abs(f1 - reference_f1) < TOL
    assert abs(mcc - reference_mcc) < TOL
    np.testing.assert_array_equal(confusion, reference_confusion)


@_cases()
def test_classification_report_matches_sklearn(y_true, y_pred):
    names = [f"c{i}" for i in range(int(max(y_true.max(), y_pred.max())) + 2)]  # one unused class
    report = metrics.classification_report(y_true, y_pred, names)
    with warnings.catch_warnings():  # the references warn on single-class inputs
        warnings.simplefilter("ignore")
        precision, recall, f1, support = sk.precision_recall_fscore_support(
            y_true, y_pred, labels=range(len(names)), zero_division=0
        )
        weighted = sk.f1_score(y_true, y_pred, average="weighted", zero_division=0)
    np.testing.assert_allclose(report.precision, precision, atol=TOL)
    np.testing.assert_allclose(report.recall, recall, atol=TOL)
    np.testing.assert_allclose(report.f1, f1, atol=TOL)
    np.testing.assert_array_equal(report.support, support)
    assert abs(report.weighted_f1 - weighted) < TOL
    assert report.confusion.shape == (len(names), len(names))
    assert set(report.as_dict()) == set(names)
    assert "macro f1" in str(report) and names[-1] in str(report)


def test_empty_inputs_have_documented_values():
    empty = np.array([], dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(metrics.accuracy(empty, empty))
        assert math.isnan(metrics.macro_f1(empty, empty))
        assert math.isnan(metrics.matthews_corrcoef(empty, empty))
        assert metrics.confusion_matrix(empty, empty, num_classes=3).tolist() == [[0] * 3] * 3
        assert math.isnan(metrics.squad_exact_match([], []))
        assert math.isnan(metrics.squad_f1([], []))
        assert math.isnan(metrics.bleu([], []))
        assert math.isnan(metrics.chrf([], []))
        scores = metrics.entity_f1([], [])
    assert (scores.precision, scores.recall, scores.f1) == (0.0, 0.0, 0.0)


def test_classification_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        metrics.accuracy([0, 1], [0])
    with pytest.raises(TypeError, match="argmax"):
        metrics.accuracy([0, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="-100"):
        metrics.macro_f1([0, -100], [0, 1])
    with pytest.raises(ValueError, match="num_classes=2"):
        metrics.confusion_matrix([0, 2], [0, 1], num_classes=2)
    with pytest.raises(ValueError, match="1-D"):
        metrics.accuracy(np.zeros((2, 2), int), np.zeros((2, 2), int))


# ----------------------------------------------------------------------------- label balance


def test_label_balance_report_and_warning():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    with pytest.warns(metrics.ImbalancedDataWarning, match="'neg'"):
        report = metrics.label_balance(labels, ["neg", "neu", "pos"])
    assert report.counts == {"neg": 6, "neu": 3, "pos": 1}
    assert report.fractions["neu"] == pytest.approx(0.3, abs=TOL)
    assert report.majority_class == "neg"
    assert report.majority_baseline_accuracy == pytest.approx(0.6, abs=TOL)
    assert report.imbalance_ratio == pytest.approx(6.0, abs=TOL)
    assert report.is_imbalanced
    assert "0.6000" in str(report)


def test_label_balance_balanced_absent_class_and_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        balanced = metrics.label_balance([0, 1, 1, 0, -100], ["a", "b"])  # -100 skipped
    assert not balanced.is_imbalanced and balanced.imbalance_ratio == 1.0
    with pytest.warns(metrics.ImbalancedDataWarning):
        absent = metrics.label_balance([0, 0], ["a", "b"])
    assert absent.imbalance_ratio == math.inf and absent.counts["b"] == 0
    with pytest.raises(ValueError, match="empty"):
        metrics.label_balance([], ["a", "b"])
    with pytest.raises(ValueError, match="label 2 is outside"):
        metrics.label_balance([0, 2], ["a", "b"])


# ----------------------------------------------------------------------------- entity F1

SEQEVAL_CASES = {
    "seqeval_doc": (
        [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]],
        [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]],
    ),
    "i_after_o_and_type_switch": (
        [["I-PER", "I-PER", "I-LOC", "O", "B-LOC", "B-LOC"]],
        [["B-PER", "I-PER", "B-LOC", "O", "B-LOC", "I-LOC"]],
    ),
    "entity_at_sentence_end_and_start": (
        [["O", "B-ORG"], ["I-ORG", "O"], ["B-geo-loc", "I-geo-loc"]],
        [["O", "B-ORG"], ["B-ORG", "O"], ["B-geo-loc", "I-geo-loc"]],
    ),
    "no_predicted_entities": ([["B-PER", "O"], ["O", "B-LOC"]], [["O", "O"], ["O", "O"]]),
    "no_entities_at_all": ([["O", "O"]], [["O", "O"]]),
    "only_false_positives": ([["O", "O", "O"]], [["B-PER", "I-LOC", "O"]]),
}


@pytest.mark.parametrize("gold,pred", list(SEQEVAL_CASES.values()), ids=list(SEQEVAL_CASES))
def test_entity_f1_matches_seqeval(gold, pred):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = metrics.entity_f1(gold, pred)
    kwargs = dict(zero_division=0)
    with warnings.catch_warnings():  # seqeval's report warns when there are no entities
        warnings.simplefilter("ignore")
        reference = seqeval.classification_report(gold, pred, output_dict=True, **kwargs)
    assert abs(scores.precision - seqeval.precision_score(gold, pred, **kwargs)) < TOL
    assert abs(scores.recall - seqeval.recall_score(gold, pred, **kwargs)) < TOL
    assert abs(scores.f1 - seqeval.f1_score(gold, pred, **kwargs)) < TOL
    for entity_type, row in scores.per_type.items():
        assert abs(row["f1"] - reference[entity_type]["f1-score"]) < TOL
        assert row["support"] == reference[entity_type]["support"]


def test_entity_f1_random_tags_match_seqeval():
    rng = np.random.default_rng(1)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-geo-loc", "I-geo-loc"]
    lengths = rng.integers(1, 12, 40)
    gold = [[tags[i] for i in rng.integers(0, len(tags), n)] for n in lengths]
    pred = [[tags[i] for i in rng.integers(0, len(tags), n)] for n in lengths]
    scores = metrics.entity_f1(gold, pred)
    assert abs(scores.f1 - seqeval.f1_score(gold, pred)) < TOL
    assert metrics.get_entities(gold[0]) == [
        tuple(e) for e in seqeval.sequence_labeling.get_entities(gold[0])
    ]


def test_entity_f1_from_ids_and_bad_tags():
    names = ["O", "B-PER", "I-PER"]
    scores = metrics.entity_f1([[1, 2, 0]], [[1, 2, 0]], label_names=names)
    assert scores.f1 == 1.0 and scores.per_type["PER"]["support"] == 1
    with pytest.raises(ValueError, match="not a BIO tag"):
        metrics.entity_f1([["B_PER"]], [["O"]])
    with pytest.raises(ValueError, match="outside the 3 label names"):
        metrics.entity_f1([[3]], [[0]], label_names=names)
    with pytest.raises(ValueError, match="sentence 0"):
        metrics.entity_f1([["O", "O"]], [["O"]])


# ----------------------------------------------------------------------------- SQuAD


def test_squad_normalisation_and_hand_computed_scores():
    assert metrics.normalize_answer("  The Eiffel-Tower, in PARIS!  ") == "eiffeltower in paris"
    assert metrics.normalize_answer("an apple a day") == "apple day"
    assert metrics.normalize_answer("theatre") == "theatre"  # articles only as whole words
    predictions = ["the Eiffel Tower", "in Paris France", "1889", ""]
    references = [["Eiffel Tower", "tower"], "Paris", ["1887", "in 1889"], ""]
    # EM: 1 (normalised match), 0, 0 ("1889" vs "in 1889"), 1 (empty vs empty) -> 2/4
    assert metrics.squad_exact_match(predictions, references) == pytest.approx(0.5, abs=TOL)
    # F1 per question: 1; P=1/3 R=1 -> 0.5; vs "in 1889": P=1 R=1/2 -> 2/3; 1 -> mean
    expected = (1 + 0.5 + 2 / 3 + 1) / 4
    assert metrics.squad_f1(predictions, references) == pytest.approx(expected, abs=TOL)
    assert metrics.squad_f1([""], ["Paris"]) == 0.0
    assert metrics.squad_f1(["Paris"], [""]) == 0.0
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metrics.squad_f1(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no gold answers"):
        metrics.squad_exact_match(["a"], [[]])


# ----------------------------------------------------------------------------- BLEU / chrF


def test_bleu_and_chrf_match_sacrebleu():
    predictions = ["the cat sat on the mat", "a dog barked loudly at night", "hello world"]
    single = ["the cat is on the mat", "the dog barked at night", "hello there world"]
    second = ["a cat sat on a mat", "a dog was barking at night", "hello world"]
    assert metrics.bleu(predictions, single) == pytest.approx(
        sacrebleu.corpus_bleu(predictions, [single]).score, abs=1e-9)
    assert metrics.chrf(predictions, single) == pytest.approx(
        sacrebleu.corpus_chrf(predictions, [single]).score, abs=1e-9)
    multi = [[a, b] for a, b in zip(single, second)]
    assert metrics.bleu(predictions, multi) == pytest.approx(
        sacrebleu.corpus_bleu(predictions, [single, second]).score, abs=1e-9)
    assert metrics.chrf(predictions, multi, word_order=2) == pytest.approx(
        sacrebleu.corpus_chrf(predictions, [single, second], word_order=2).score, abs=1e-9)
    assert metrics.bleu([""], ["hello"]) == 0.0
    with pytest.raises(ValueError, match="same number of references"):
        metrics.bleu(["a", "b"], [["a"], ["b", "c"]])
