"""Scanned BERT (``scan_layers=True``): parity with transformers at test_bert's tolerances (float32,
max abs diff 1e-5 for the heads, 5e-6 for the MiniLM sentence embeddings), per-layer checkpoint names
on import and export, gradients equal to the unrolled model's (float32, 1e-5), remat options, and the
frozen bottom segment, which must take no weight gradient (XLA's FLOP count of the compiled step)."""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from _hf_fixtures import padded_batch, save_torch_model, tiny_bert_config, torch_outputs
from jaxtune import hub
from jaxtune.models import bert
from jaxtune.models.family import flatten_paths, unflatten_paths
from jaxtune.models.stacking import stack_layers
from jaxtune.tasks import get_task
from test_bert import ATOL, HEADS, MINILM_ATOL, _apply, _max_diff

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

GRAD_ATOL = 1e-5
STACKED = "bert/encoder/layer"


def _tiny(layers: int = 3, **overrides) -> bert.BertConfig:
    """A dropout-free tiny BERT (steps are then deterministic)."""
    return bert.BertConfig(**{**dict(vocab_size=99, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0), **overrides})


def _unrolled_and_stacked(config: bert.BertConfig, task: str = "sequence_classification", seed: int = 0):
    """Random unrolled params (numpy, std 0.2) and the same numbers stacked for the scanned model."""
    model = bert.build(config, task, num_labels=3)
    shapes = jax.eval_shape(model.init, jax.random.key(0), *bert.example_inputs(config))["params"]
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
    flat = stack_layers(flatten_paths(params), "bert/encoder/layer_{i}", STACKED, config.num_hidden_layers)
    return params, unflatten_paths(flat)


