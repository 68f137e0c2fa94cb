"""Gradient accumulation with padding rows (issue #13, item 2): micro-batches are weighted by their
real rows, so ``accumulate=k`` equals one step on the whole batch for any padding pattern."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from jaxtune.tasks import IGNORE_INDEX, get_task
from jaxtune.train import _split_micro_batches

F32 = jnp.float32
VOCAB, LENGTH, LABELS, ROWS, K = 11, 6, 3, 16, 4


class TinyEncoder(nn.Module):
    """Per-token logits (token classification) or pooled ones (sequence classification)."""

    per_token: bool

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True):
        x = nn.Embed(VOCAB, 8)(input_ids)
        x = jnp.tanh(nn.Dense(8)(x))
        if not self.per_token:
            x = x.mean(axis=1)
        return nn.Dense(LABELS)(x)


def _batch(example_mask, per_token, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    batch = {"input_ids": jax.random.randint(k1, (ROWS, LENGTH), 0, VOCAB),
             "example_mask": jnp.asarray(example_mask, bool)}
    if per_token:
        labels = jax.random.randint(k2, (ROWS, LENGTH), 0, LABELS)
        ignored = jax.random.bernoulli(k3, 0.4, (ROWS, LENGTH))
        labels = jnp.where(ignored, IGNORE_INDEX, labels)
        batch["labels"] = labels.at[3].set(IGNORE_INDEX)  # a real row without any labelled token
    else:
        batch["labels"] = jax.random.randint(k2, (ROWS,), 0, LABELS)
    return batch


ALL_REAL = np.ones(ROWS, bool)
LAST_PADDED = np.arange(ROWS) < 11  # the runner's last batch of a bucket: 5 padding rows at the end
# Micro-batch 1 (rows 1, 5, 9, 13) is all padding; so is the contiguous block 4..7 (a quarter taken in order).
MICRO_BATCH_1_PADDING = ~np.isin(np.arange(ROWS), [1, 4, 5, 6, 7, 9, 13])
SCATTERED = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1], bool)
PATTERNS = {"all_real": ALL_REAL, "last_padded": LAST_PADDED, "micro_batch_all_padding": MICRO_BATCH_1_PADDING,
            "scattered": SCATTERED}


def _one_and_accumulated(loss_fn, params, batch, tx=None):
    tx = tx or optax.sgd(1.0)
    one = jt.make_train_step(loss_fn, tx, compute_dtype=F32, donate=False)
    acc = jt.make_train_step(loss_fn, tx, compute_dtype=F32, donate=False, accumulate=K)
    state = jt.TrainState.create(params, tx)
    return one(state, batch), acc(state, batch)


def _assert_same_step(one, acc):
    """Loss, gradient norm and metrics to 1e-6 relative; the SGD(lr=1) step's params, i.e. the
    gradients, to 1e-6 absolute (fp32)."""
    (s1, m1), (sk, mk) = one, acc
    assert set(m1) == set(mk) and "weight" not in m1
    for key in m1:
        np.testing.assert_allclose(float(mk[key]), float(m1[key]), rtol=1e-6, atol=1e-7, err_msg=key)
    for a, b in zip(jax.tree.leaves(sk.params), jax.tree.leaves(s1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("task_name", ["sequence_classification", "token_classification"])
def test_accumulated_task_loss_equals_one_step_on_the_whole_batch(task_name, pattern):
    task = get_task(task_name)
    model = TinyEncoder(per_token=task_name == "token_classification")
    batch = _batch(PATTERNS[pattern], model.per_token)
    params = model.init(jax.random.key(1), batch["input_ids"])["params"]
    one, acc = _one_and_accumulated(task.loss_fn(model), params, batch)
    _assert_same_step(one, acc)
    assert float(one[1]["loss"]) > 0.1


def _masked_loss_with_accuracy(params, batch, *, rng, model_state):
    """A user loss_fn: weighted means over real rows, the weight reported as metrics["weight"]."""
    logits = TinyEncoder(per_token=False).apply({"params": params}, batch["input_ids"])
    w = batch["example_mask"].astype(F32)
    per_row = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    weight = jnp.sum(w)
    mean = lambda x: jnp.sum(x * w) / jnp.maximum(weight, 1.0)
    accuracy = mean((logits.argmax(-1) == batch["labels"]).astype(F32))
    return mean(per_row), ({"accuracy": accuracy, "weight": weight}, model_state)


@pytest.mark.parametrize("pattern", ["last_padded", "micro_batch_all_padding"])
def test_metrics_of_micro_batches_are_weighted_like_the_loss(pattern):
    model = TinyEncoder(per_token=False)
    batch = _batch(PATTERNS[pattern], per_token=False, seed=3)
    params = model.init(jax.random.key(1), batch["input_ids"])["params"]
    tx = jt.make_optimizer(params, [(r".*", jt.settings())], optax.adamw, 1e-2, weight_decay=0.1)
    one, acc = _one_and_accumulated(_masked_loss_with_accuracy, params, batch, tx)
    _assert_same_step(one, acc)
    rows = PATTERNS[pattern]
    logits = model.apply({"params": params}, batch["input_ids"])
    expected = np.mean(np.asarray(logits.argmax(-1) == batch["labels"])[rows])
    np.testing.assert_allclose(float(acc[1]["accuracy"]), expected, rtol=1e-6)


def test_all_padding_batch_is_a_zero_step_and_a_non_scalar_weight_is_an_error():
    model = TinyEncoder(per_token=False)
    batch = _batch(np.zeros(ROWS, bool), per_token=False)
    params = model.init(jax.random.key(1), batch["input_ids"])["params"]
    (s1, m1), (sk, mk) = _one_and_accumulated(_masked_loss_with_accuracy, params, batch)
    assert float(mk["loss"]) == 0.0 == float(m1["loss"]) and float(mk["grad_norm"]) == 0.0
    for a, b in zip(jax.tree.leaves(sk.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def per_row_weight(params, batch, *, rng, model_state):
        loss, (metrics, state) = _masked_loss_with_accuracy(params, batch, rng=rng, model_state=model_state)
        return loss, ({**metrics, "weight": batch["example_mask"].astype(F32)}, state)

    with pytest.raises(ValueError, match=r"metrics\['weight'\] of shape \(16,\)"):
        _one_and_accumulated(per_row_weight, params, batch)


def test_micro_batches_are_taken_by_stride():
    batch = {"x": jnp.arange(12).reshape(12, 1)}
    micro = _split_micro_batches(batch, 3)["x"][..., 0]
    np.testing.assert_array_equal(np.asarray(micro), [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]])
