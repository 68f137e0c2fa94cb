"""BERT in Flax vs transformers (PyTorch, CPU, fp32): every head, padding, sentence pairs, round
trips, and the real all-MiniLM-L6-v2 weights. Tolerance (float32, max abs diff): 1e-5 for the heads
(measured <= 3.6e-6), 5e-6 for the MiniLM sentence embeddings (measured 8.9e-7); the README quotes these."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _hf_fixtures import padded_batch, save_torch_model, tiny_bert_config, torch_outputs
from jaxtune import hub
from jaxtune.models import bert
from jaxtune.models.family import flatten_paths

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ATOL = 1e-5
MINILM_ATOL = 5e-6

# task -> (transformers class, extra config, reference output names in the order jaxtune returns them)
HEADS = {
    None: ("BertModel", {}, ("last_hidden_state", "pooler_output")),
    "sequence_classification": ("BertForSequenceClassification", {"num_labels": 3}, ("logits",)),
    "token_classification": ("BertForTokenClassification", {"num_labels": 5}, ("logits",)),
    "question_answering": ("BertForQuestionAnswering", {}, ("start_logits", "end_logits")),
    "masked_lm": ("BertForMaskedLM", {}, ("logits",)),
}


def _apply(model, variables, *args, **kwargs):
    """Runs ``model.apply`` jitted (one compile is much faster than op-by-op dispatch on CPU)."""
    return jax.jit(model.apply, static_argnames="deterministic")(variables, *args, **kwargs)


def _random_variables(model, config, task, seed=0):
    """Variables of ``model`` drawn with numpy (std 0.2; no jitted init to compile)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), *bert.example_inputs(config, task))
    return jax.tree.map(lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype), shapes)


def _as_tuple(out):
    return tuple(out) if isinstance(out, tuple) else (out,)


def _max_diff(flax_out, torch_out: dict, names) -> float:
    got = _as_tuple(flax_out)
    assert len(got) == len(names)
    return max(float(np.max(np.abs(np.asarray(a) - torch_out[n]))) for a, n in zip(got, names, strict=True))


@pytest.mark.parametrize("task", list(HEADS), ids=lambda t: t or "bare")
def test_head_matches_transformers_with_padding(tmp_path, task):
    class_name, extra, names = HEADS[task]
    reference = save_torch_model(getattr(transformers, class_name), tiny_bert_config(**extra), tmp_path)
    model, variables, report = hub.from_pretrained(tmp_path, task=task, return_report=True)
    assert report.initialized == () and report.resized == ()

    # Sentence pairs: tokens from position 5 on are the second sentence (token type 1). The
    # fixture's weights are large (std 0.2), so ignoring token types would be far off 1e-4.
    batch = padded_batch(99, lengths=(10, 7, 4), pair_at=5)
    out = _apply(model, variables, *(jnp.asarray(x) for x in batch))
    assert _max_diff(out, torch_outputs(reference, *batch), names) <= ATOL


@pytest.mark.parametrize("task", ["sequence_classification", "token_classification",
                                  "question_answering", "masked_lm", None], ids=lambda t: t or "bare")
def test_save_pretrained_round_trip_through_transformers(tmp_path, task):
    class_name, extra, names = HEADS[task]
    config = bert.BertConfig.from_hf(tiny_bert_config(**extra).to_dict())
    model = bert.build(config, task)
    variables = _random_variables(model, config, task)

    hub.save_pretrained(variables, model.config, tmp_path, task=task)
    loaded = getattr(transformers, class_name).from_pretrained(tmp_path).eval()
    batch = padded_batch(99, pair_at=4)
    out = _apply(model, variables, *(jnp.asarray(x) for x in batch))
    assert _max_diff(out, torch_outputs(loaded, *batch), names) <= ATOL

    # ... and back into jaxtune: identical variables.
    _, again = hub.from_pretrained(tmp_path, task=task)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), variables, again))