def _batch(n: int = 4, seq: int = 8, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.ones((n, seq), np.int32)
    mask[0, 5:] = 0
    return {"input_ids": jnp.asarray(rng.integers(1, 99, (n, seq)), jnp.int32), "attention_mask": jnp.asarray(mask),
            "token_type_ids": jnp.zeros((n, seq), jnp.int32), "labels": jnp.asarray(rng.integers(0, 3, n), jnp.int32)}


# The bare model is test_scanned_minilm_...'s; question answering reads the encoder as token classification does.
@pytest.mark.parametrize("task,remat", [("sequence_classification", "none"), ("token_classification", "dots_saveable"),
                                        ("masked_lm", "full")])
def test_scanned_head_matches_transformers(tmp_path, task, remat):
    class_name, extra, names = HEADS[task]
    reference = save_torch_model(getattr(transformers, class_name), tiny_bert_config(**extra), tmp_path)
    model, variables = hub.from_pretrained(tmp_path, task=task, scan_layers=True, remat=remat)
    assert model.config.scan_layers and model.config.remat == remat
    paths = flatten_paths(variables["params"])
    assert paths[f"{STACKED}/attention/self/query/kernel"].shape == (2, 32, 32)
    assert not any("layer_0" in p for p in paths)
    batch = padded_batch(99, lengths=(10, 7, 4), pair_at=5)
    out = _apply(model, variables, *(jnp.asarray(x) for x in batch))
    assert _max_diff(out, torch_outputs(reference, *batch), names) <= ATOL


def test_scanned_export_has_the_per_layer_names_and_values(tmp_path):
    source, scanned_dir = tmp_path / "source", tmp_path / "scanned"
    save_torch_model(transformers.BertForSequenceClassification, tiny_bert_config(num_labels=3), source)
    model, variables = hub.from_pretrained(source, task="sequence_classification", scan_layers=True)
    hub.save_pretrained(variables, model.config, scanned_dir, task="sequence_classification")
    written, original = hub.read_weights(scanned_dir), hub.read_weights(source)
    assert set(written) == set(original)
    assert all(np.array_equal(written[name], original[name]) for name in original)
    config = json.loads((scanned_dir / "config.json").read_text())
    assert "scan_layers" not in config and "remat" not in config   # jaxtune's own fields stay out of config.json
    _, unrolled = hub.from_pretrained(scanned_dir, task="sequence_classification")
    stacked = flatten_paths(variables["params"])[f"{STACKED}/output/dense/kernel"]
    for i in range(2):
        np.testing.assert_array_equal(unrolled["params"]["bert"]["encoder"][f"layer_{i}"]["output"]["dense"]["kernel"],
                                      stacked[i])


def test_scanned_minilm_sentence_embeddings_match_pytorch():
    directory = hub.minilm_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    encoded = tokenizer(["A man is eating food.", "Fine-tuning in JAX, one scan over six layers."], padding=True,
                        return_tensors="np")
    batch = tuple(encoded[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids"))
    model, variables = hub.from_pretrained(directory, scan_layers=True)
    out = _apply(model, variables, *(jnp.asarray(x) for x in batch))
    embeddings = np.asarray(bert.mean_pool(out.last_hidden_state, jnp.asarray(batch[1])))
    reference = transformers.BertModel.from_pretrained(directory).eval()
    hidden = torch_outputs(reference, *batch)["last_hidden_state"]
    mask = batch[1][..., None].astype(np.float32)
    expected = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    assert np.max(np.abs(embeddings - expected)) <= MINILM_ATOL


def test_bad_scan_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="BertConfig.remat='most'.*'dots_saveable'"):
        _tiny(remat="most")
    save_torch_model(transformers.BertModel, tiny_bert_config(), tmp_path)
    with pytest.raises(jt.UserError, match="scan_layer=True, which is not a field of BertConfig"):
        hub.from_pretrained(tmp_path, scan_layer=True)
    with pytest.raises(jt.UserError, match="remat='most'"):
        hub.from_pretrained(tmp_path, scan_layers=True, remat="most")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(jt.UserError, match=r"into 3 layers: missing layer\(s\) \[2\].*scan_layers=False"):
        hub.from_pretrained(tmp_path, scan_layers=True)


def task_grads(task: str, model, params, batch):
    """The gradient of ``task``'s loss of ``model`` on ``batch`` (dropout key 0), jitted."""
    loss_fn = get_task(task).loss_fn(model)
    return jax.jit(jax.grad(lambda p: loss_fn(p, batch, rng=jax.random.key(0), model_state={})[0]))(params)


def test_scanned_gradients_equal_the_unrolled_ones_and_frozen_layers_get_none():
    config = _tiny()
    unrolled, stacked = _unrolled_and_stacked(config)
    batch = _batch()
    model = bert.build(config, "sequence_classification", 3)
    expected = flatten_paths(task_grads("sequence_classification", model, unrolled, batch))
    expected = stack_layers(expected, "bert/encoder/layer_{i}", STACKED, config.num_hidden_layers)
    # Layer 0 in a frozen scan of its own, layers 1 and 2 in a rematerialised scan (a loop of 2).
    model = bert.build(dataclasses.replace(config, scan_layers=True, remat="full"), "sequence_classification", 3)
    got = flatten_paths(task_grads("sequence_classification", model.clone(frozen_layers=1), stacked, batch))
    assert set(got) == set(expected)
    for path, g in got.items():
        want = np.array(expected[path])
        if path.startswith(STACKED):
            want[:1] = 0.0      # the frozen bottom layer takes no weight gradient
        np.testing.assert_allclose(g, want, atol=GRAD_ATOL, err_msg=path)


def test_dropout_differs_per_layer_and_per_key():
    config = _tiny(hidden_dropout_prob=0.3, scan_layers=True)
    _, params = _unrolled_and_stacked(config)
    model, batch = bert.build(config, "sequence_classification", 3), _batch()
    run = jax.jit(lambda key: model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                          deterministic=False, rngs={"dropout": jax.random.key(key)}))
    assert not np.allclose(run(1), run(2))
    np.testing.assert_array_equal(run(1), run(1))


# ---------------------------------------------------------------------------------------------
# Strategies per layer on the stacked layout.

@pytest.fixture(scope="module")
def scanned():
    """A 3-layer scanned BERT classifier, its stacked params (numpy) and a batch. The scan is unrolled
    (``scan_unroll=3``) so that XLA's cost analysis, which counts a loop's body once, counts every layer."""
    config = _tiny(scan_layers=True, scan_unroll=3)
    return bert.build(config, "sequence_classification", 3), _unrolled_and_stacked(config)[1], _batch()


def _query(tree):
    return np.asarray(tree["bert"]["encoder"]["layer"]["attention"]["self"]["query"]["kernel"])


def test_layer_ids_llrd_summary_stages_and_masks_are_per_layer(scanned):
    model, params, _ = scanned
    assert bert.layer_ids(f"{STACKED}/output/dense/kernel", 3).tolist() == [1, 2, 3]
    rules = bert.default_rules()
    mults = jt.lr_multipliers(params, rules, model.layer_ids, 0.5)
    assert _query(mults).shape == (3, 1, 1)
    np.testing.assert_allclose(_query(mults).ravel(), [0.5 ** 3, 0.5 ** 2, 0.5])   # ids 1..3, head 4
    assert "0.0625..1" in jt.summary(params, rules, layer_ids=model.layer_ids, layer_decay=0.5)
    stages = jt.unfreezing_stages(params, model.layer_ids, num_stages=5)     # ids 4, 3, 2, 1, 0
    assert [_query(s).tolist() for s in stages[:3]] == [[False] * 3, [False, False, True], [False, True, True]]
    mask = jt.freeze_below(params, model.layer_ids, 3)                        # embeddings, layers 0 and 1
    assert _query(mask).tolist() == [False, False, True] and mask["classifier"]["kernel"] is True
    assert mask["bert"]["embeddings"]["word_embeddings"]["embedding"] is False
    assert jt.frozen_bottom_layers(mask, model.layer_ids) == 2
    assert jt.with_frozen_layers(model, mask).frozen_layers == 2
    unrolled = bert.build(_tiny(), "sequence_classification", 3)              # no stacked leaf: as it is
    unrolled_mask = jt.freeze_below(_unrolled_and_stacked(_tiny())[0], unrolled.layer_ids, 3)
    assert unrolled_mask["bert"]["encoder"]["layer_1"]["output"]["dense"]["kernel"] is False
    assert jt.with_frozen_layers(unrolled, unrolled_mask) is unrolled


def _state_and_step(model, params, tx, **step_kwargs):
    state = jt.TrainState.create(jax.tree.map(jnp.asarray, params), tx)
    loss_fn = get_task("sequence_classification").loss_fn(model)
    return state, jt.make_train_step(loss_fn, tx, compute_dtype=jnp.float32, **step_kwargs)


def test_runtime_unfreezing_with_llrd_l2sp_and_averaging_compiles_once(scanned):
    model, params, batch = scanned
    rules = bert.default_rules()
    tx = optax.chain(jt.make_optimizer(params, rules, optax.adamw, 1e-2, layer_ids=model.layer_ids, layer_decay=0.8,
                                       runtime=True, l2_sp=0.01), jt.average_weights(0.5))
    state, step = _state_and_step(model, params, tx)
    for stage in jt.unfreezing_stages(params, model.layer_ids, num_stages=3):   # ids {4, 3}, {2, 1}, {0}
        state = state.replace(opt_state=jt.set_trainable(state.opt_state, stage))
        before = _query(jax.device_get(state.params))
        state, metrics = step(state, batch)
        moved = np.any(_query(jax.device_get(state.params)) != before, axis=(1, 2))
        assert moved.tolist() == _query(stage).tolist()
    assert np.isfinite(float(metrics["loss"])) and jt.compile_count(step) == 1
    averaged = jt.averaged_params(state.params, state.opt_state)
    assert _query(averaged).shape == (3, 16, 16)


def test_lora_on_stacked_kernels_trains_and_exports_per_layer(scanned, tmp_path):
    model, params, batch = scanned
    rules = [(r".*attention/self/(query|value)/kernel", jt.lora(rank=2, alpha=4)),
             (r"classifier/.*", jt.settings()), (r".*", jt.freeze())]
    adapters = jt.init_lora(params, rules, jax.random.key(0), layer_ids=model.layer_ids)
    factors = adapters["bert"]["encoder"]["layer"]["attention"]["self"]["query"]["kernel"]
    assert factors.lora_a.shape == (3, 16, 2) and factors.lora_b.shape == (3, 2, 16)
    tree = jt.LoraParams(params, adapters)
    assert "r=2 alpha=4" in jt.summary(tree, rules, layer_ids=model.layer_ids, layer_decay=0.8)
    tx = jt.make_optimizer(tree, rules, optax.adamw, 1e-2, layer_ids=model.layer_ids, layer_decay=0.8)
    state, step = _state_and_step(model, tree, tx, trainable=jt.trainable_mask(tree, rules))
    state, _ = step(state, batch)
    trained = state.params.adapters["bert"]["encoder"]["layer"]["attention"]["self"]["query"]["kernel"]
    assert np.all(np.any(np.asarray(trained.lora_b) != 0, axis=(1, 2)))       # every layer's factors moved
    hub.save_pretrained({"params": state.params}, model.config, tmp_path, task="sequence_classification")
    written = hub.read_weights(tmp_path)
    for i in range(3):
        merged = _query(params)[i] + 2.0 * np.asarray(trained.lora_a[i]) @ np.asarray(trained.lora_b[i])
        np.testing.assert_allclose(written[f"bert.encoder.layer.{i}.attention.self.query.weight"], merged.T, atol=1e-6)


def _dw_flops_per_layer(config: bert.BertConfig, tokens: int) -> int:
    """FLOPs of one layer's weight gradients: 2 x tokens x (in x out) per dense kernel."""
    h, i = config.hidden_size, config.intermediate_size
    return 2 * tokens * (4 * h * h + 2 * h * i)


def _compiled_step(model, params, mask, batch):
    tx = jt.make_optimizer(params, bert.default_rules(), optax.adamw, 1e-2, layer_ids=model.layer_ids, l2_sp=0.01)
    state, step = _state_and_step(model, params, tx, trainable=mask)
    compiled = step.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    return state, compiled, float((cost[0] if isinstance(cost, list) else cost)["flops"])


def test_structural_freezing_of_bottom_layers_trains_the_top_without_their_weight_gradients(scanned):
    model, params, batch = scanned
    frozen = 2
    mask = jt.freeze_below(params, model.layer_ids, frozen + 1)               # layers 0 and 1 frozen ...
    mask["bert"]["embeddings"] = jax.tree.map(lambda _: True, mask["bert"]["embeddings"])   # ... below trained ones
    state, step, split_flops = _compiled_step(jt.with_frozen_layers(model, mask), params, mask, batch)
    for _ in range(2):
        state, _ = step(state, batch)
    after = jax.device_get(state.params)
    assert np.any(_query(after) != _query(params), axis=(1, 2)).tolist() == [False, False, True]
    assert np.any(after["bert"]["embeddings"]["word_embeddings"]["embedding"]
                  != params["bert"]["embeddings"]["word_embeddings"]["embedding"])   # the gradient got through
    # The same step without the split (the stacked gradient only masked) computes every layer's weight gradient.
    masked_flops = _compiled_step(model, params, mask, batch)[2]
    saved = (masked_flops - split_flops) / (frozen * _dw_flops_per_layer(model.config, batch["input_ids"].size))
    # At least the kernels' weight gradients; the rest is the bias and norm gradients and the elementwise work XLA
    # drops on the frozen layers' all-zero gradient. Far less than a whole backward pass through them (> 2).
    assert 0.95 <= saved <= 1.5, saved
