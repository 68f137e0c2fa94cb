"""Scanned T5 (``scan_layers=True``): parity with transformers at test_t5's tolerance (float32, max abs
diff 2e-5), greedy and beam generation token-identical through the stacked key/value cache, per-block
checkpoint names on import and export, gradients equal to the unrolled model's (float32, 1e-5) with
frozen bottom blocks that take none, and the strategies per block (layer ids, LLRD, stages, runtime
unfreezing in one compile, LoRA, structural freezing with its weight-gradient FLOPs gone)."""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from jaxtune import hub
from jaxtune.generation import generate
from jaxtune.models import t5
from jaxtune.models.family import flatten_paths, unflatten_paths
from jaxtune.models.stacking import stack_layers
from jaxtune.tasks import get_task
from test_bert_scan import task_grads
from test_t5 import ATOL, TINY, _batch, _pad_after_eos, _torch, checkpoints  # noqa: F401  (module fixture)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

GRAD_ATOL = 1e-5
ENCODER, DECODER = "encoder/block", "decoder/block"
BIAS = "layer_0/SelfAttention/relative_attention_bias/embedding"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random tiny T5 v1.1 (gated GELU, untied head) with 2 encoder and 3 decoder blocks, saved as
    test_t5's v1.1 fixture is: (directory, PyTorch model)."""
    directory = tmp_path_factory.mktemp("t5_scan")
    torch.manual_seed(0)
    config = transformers.T5Config(**TINY, num_decoder_layers=3, feed_forward_proj="gated-gelu")
    model = transformers.T5ForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(directory)
    tensors = safetensors_torch.load_file(directory / "model.safetensors")
    tensors["lm_head.weight"] = torch.randn(tensors["shared.weight"].shape, generator=generator)
    safetensors_torch.save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    hf_config = json.loads((directory / "config.json").read_text())
    hf_config.update(tie_word_embeddings=False)
    hf_config.pop("scale_decoder_outputs", None)
    (directory / "config.json").write_text(json.dumps(hf_config))
    return directory, transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()


@pytest.fixture(scope="module")
def scanned(checkpoint):
    return hub.from_pretrained(checkpoint[0], task="text_to_text", scan_layers=True)


