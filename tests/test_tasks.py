"""Every task: a batch from a tiny local data set through model, loss, one train step and metrics."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from jaxtune import tasks
from jaxtune.models import bert, resnet, t5

F32 = jnp.float32
TINY_BERT = bert.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=64)


def _model(family, config, head, num_labels=None):
    model = family.build(config, head, num_labels, F32)
    variables = model.init(jax.random.key(0), *family.example_inputs(config, head))
    return model, variables


def _text_batch(n=4, length=10, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 99, (n, length)).astype(np.int32)
    mask = np.ones((n, length), np.int32)
    mask[0, 6:] = 0  # a padded example
    ids[0, 6:] = 0
    types = np.zeros((n, length), np.int32)
    types[:, 5:] = 1  # sentence pairs
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _train_once(task, model, variables, batch, steps=3):
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    tx = jt.make_optimizer(params, [(r".*", jt.settings())], optax.adam, 1e-2)
    state = jt.TrainState.create(params, tx, model_state=model_state)
    step = jt.make_train_step(task.loss_fn(model), tx, compute_dtype=F32, donate=False)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    out = jt.make_eval_step(task.eval_fn(model), compute_dtype=F32)(state, batch)
    return state, losses, out


@pytest.mark.parametrize("name", ["sequence_classification", "pair_classification"])
def test_sequence_and_pair_classification(name):
    task = tasks.get_task(name)
    model, variables = _model(bert.FAMILY, TINY_BERT, task.head, num_labels=3)
    batch = dict(_text_batch(), labels=np.array([0, 1, 2, 1], np.int32), example_mask=np.array([1, 1, 1, 0], bool))
    state, losses, out = _train_once(task, model, variables, batch)
    assert losses[-1] < losses[0]
    assert float(out["weight"]) == 3.0  # the padding row does not count
    preds = np.asarray(out["predictions"])
    assert preds.shape == (4,)
    scores = task.score(preds[:3], task.references(batch)[:3], ["neg", "neu", "pos"])
    assert set(scores) == {"accuracy", "macro_f1", "mcc"} and 0.0 <= scores["accuracy"] <= 1.0


def test_padding_rows_do_not_change_the_loss():
    task = tasks.get_task("sequence_classification")
    model, variables = _model(bert.FAMILY, TINY_BERT, task.head, num_labels=3)
    batch = dict(_text_batch(), labels=np.array([0, 1, 2, 1], np.int32))
    loss_fn = task.loss_fn(model)
    full, _ = loss_fn(variables["params"], {k: v[:3] for k, v in batch.items()}, rng=None, model_state={})
    padded = dict(batch, labels=np.array([0, 1, 2, 0], np.int32), example_mask=np.array([1, 1, 1, 0], bool))
    masked, _ = loss_fn(variables["params"], padded, rng=None, model_state={})
    np.testing.assert_allclose(float(masked), float(full), rtol=1e-6)  # fp32


def test_token_classification_ignores_minus_100():
    task = tasks.get_task("token_classification")
    model, variables = _model(bert.FAMILY, TINY_BERT, task.head, num_labels=3)
    batch = _text_batch()
    labels = np.random.default_rng(1).integers(0, 3, batch["input_ids"].shape).astype(np.int32)
    labels[:, 0] = -100
    labels[0, 6:] = -100
    batch["labels"] = labels
    state, losses, out = _train_once(task, model, variables, batch)
    assert losses[-1] < losses[0]
    # The loss is the per-sentence mean cross-entropy over labelled tokens only, averaged over sentences.
    loss, _ = task.loss_fn(model)(state.params, batch, rng=None, model_state={})
    logits = np.asarray(model.apply({"params": state.params}, batch["input_ids"], batch["attention_mask"],
                                    batch["token_type_ids"]), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per_sentence = [np.mean([-logp[i, t, labels[i, t]] for t in range(labels.shape[1]) if labels[i, t] != -100])
                    for i in range(labels.shape[0])]
    np.testing.assert_allclose(float(loss), np.mean(per_sentence), rtol=1e-5)  # fp32 vs fp64 reference
    scores = task.score(np.asarray(out["predictions"]), task.references(batch), ["O", "B-LOC", "I-LOC"])
    assert {"token_accuracy", "entity_f1"} <= set(scores)


def test_question_answering_spans():
    task = tasks.get_task("question_answering")
    model, variables = _model(bert.FAMILY, TINY_BERT, task.head)
    batch = dict(_text_batch(), start_positions=np.array([2, 3, 5, 7], np.int32), end_positions=np.array([4, 3, 8, 9], np.int32))
    state, losses, out = _train_once(task, model, variables, batch, steps=20)
    assert losses[-1] < 0.5 * losses[0]
    spans = np.asarray(out["predictions"])
    assert spans.shape == (4, 2) and np.all(spans[:, 0] <= spans[:, 1])
    assert task.score(spans, task.references(batch))["span_exact"] >= 0.75  # memorised after 20 steps


def test_text_to_text():
    task = tasks.get_task("text_to_text")
    cfg = t5.T5Config(vocab_size=99, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)
    model, variables = _model(t5.FAMILY, cfg, task.head)
    labels = np.array([[5, 6, 7, 1], [8, 9, 1, -100]], np.int32)
    batch = {"input_ids": np.array([[10, 11, 12, 1], [13, 14, 1, 0]], np.int32),
             "attention_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int32), "labels": labels}
    state, losses, out = _train_once(task, model, variables, batch, steps=5)
    assert losses[-1] < losses[0]
    assert np.asarray(out["predictions"]).shape == labels.shape
    assert 0.0 <= task.score(out["predictions"], labels)["token_accuracy"] <= 1.0


def test_image_classification_updates_batch_stats():
    task = tasks.get_task("image_classification")
    cfg = resnet.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=4)
    model, variables = _model(resnet.FAMILY, cfg, task.head, num_labels=4)
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    batch = {"images": images, "labels": np.array([0, 1, 2, 3], np.int32)}
    state, losses, out = _train_once(task, model, variables, batch)
    assert losses[-1] < losses[0]
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(state.model_state["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    assert task.score(out["predictions"], batch["labels"])["accuracy"] >= 0.0


def test_registry_and_missing_fields():
    assert set(tasks.task_names()) == {"sequence_classification", "pair_classification", "token_classification",
                                       "question_answering", "text_to_text", "image_classification"}
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        tasks.get_task("nope")
    task = tasks.get_task("question_answering")
    with pytest.raises(KeyError, match=r"start_positions"):
        task.check_batch({"input_ids": np.zeros((1, 2))})
