"""SQuAD EM/F1 from a QA model's windows (jaxtune.qa): answers decoded over all windows of each question,
checked by hand on a stub model whose logits point at known tokens."""
import jax.numpy as jnp
import pytest

import jaxtune as jt
from jaxtune import qa
from jaxtune.data import QASplit, text


class _PointingModel:
    """Start/end logits = the weight of each token id in ``variables`` (0 elsewhere): a QA model whose
    answers are known in advance."""

    def apply(self, variables, ids, mask, types):
        start = sum(w * (ids == token) for token, w in variables["start"])
        end = sum(w * (ids == token) for token, w in variables["end"])
        return jnp.asarray(start, jnp.float32), jnp.asarray(end, jnp.float32)


@pytest.fixture(scope="module")
def tokenizer():
    return text.load_tokenizer(str(jt.minilm_path()))


def test_answers_decoded_over_all_windows_against_every_gold_answer(tokenizer):
    contexts = ["word " * 30 + "The tower is 300 metres tall.",     # several windows; the answer in the last
                "Paris lies on the river in France.",
                "The car is dark blue and fast."]
    split = QASplit(ids=("q1", "q2", "q3"), titles=("a", "b", "c"),
                    questions=("How tall is the tower?", "What does Paris lie on?", "What colour is the car?"),
                    contexts=tuple(contexts),
                    answers=(({"text": "300 metres", "answer_start": 163}, {"text": "300 m", "answer_start": 163}),
                             ({"text": "river", "answer_start": 18},),
                             ({"text": "dark blue", "answer_start": 11},)))
    features = text.prepare_qa_features(tokenizer, split.questions, split.contexts, max_length=24, doc_stride=8)
    assert features.num_split == 1 and (features.example_index == 0).sum() > 1
    ids = tokenizer.convert_tokens_to_ids
    # starts: "300" 3 > "the" 2 (q1 picks 300), "blue" 4 (q3: beats "the car ..."); ends: "metres", "river", "fast"
    variables = {"start": [(ids("300"), 3.0), (ids("the"), 2.0), (ids("blue"), 4.0)],
                 "end": [(ids("metres"), 3.0), (ids("river"), 2.0), (ids("fast"), 1.0)]}
    answers = qa.qa_answers(_PointingModel(), variables, features, split.contexts, pad_token_id=0, batch_size=4)
    assert answers == ["300 metres", "the river", "blue and fast"]
    scores = qa.squad_scores(answers, split)
    # q1 exact; q2 exact after the official normalisation drops "the"; q3: F1 of {blue} in 3 vs 2 words = 0.4
    assert scores["exact_match"] == pytest.approx(2 / 3, abs=1e-12)
    assert scores["f1"] == pytest.approx((1 + 1 + 0.4) / 3, abs=1e-12)


def test_run_scores_are_empty_for_data_that_is_not_qa():
    assert qa.qa_run_scores(_PointingModel(), {}, jt.PreparedData("sequence_classification", [], [], [], ("a",), None,
                                                                  0, ""), "test") == {}
