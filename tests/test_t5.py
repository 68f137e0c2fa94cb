"""T5 v1.0 / v1.1 parity with transformers (PyTorch, CPU, float32) and jitted generation.

Each checkpoint is a tiny random ``T5ForConditionalGeneration`` saved with ``save_pretrained``.
transformers >= 5 always ties ``lm_head`` to the shared embedding when it builds a model, so the
v1.1 fixture writes a separate ``lm_head.weight`` into the file (and ``tie_word_embeddings: false``
into ``config.json``), as real T5 v1.1 / Flan-T5 checkpoints have.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune import hub
from jaxtune.generation import generate
from jaxtune.models import t5
from jaxtune.models.family import flatten_paths
from jaxtune.rules import match_rules, weight_decay_mask

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

ATOL = 2e-5  # max abs difference allowed between float32 Flax and PyTorch outputs (measured <= 7.2e-6; README)
TINY = {"vocab_size": 99, "d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4,
        "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16, "decoder_start_token_id": 0}
VARIANTS = {"v1.0": {"feed_forward_proj": "relu", "tie_word_embeddings": True},
            "v1.1": {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}}


def _write_checkpoint(directory, variant):
    """Random tiny T5 of ``variant`` saved by transformers; returns the reloaded PyTorch model."""
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**TINY, **VARIANTS[variant])).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # norm weights away from 1 so that the parity tests see them
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(directory)
    if variant == "v1.1":
        tensors = safetensors_torch.load_file(directory / "model.safetensors")
        tensors["lm_head.weight"] = torch.randn(tensors["shared.weight"].shape, generator=generator)
        safetensors_torch.save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
        config = json.loads((directory / "config.json").read_text())
        config.update(tie_word_embeddings=False)
        config.pop("scale_decoder_outputs")
        (directory / "config.json").write_text(json.dumps(config))
    return transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """variant -> (variant, directory, PyTorch model, Flax model, Flax variables), built on first use."""
    built = {}

    def get(variant):
        if variant not in built:
            directory = tmp_path_factory.mktemp(f"t5_{variant}")
            torch_model = _write_checkpoint(directory, variant)
            model, variables = hub.from_pretrained(directory, task="text_to_text")
            built[variant] = variant, directory, torch_model, model, variables
        return built[variant]

    return get


@pytest.fixture(params=list(VARIANTS))
def checkpoint(request, checkpoints):
    return checkpoints(request.param)


def _batch(seed=0, batch=3, length=9, target=6):
    """Encoder ids with padding in two rows and decoder ids with one padded row (int32 numpy)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(2, TINY["vocab_size"], (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, length - 3:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    labels = rng.randint(2, TINY["vocab_size"], (batch, target)).astype(np.int32)
    labels[2, target - 2:] = -100
    return ids, mask, labels


def _torch(*arrays):
    return [torch.tensor(np.asarray(a), dtype=torch.long) for a in arrays]


def _pad_after_eos(sequences, eos, pad, max_length):
    """transformers' output with every token after the first generated EOS set to ``pad`` and the
    rows padded to ``max_length`` (its beam search fills with EOS when ``pad_token_id`` is 0)."""
    out = np.full((sequences.shape[0], max_length), pad, np.int64)
    for row, seq in zip(out, sequences):
        ends = np.flatnonzero(seq[1:] == eos)
        stop = ends[0] + 2 if len(ends) else len(seq)
        row[:stop] = seq[:stop]
    return out


def test_config_from_hf_reads_v4_and_v5_layouts():
    v10 = t5.T5Config.from_hf({"model_type": "t5", **TINY, "feed_forward_proj": "relu"})
    assert (v10.tie_word_embeddings, v10.scale_decoder_outputs, v10.dense_act_fn) == (True, True, "relu")
    v11 = t5.T5Config.from_hf({"model_type": "t5", **TINY, "feed_forward_proj": "gated-gelu",
                               "tie_word_embeddings": False, "num_decoder_layers": 3, "eos_token_id": [1]})
    assert (v11.tie_word_embeddings, v11.scale_decoder_outputs, v11.is_gated_act) == (False, False, True)
    assert (v11.dense_act_fn, v11.num_decoder_layers, v11.eos_token_id) == ("gelu_new", 3, 1)
    # transformers >= 5 writes tie_word_embeddings=true and scale_decoder_outputs=false for v1.1.
    v5 = t5.T5Config.from_hf({"model_type": "t5", **TINY, "tie_word_embeddings": True,
                              "scale_decoder_outputs": False})
    assert (v5.tie_word_embeddings, v5.scale_decoder_outputs) == (True, False)
    with pytest.raises(ValueError, match="feed_forward_proj 'gated-gelu-x'"):
        t5.T5Config.from_hf({**TINY, "feed_forward_proj": "gated-gelu-x"})


def test_untied_lm_head_saved_as_tied_is_loaded_untied(checkpoints, tmp_path):
    """transformers >= 5 writes ``tie_word_embeddings: true`` (and ``scale_decoder_outputs: false``)
    for T5 v1.1 / Flan-T5 next to a separate ``lm_head.weight``: the weights decide, and the model
    equals the v1.1 one (float32, exact: the same tensors)."""
    _, directory, _, model, variables = checkpoints("v1.1")
    resaved = tmp_path / "resaved"
    resaved.mkdir()
    (resaved / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    config = json.loads((directory / "config.json").read_text())
    config.update(tie_word_embeddings=True, scale_decoder_outputs=False)
    (resaved / "config.json").write_text(json.dumps(config))
    loaded_model, loaded = hub.from_pretrained(resaved, task="text_to_text")
    assert not loaded_model.config.tie_word_embeddings and not loaded_model.config.scale_decoder_outputs
    assert "lm_head" in loaded["params"]
    ids, mask, labels = _batch()
    decoder_ids = np.asarray(t5.shift_right(labels, 0, 0))
    np.testing.assert_array_equal(loaded_model.apply(loaded, ids, mask, decoder_ids),
                                  model.apply(variables, ids, mask, decoder_ids))
    tied = t5.T5Config.from_hf({"model_type": "t5", **TINY})
    shared = np.ones((4, 2), np.float32)
    assert t5.config_for_weights(tied, {"shared.weight": shared, "lm_head.weight": shared.copy()}) is tied


def test_logits_and_loss_match_transformers(checkpoint):
    _, _, torch_model, model, variables = checkpoint
    ids, mask, labels = _batch()
    decoder_ids = np.asarray(t5.shift_right(labels, 0, 0))
    decoder_mask = (labels != -100).astype(np.int32)
    logits = model.apply(variables, ids, mask, decoder_ids, decoder_mask)
    t_ids, t_mask, t_labels, t_dmask = _torch(ids, mask, labels, decoder_mask)
    with torch.no_grad():
        ref = torch_model(input_ids=t_ids, attention_mask=t_mask, labels=t_labels, decoder_attention_mask=t_dmask)
    assert logits.shape == (3, 6, TINY["vocab_size"]) and logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), ref.logits.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(float(t5.t5_loss(logits, labels)), ref.loss.item(), rtol=1e-5)
    np.testing.assert_array_equal(decoder_ids, torch_model._shift_right(t_labels).numpy())


def test_bare_model_matches_transformers_t5model(checkpoint):
    variant, directory, _, _, _ = checkpoint
    model, variables, report = hub.from_pretrained(directory, task=None, return_report=True)
    assert "params/lm_head/kernel" not in flatten_paths(variables)
    assert report.ignored == (("lm_head.weight",) if variant == "v1.1" else ())
    ids, mask, labels = _batch(seed=1)
    hidden = model.apply(variables, ids, mask, np.asarray(t5.shift_right(labels, 0, 0)))
    torch_model = transformers.T5Model.from_pretrained(directory).eval()
    t_ids, t_mask, t_decoder_ids = _torch(ids, mask, t5.shift_right(labels, 0, 0))
    with torch.no_grad():
        ref = torch_model(input_ids=t_ids, attention_mask=t_mask, decoder_input_ids=t_decoder_ids).last_hidden_state
    np.testing.assert_allclose(np.asarray(hidden), ref.numpy(), rtol=0, atol=ATOL)


def test_cached_decoding_equals_full_recompute(checkpoint):
    _, _, _, model, variables = checkpoint
    ids, mask, labels = _batch(seed=2)
    decoder_ids = np.asarray(t5.shift_right(labels, 0, 0))  # no -100 left after the shift
    full = model.apply(variables, ids, mask, decoder_ids)
    encoded = model.apply(variables, ids, mask, method="encode")
    memory, cache = model.apply(variables, encoded, mask, 8, method="init_cache")
    decode = jax.jit(lambda *args: model.apply(variables, *args, method="decode"))
    # a 2-token chunk, then one token at a time (positions 2, 3, ...)
    logits, cache = decode(decoder_ids[:, :2], 0, memory, cache)
    steps = [logits]
    for position in range(2, decoder_ids.shape[1]):
        logits, cache = decode(decoder_ids[:, position:position + 1], position, memory, cache)
        steps.append(logits)
    cached = jnp.concatenate(steps, axis=1)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), rtol=0, atol=1e-5)