def test_scanned_logits_and_loss_match_transformers(checkpoint, scanned):
    _, torch_model = checkpoint
    model, variables = scanned
    paths = flatten_paths(variables["params"])
    assert paths[f"{ENCODER}/layer_0/SelfAttention/q/kernel"].shape == (2, 32, 32)
    assert paths[f"{DECODER}/layer_1/EncDecAttention/k/kernel"].shape == (3, 32, 32)
    assert paths["decoder/relative_attention_bias/embedding"].shape == (8, 4)
    assert not any("block_" in p for p in paths)
    ids, mask, labels = _batch()
    decoder_ids = np.asarray(t5.shift_right(labels, 0, 0))
    decoder_mask = (labels != -100).astype(np.int32)
    t_ids, t_mask, t_labels, t_dmask = _torch(ids, mask, labels, decoder_mask)
    with torch.no_grad():
        ref = torch_model(input_ids=t_ids, attention_mask=t_mask, labels=t_labels, decoder_attention_mask=t_dmask)
    for remat in ("none", "full"):   # remat changes the backward pass only
        remodel = t5.build(dataclasses.replace(model.config, remat=remat), "text_to_text")
        logits = remodel.apply(variables, ids, mask, decoder_ids, decoder_mask)
        np.testing.assert_allclose(np.asarray(logits), ref.logits.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(float(t5.t5_loss(logits, labels)), ref.loss.item(), rtol=1e-5)


def test_scanned_v10_bare_and_text_to_text_match_transformers(checkpoints):
    """T5 v1.0 (ReLU, head tied to the shared embedding, scaled decoder output), scan fully unrolled."""
    _, directory, torch_model, _, _ = checkpoints("v1.0")
    ids, mask, labels = _batch(seed=1)
    decoder_ids = np.asarray(t5.shift_right(labels, 0, 0))
    t_ids, t_mask, t_decoder_ids = _torch(ids, mask, decoder_ids)
    with torch.no_grad():
        ref = torch_model(input_ids=t_ids, attention_mask=t_mask, decoder_input_ids=t_decoder_ids,
                          output_hidden_states=True)
    for task, want in (("text_to_text", ref.logits), (None, ref.decoder_hidden_states[-1])):
        model, variables = hub.from_pretrained(directory, task=task, scan_layers=True, scan_unroll=2,
                                               remat="dots_saveable")
        out = model.apply(variables, ids, mask, decoder_ids)
        np.testing.assert_allclose(np.asarray(out), want.numpy(), rtol=0, atol=ATOL)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_scanned_generation_token_identical(checkpoint, scanned, num_beams):
    _, torch_model = checkpoint
    model, variables = scanned
    ids, mask, _ = _batch(seed=3, batch=4)
    max_length = 9
    t_ids, t_mask = _torch(ids, mask)
    # transformers' key/value cache assumes num_decoder_layers == num_layers: it recomputes instead.
    kwargs = {"input_ids": t_ids, "attention_mask": t_mask, "max_length": max_length, "do_sample": False,
              "num_beams": num_beams, "early_stopping": True, "use_cache": False}
    with torch.no_grad():
        eos = int(torch_model.generate(**kwargs, eos_token_id=None)[0, 3])   # row 0 stops at step 3
        ref = torch_model.generate(**kwargs, eos_token_id=eos).numpy()
    out = np.asarray(generate(model, variables, ids, mask, max_length=max_length, num_beams=num_beams,
                              eos_token_id=eos, early_stopping=True))
    np.testing.assert_array_equal(out, _pad_after_eos(ref, eos, 0, max_length))


def test_scanned_export_has_the_per_block_names_and_values(checkpoint, scanned, tmp_path):
    directory, _ = checkpoint
    model, variables = scanned
    hub.save_pretrained(variables, model.config, tmp_path, task="text_to_text")
    written, original = hub.read_weights(tmp_path), hub.read_weights(directory)
    assert set(written) <= set(original) and {n for n in original if ".block." in n} | {"lm_head.weight"} <= set(written)
    assert all(np.array_equal(written[name], original[name]) for name in written)
    config = json.loads((tmp_path / "config.json").read_text())
    assert not {"scan_layers", "scan_unroll", "remat"} & set(config)
    assert t5.T5Config.from_hf(config) == dataclasses.replace(model.config, scan_layers=False)


def test_bad_scan_settings_are_clear_errors(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="T5Config.remat='most'.*'dots_saveable'"):
        t5.T5Config(remat="most")
    with pytest.raises(ValueError, match="T5Config.scan_unroll=0"):
        t5.T5Config(scan_unroll=0)
    directory, _ = checkpoint
    config = json.loads((directory / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_decoder_layers": 4}))
    (tmp_path / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    with pytest.raises(jt.UserError, match=r"decoder/block_<i>.*into 4 layers: missing layer\(s\) \[3\]"):
        hub.from_pretrained(tmp_path, task="text_to_text", scan_layers=True)


# ---------------------------------------------------------------------------------------------
# Gradients and strategies per block on the stacked layout (no checkpoint: random params).

def _tiny(**overrides) -> t5.T5Config:
    """A dropout-free tiny T5 v1.1 with 2 encoder and 3 decoder blocks."""
    return t5.T5Config(**{**dict(vocab_size=99, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=3,
                                 num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                 dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                 scale_decoder_outputs=False), **overrides})


def _stacked(flat: dict) -> dict:
    """Per-block params (flat, no ``params/``) in the scanned layout."""
    for stack, count in (("encoder", 2), ("decoder", 3)):
        flat = dict(flat)
        flat[f"{stack}/relative_attention_bias/embedding"] = flat.pop(f"{stack}/block_0/{BIAS}")
        flat = stack_layers(flat, f"{stack}/block_{{i}}", f"{stack}/block", count)
    return flat


def _unrolled_and_stacked(config: t5.T5Config, seed: int = 0):
    """Random unrolled params (numpy, std 0.2) and the same numbers stacked for the scanned model."""
    model = t5.build(dataclasses.replace(config, scan_layers=False))
    shapes = jax.eval_shape(model.init, jax.random.key(0), *t5.example_inputs(config))["params"]
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
    return params, unflatten_paths(_stacked(flatten_paths(params)))


def _train_batch(n: int = 3, seed: int = 1) -> dict:
    ids, mask, labels = _batch(seed=seed, batch=n)
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask), "labels": jnp.asarray(labels)}


def test_scanned_gradients_equal_the_unrolled_ones_and_frozen_blocks_get_none():
    config = _tiny()
    unrolled, stacked = _unrolled_and_stacked(config)
    batch = _train_batch()
    expected = _stacked(flatten_paths(task_grads("text_to_text", t5.build(config), unrolled, batch)))
    # Both encoder blocks and decoder block 0 frozen (3 = 2 + 1), the rest in rematerialised scans.
    model = t5.build(dataclasses.replace(config, scan_layers=True, remat="dots_saveable")).clone(frozen_layers=3)
    got = flatten_paths(task_grads("text_to_text", model, stacked, batch))
    assert set(got) == set(expected)
    for path, g in got.items():
        want = np.array(expected[path])
        if path.startswith(ENCODER):
            want[:] = 0.0
        elif path.startswith(DECODER):
            want[:1] = 0.0
        np.testing.assert_allclose(g, want, atol=GRAD_ATOL, err_msg=path)


@pytest.fixture(scope="module")
def stacked_model():
    """A scanned tiny T5, its stacked params (numpy) and a batch."""
    config = _tiny(scan_layers=True)
    return t5.build(config), _unrolled_and_stacked(config)[1], _train_batch()


def _kernel(tree, stack="decoder", name="layer_0/SelfAttention/q/kernel"):
    return np.asarray(flatten_paths(tree)[f"{stack}/block/{name}"])


def test_layer_ids_llrd_summary_stages_and_masks_are_per_block(stacked_model):
    model, params, _ = stacked_model
    assert model.layer_ids(f"{ENCODER}/layer_1/DenseReluDense/wo/kernel").tolist() == [1, 2]
    assert model.layer_ids(f"{DECODER}/layer_2/layer_norm/weight").tolist() == [3, 4, 5]
    assert model.layer_ids("decoder/relative_attention_bias/embedding") == 3
    rules = t5.default_rules()
    mults = jt.lr_multipliers(params, rules, model.layer_ids, 0.5)               # head id 6
    np.testing.assert_allclose(_kernel(mults, "encoder").ravel(), [0.5 ** 5, 0.5 ** 4])
    np.testing.assert_allclose(_kernel(mults).ravel(), [0.5 ** 3, 0.5 ** 2, 0.5])
    assert "0.0156..1" in jt.summary(params, rules, layer_ids=model.layer_ids, layer_decay=0.5)   # ids 0..6
    stages = jt.unfreezing_stages(params, model.layer_ids, num_stages=3)         # ids {6, 5, 4}, {3, 2}, {1, 0}
    assert [_kernel(s).tolist() for s in stages] == [[False, True, True], [True] * 3, [True] * 3]
    assert [_kernel(s, "encoder").tolist() for s in stages] == [[False, False], [False, True], [True, True]]
    mask = jt.freeze_below(params, model.layer_ids, 5)            # shared, encoder, decoder blocks 0 and 1
    assert _kernel(mask).tolist() == [False, False, True] and not _kernel(mask, "encoder").any()
    assert flatten_paths(mask)["decoder/relative_attention_bias/embedding"] is False
    assert jt.frozen_bottom_layers(mask, model.layer_ids) == 4
    assert jt.with_frozen_layers(model, mask).frozen_layers == 4
    assert jt.frozen_bottom_layers(jt.freeze_below(params, model.layer_ids, 2), model.layer_ids) == 1


def _state_and_step(model, params, tx, **step_kwargs):
    state = jt.TrainState.create(jax.tree.map(jnp.asarray, params), tx)
    loss_fn = get_task("text_to_text").loss_fn(model)
    return state, jt.make_train_step(loss_fn, tx, compute_dtype=jnp.float32, **step_kwargs)


def test_runtime_unfreezing_with_llrd_and_l2sp_compiles_once(stacked_model):
    model, params, batch = stacked_model
    tx = jt.make_optimizer(params, t5.default_rules(), optax.adamw, 1e-2, layer_ids=model.layer_ids,
                           layer_decay=0.8, runtime=True, l2_sp=0.01)
    state, step = _state_and_step(model, params, tx)
    for stage in jt.unfreezing_stages(params, model.layer_ids, num_stages=3):
        state = state.replace(opt_state=jt.set_trainable(state.opt_state, stage))
        before = _kernel(jax.device_get(state.params))
        state, metrics = step(state, batch)
        moved = np.any(_kernel(jax.device_get(state.params)) != before, axis=(1, 2))
        assert moved.tolist() == _kernel(stage).tolist()
    assert np.isfinite(float(metrics["loss"])) and jt.compile_count(step) == 1


def test_lora_on_stacked_kernels_trains_every_block(stacked_model):
    model, params, batch = stacked_model
    rules = [(r".*SelfAttention/(q|v)/kernel", jt.lora(rank=2, alpha=4)), (r"lm_head/.*", jt.settings()),
             (r".*", jt.freeze())]
    adapters = jt.init_lora(params, rules, jax.random.key(0), layer_ids=model.layer_ids)
    factors = flatten_paths(adapters)[f"{DECODER}/layer_0/SelfAttention/q/kernel"]
    assert factors.lora_a.shape == (3, 16, 2) and factors.lora_b.shape == (3, 2, 16)
    tree = jt.LoraParams(params, adapters)
    tx = jt.make_optimizer(tree, rules, optax.adamw, 1e-2, layer_ids=model.layer_ids, layer_decay=0.8)
    state, step = _state_and_step(model, tree, tx, trainable=jt.trainable_mask(tree, rules))
    state, metrics = step(state, batch)
    trained = flatten_paths(state.params.adapters)
    for stack, count in (("encoder", 2), ("decoder", 3)):
        lora_b = np.asarray(trained[f"{stack}/block/layer_0/SelfAttention/v/kernel"].lora_b)
        assert lora_b.shape[0] == count and np.all(np.any(lora_b != 0, axis=(1, 2)))   # every block moved
    assert np.isfinite(float(metrics["loss"]))


def _dw_flops_per_decoder_block(config: t5.T5Config, source_tokens: int, target_tokens: int) -> int:
    """FLOPs of one decoder block's kernel gradients: 2 x tokens x (in x out) per kernel (self
    attention q k v o, cross attention q o on the targets and k v on the source, gated feed-forward)."""
    d, inner, ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    return 2 * (target_tokens * (4 * d * inner + 2 * d * inner + 3 * d * ff) + source_tokens * 2 * d * inner)


def _compiled_step(model, params, mask, batch):
    tx = jt.make_optimizer(params, t5.default_rules(), optax.adamw, 1e-2, layer_ids=model.layer_ids)
    state, step = _state_and_step(model, params, tx, trainable=mask)
    compiled = step.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    return state, compiled, float((cost[0] if isinstance(cost, list) else cost)["flops"])


def test_structural_freezing_of_bottom_blocks_drops_their_weight_gradients(stacked_model):
    model, params, batch = stacked_model
    # The scans unrolled (scan_unroll=3): XLA's cost analysis counts a loop's body once, whatever its trip count.
    model = model.clone(config=dataclasses.replace(model.config, scan_unroll=3))
    mask = jt.freeze_below(params, model.layer_ids, 5)            # shared, both encoder, decoder blocks 0 and 1
    state, step, split_flops = _compiled_step(jt.with_frozen_layers(model, mask), params, mask, batch)
    state, _ = step(state, batch)
    after = jax.device_get(state.params)
    assert np.any(_kernel(after) != _kernel(params), axis=(1, 2)).tolist() == [False, False, True]
    assert np.array_equal(_kernel(after, "encoder"), _kernel(params, "encoder"))
    masked_flops = _compiled_step(model, params, mask, batch)[2]    # the stacked gradient only masked
    # The encoder's stacked leaves are frozen in every block, so the structural step never differentiates
    # them, split or not; the split spares decoder blocks 0 and 1 the weight gradients.
    expected = 2 * _dw_flops_per_decoder_block(model.config, batch["input_ids"].size, batch["labels"].size)
    saved = (masked_flops - split_flops) / expected
    # At least the kernels' weight gradients (measured 1.33: plus the norms' and what XLA drops on the frozen
    # blocks' all-zero gradients); far less than a whole backward pass through them.
    assert 0.95 <= saved <= 1.5, saved


# Weight averaging on the structural step: float32, max abs diff to the unrolled model's average after 3 steps
# (measured 6e-8; the trained weights move by up to 2e-2).
AVERAGE_ATOL = 1e-5


def _averaged_run(model, params, mask, average_mask, decay, batch, steps: int = 3) -> tuple[dict, dict]:
    """The weights and their average (flat paths, numpy) after ``steps`` structural steps of AdamW
    (LLRD 0.8) with ``jt.average_weights(decay, mask=average_mask)`` last in the chain."""
    tx = optax.chain(jt.make_optimizer(params, t5.default_rules(), optax.adamw, 1e-2, layer_ids=model.layer_ids,
                                       layer_decay=0.8),
                     jt.average_weights(decay, mask=average_mask))
    state, step = _state_and_step(jt.with_frozen_layers(model, mask), params, tx, trainable=mask)
    for _ in range(steps):
        state, _ = step(state, batch)
    averaged = jt.averaged_params(state.params, state.opt_state)
    return flatten_paths(jax.device_get(state.params)), flatten_paths(jax.device_get(averaged))


def test_averaging_with_per_block_structural_freezing_matches_the_unrolled_model(stacked_model):
    model, stacked, batch = stacked_model
    unrolled_model = t5.build(dataclasses.replace(model.config, scan_layers=False))
    unrolled = _unrolled_and_stacked(model.config)[0]
    # Shared embedding, both encoder blocks and decoder blocks 0 and 1 frozen; decoder block 2 and the head train.
    mask = jt.freeze_below(stacked, model.layer_ids, 5)
    unrolled_mask = jt.freeze_below(unrolled, unrolled_model.layer_ids, 5)      # one bool per leaf
    assert jt.with_frozen_layers(model, mask).frozen_layers == 4
    # The reference: a uniform average (SWA) of what the unrolled step trains.
    expected = _stacked(_averaged_run(unrolled_model, unrolled, unrolled_mask, unrolled_mask, None, batch)[1])
    before = flatten_paths(stacked)
    for average_mask in (mask, None):        # the step's per-block mask, or every leaf
        weights, average = _averaged_run(model, stacked, mask, average_mask, None, batch)
        assert set(average) == set(expected)
        for path, got in average.items():
            trains = np.asarray(flatten_paths(mask)[path], bool)
            if not trains.all():   # a frozen leaf, or the frozen blocks of a stacked one: average = frozen value
                np.testing.assert_array_equal(got[~trains], before[path][~trains], err_msg=path)
                np.testing.assert_array_equal(weights[path][~trains], before[path][~trains], err_msg=path)
            np.testing.assert_allclose(got, expected[path], atol=AVERAGE_ATOL, rtol=0, err_msg=path)
        moved = np.any(_kernel(average) != _kernel(stacked), axis=(1, 2))
        assert moved.tolist() == [False, False, True]                            # the trained block's average moved