def test_minilm_sentence_embeddings_match_pytorch():
    directory = hub.minilm_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    sentences = ["A man is eating food.", "The new movie is awesome and everyone loved it!",
                 "Fine-tuning in JAX."]
    encoded = tokenizer(sentences, padding=True, return_tensors="np")
    batch = tuple(encoded[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids"))

    model, variables, report = hub.from_pretrained(directory, return_report=True)
    assert report.initialized == ()
    assert report.ignored == ("embeddings.position_ids",)   # a buffer in the old checkpoint
    out = _apply(model, variables, *(jnp.asarray(x) for x in batch))
    embeddings = np.asarray(bert.mean_pool(out.last_hidden_state, jnp.asarray(batch[1])))

    reference = transformers.BertModel.from_pretrained(directory).eval()
    hidden = torch.from_numpy(torch_outputs(reference, *batch)["last_hidden_state"])
    mask = torch.from_numpy(batch[1])[..., None].float()
    expected = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy()

    assert embeddings.shape == (3, 384)
    assert np.max(np.abs(embeddings - expected)) <= MINILM_ATOL
    # Sanity: the two unrelated sentences are not near-duplicates.
    unit = embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)
    assert unit[0] @ unit[1] < 0.5


def test_mean_pool_ignores_padding():
    hidden = jnp.arange(12.0).reshape(1, 4, 3)
    pooled = bert.mean_pool(hidden, jnp.array([[1, 1, 0, 0]]))
    np.testing.assert_allclose(pooled, [[1.5, 2.5, 3.5]])


def _one_layer(**overrides) -> bert.BertConfig:
    return bert.BertConfig(**{**dict(vocab_size=99, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=4, intermediate_size=37), **overrides})


def _dropout_key(seed: int) -> jax.Array:
    """An "rbg" key: the same dropout code, but it compiles several times faster than threefry on CPU."""
    return jax.random.key(seed, impl="rbg")


def test_explicit_attention_path_equals_fused_kernel():
    """Training with attention dropout uses explicit softmax; with a ~0 rate it equals the kernel."""
    config = _one_layer(hidden_dropout_prob=0.0, attention_probs_dropout_prob=1e-9)
    model = bert.build(config, "token_classification", num_labels=3)
    variables = _random_variables(model, config, "token_classification")
    input_ids, mask, _ = (jnp.asarray(x) for x in padded_batch(99))
    fused = _apply(model, variables, input_ids, mask)
    explicit = _apply(model, variables, input_ids, mask, deterministic=False,
                      rngs={"dropout": _dropout_key(1)})
    assert float(jnp.max(jnp.abs(fused - explicit))) <= 1e-5     # float32


def test_dropout_is_active_only_when_not_deterministic():
    config = _one_layer()
    model = bert.build(config, "token_classification", num_labels=3)
    variables = _random_variables(model, config, "token_classification")
    input_ids, mask, _ = (jnp.asarray(x) for x in padded_batch(99))
    eval_out = _apply(model, variables, input_ids, mask)
    a, b = (_apply(model, variables, input_ids, mask, deterministic=False,
                   rngs={"dropout": _dropout_key(k)}) for k in (1, 2))
    assert not jnp.allclose(a, b) and not jnp.allclose(a, eval_out)


def test_bf16_compute_keeps_float32_params():
    config = _one_layer()
    model = bert.build(config, "masked_lm", dtype=jnp.bfloat16)
    variables = _random_variables(model, config, "masked_lm")
    assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert _apply(model, variables, jnp.ones((1, 4), jnp.int32)).dtype == jnp.bfloat16


def test_layer_ids_cover_every_parameter():
    config = _one_layer(num_hidden_layers=2)
    model = bert.build(config, "sequence_classification")
    shapes = jax.eval_shape(model.init, jax.random.key(0), *bert.example_inputs(config))
    ids = {path: model.layer_ids(path) for path in flatten_paths(shapes["params"])}
    assert ids["bert/embeddings/word_embeddings/embedding"] == 0
    assert ids["bert/encoder/layer_0/attention/self/query/kernel"] == 1
    assert ids["bert/encoder/layer_1/output/LayerNorm/scale"] == 2
    assert ids["bert/pooler/dense/kernel"] == ids["classifier/bias"] == 3
    assert bert.layer_ids("cls/predictions/bias", 12) == 13
    with pytest.raises(KeyError, match="unknown parameter path 'encoder/layer_0/x'"):
        bert.layer_ids("encoder/layer_0/x", 2)
    with pytest.raises(KeyError, match="layer 5 but the model has 2 layers"):
        bert.layer_ids("bert/encoder/layer_5/output/dense/bias", 2)


def test_default_rules_skip_decay_on_biases_and_norms():
    import re

    rules = bert.default_rules()
    def first(path):
        return next(s for pattern, s in rules if re.fullmatch(pattern, path))
    assert first("bert/encoder/layer_0/output/dense/bias").weight_decay == 0.0
    assert first("bert/embeddings/LayerNorm/scale").weight_decay == 0.0
    assert first("cls/predictions/bias").weight_decay == 0.0
    assert first("bert/encoder/layer_0/output/dense/kernel").weight_decay is None
    assert rules[-1][0] == ".*"


def test_config_refuses_unsupported_features():
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        bert.BertConfig.from_hf({"position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="hidden_act='mish'"):
        bert.BertConfig.from_hf({"hidden_act": "mish"})
    with pytest.raises(ValueError, match="num_labels must be 2"):
        bert.build(bert.BertConfig(), "question_answering", num_labels=3)


def test_checkpoint_names_with_and_without_bert_prefix_load_the_same():
    config = _one_layer()
    variables = _random_variables(bert.build(config), config, None)
    bare = bert.to_hf(config, variables, None)                       # embeddings.word_embeddings...
    prefixed = bert.to_hf(config, variables, "sequence_classification")   # bert.embeddings...
    assert "embeddings.word_embeddings.weight" in bare
    assert "bert.embeddings.word_embeddings.weight" in prefixed
    a, used_a = bert.to_flax(config, bare)
    b, used_b = bert.to_flax(config, prefixed)
    assert used_a == set(bare) and used_b == set(prefixed)
    assert jax.tree.all(jax.tree.map(np.array_equal, a, b))