def test_greedy_generation_token_identical(checkpoint):
    _, _, torch_model, model, variables = checkpoint
    ids, mask, _ = _batch(seed=3, batch=4)
    max_length = 10
    t_ids, t_mask = _torch(ids, mask)
    kwargs = {"input_ids": t_ids, "attention_mask": t_mask, "max_length": max_length, "do_sample": False,
              "num_beams": 1}
    with torch.no_grad():
        eos = int(torch_model.generate(**kwargs, eos_token_id=None)[0, 3])  # row 0 stops at step 3
        ref = torch_model.generate(**kwargs, eos_token_id=eos).numpy()
    out = np.asarray(generate(model, variables, ids, mask, max_length=max_length, eos_token_id=eos))
    assert out.shape == (4, max_length) and out.dtype == np.int32
    np.testing.assert_array_equal(out, _pad_after_eos(ref, eos, 0, max_length))
    assert (out[0, 4:] == 0).all()  # finished rows are padded


@pytest.mark.parametrize("length_penalty", [1.0, 0.5])
def test_beam_search_token_identical(checkpoint, length_penalty):
    variant, _, torch_model, model, variables = checkpoint
    ids, mask, _ = _batch(seed=4, batch=4)
    max_length, num_beams = 9, 3
    early_stopping = variant == "v1.0"  # both stopping rules, one compile per variant
    t_ids, t_mask = _torch(ids, mask)
    kwargs = {"input_ids": t_ids, "attention_mask": t_mask, "max_length": max_length, "do_sample": False,
              "num_beams": num_beams, "length_penalty": length_penalty, "early_stopping": early_stopping}
    with torch.no_grad():
        eos = int(torch_model.generate(**kwargs, eos_token_id=None)[0, 3])
        ref = torch_model.generate(**kwargs, eos_token_id=eos).numpy()
    out = np.asarray(generate(model, variables, ids, mask, max_length=max_length, num_beams=num_beams,
                              eos_token_id=eos, length_penalty=length_penalty, early_stopping=early_stopping))
    np.testing.assert_array_equal(out, _pad_after_eos(ref, eos, 0, max_length))


def test_save_pretrained_round_trip_through_transformers(checkpoint, tmp_path):
    variant, _, torch_model, model, variables = checkpoint
    hub.save_pretrained(variables, model.config, tmp_path, task="text_to_text")
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert (reloaded.lm_head.weight.data_ptr() == reloaded.shared.weight.data_ptr()) == (variant == "v1.0")
    ids, mask, labels = _batch(seed=5)
    t_ids, t_mask, t_labels = _torch(ids, mask, labels)
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(input_ids=t_ids, attention_mask=t_mask, labels=t_labels).logits.numpy(),
                                   torch_model(input_ids=t_ids, attention_mask=t_mask, labels=t_labels).logits.numpy(),
                                   rtol=0, atol=1e-6)
    assert t5.T5Config.from_hf(json.loads((tmp_path / "config.json").read_text())) == model.config


def test_tied_config_with_separate_lm_head_is_refused(checkpoints):
    _, directory, _, _, _ = checkpoints("v1.1")
    config = json.loads((directory / "config.json").read_text())
    tied = t5.T5Config.from_hf({**config, "tie_word_embeddings": True})
    tensors = hub.read_weights(directory)
    with pytest.raises(ValueError, match='set "tie_word_embeddings": false'):
        t5.FAMILY.to_flax(tied, tensors, "text_to_text")


def test_layer_ids_and_default_rules_cover_every_parameter(checkpoint):
    _, _, _, model, variables = checkpoint
    params = variables["params"]
    ids = {path: model.layer_ids(path) for path in flatten_paths(params)}
    assert ids["shared/embedding"] == 0
    assert ids["encoder/block_0/layer_0/SelfAttention/relative_attention_bias/embedding"] == 1
    assert ids["encoder/block_1/layer_1/DenseReluDense/wo/kernel"] == 2
    assert ids["decoder/block_0/layer_1/EncDecAttention/k/kernel"] == 3
    assert ids["decoder/block_1/layer_2/layer_norm/weight"] == 4
    assert ids["encoder/final_layer_norm/weight"] == ids["decoder/final_layer_norm/weight"] == 5
    assert set(ids.values()) == set(range(6))
    assert t5.layer_ids("lm_head/kernel", 2) == 5 and t5.layer_ids("params/shared/embedding", 2) == 0
    with pytest.raises(KeyError, match="decoder block 2"):
        t5.layer_ids("decoder/block_2/layer_0/SelfAttention/q/kernel", 2)
    with pytest.raises(KeyError, match="unknown parameter path 'encoder/embed_tokens"):
        t5.layer_ids("encoder/embed_tokens/embedding", 2)
    rules = t5.default_rules()
    match_rules(params, rules)  # every parameter covered, every rule used
    decay = flatten_paths(weight_decay_mask(params, rules))
    assert not any(on for path, on in decay.items() if path.endswith("layer_norm/weight"))
    assert all(on for path, on in decay.items() if not path.endswith("layer_norm/weight"))


def test_dropout_is_active_and_reproducible_in_training_mode(checkpoints):
    _, _, _, model, variables = checkpoints("v1.1")
    ids, mask, labels = _batch(seed=6)
    decoder_ids = t5.shift_right(labels, 0, 0)

    @jax.jit
    def loss(params, key):
        logits = model.apply({"params": params}, ids, mask, decoder_ids, deterministic=False,
                             rngs={"dropout": key})
        return t5.t5_loss(logits, labels)

    # rbg keys: XLA compiles threefry-based dropout masks several times slower on CPU
    first = float(loss(variables["params"], jax.random.key(0, impl="rbg")))
    assert np.isfinite(first)
    assert first != float(loss(variables["params"], jax.random.key(1, impl="rbg")))
    assert first == float(loss(variables["params"], jax.random.key(0, impl="rbg")))


def test_relative_position_buckets_match_transformers():
    rel = np.arange(-40, 41)[None, :]
    for bidirectional in (True, False):
        ours = t5.relative_position_bucket(jnp.asarray(rel), bidirectional, 32, 128)
        ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
            torch.tensor(rel), bidirectional=bidirectional, num_buckets=32, max_distance=128)
        np.testing.assert_array_equal(np.asarray(ours), ref.numpy())
