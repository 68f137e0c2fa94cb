"""PEFT export and import of a scanned model's stacked LoRA factors (BERT and T5): the adapter
directory holds the same tensors as the unrolled model's (exact), and loads back stacked; the merged
stacked kernels equal the unrolled model's merged kernels (float32, 1e-5; the scanned models' parity
with transformers is test_bert_scan's and test_t5_scan's)."""
import json

import jax
import numpy as np
import pytest

import jaxtune as jt
from jaxtune import hub
from jaxtune.lora import factors_by_path
from jaxtune.lora_peft import per_layer_factors
from jaxtune.models.family import flatten_paths, unflatten_paths
from jaxtune.models.stacking import unstack_layers
from tests._hf_fixtures import tiny_bert_config
from tests.test_lora_peft import QV, _random_factors, assert_same_factors

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ATOL = 1e-5


def _bert_base(directory):
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(tiny_bert_config(num_labels=3)).eval().save_pretrained(directory)
    return "sequence_classification"


def _t5_base(directory):
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=99, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=3,
                                   num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16)
    transformers.T5ForConditionalGeneration(config).eval().save_pretrained(directory)
    return "text_to_text"


@pytest.mark.parametrize("base", [_bert_base, _t5_base], ids=["bert", "t5"])
def test_stacked_lora_exports_the_unrolled_models_peft_files_and_loads_back(tmp_path, base):
    task = base(tmp_path / "base")
    model, variables = hub.from_pretrained(tmp_path / "base", task=task)
    scanned_model, scanned = hub.from_pretrained(tmp_path / "base", task=task, scan_layers=True)
    stacked = _random_factors(jt.init_lora(scanned["params"], QV, jax.random.key(0),
                                           layer_ids=scanned_model.layer_ids))
    assert any(np.ndim(f.lora_a) == 3 for f in factors_by_path(stacked).values())
    unrolled = unflatten_paths(per_layer_factors(stacked, scanned_model.config))
    for adapters, config, name in ((unrolled, model.config, "unrolled"), (stacked, scanned_model.config, "scanned")):
        jt.save_peft(adapters, config, tmp_path / name, task=task, modules_to_save=[])
    files = [hub._read_safetensors(tmp_path / name / "adapter_model.safetensors") for name in ("unrolled", "scanned")]
    assert sorted(files[0]) == sorted(files[1]) and len(files[0]) > 4
    assert all(np.array_equal(files[0][k], files[1][k]) for k in files[0])
    configs = [json.loads((tmp_path / name / "adapter_config.json").read_text()) for name in ("unrolled", "scanned")]
    assert configs[0] == configs[1]

    loaded, _ = jt.load_peft(tmp_path / "unrolled", scanned_model.config, task, params=scanned["params"])
    assert_same_factors(stacked, loaded)
    merged = flatten_paths(jt.merge_lora(scanned["params"], loaded))
    reference = flatten_paths(jt.merge_lora(variables["params"], unrolled))
    stacks = [(s.removeprefix("params/"), t.removeprefix("params/"))
              for s, t, _ in hub._family_of_config(scanned_model.config).stacked_layers(scanned_model.config)]
    for path in factors_by_path(stacked):   # each merged stacked kernel is the unrolled model's merged kernels, stacked
        stack = next((s, t) for s, t in stacks if path.startswith(s + "/"))
        for layer_path, kernel in unstack_layers({path: merged[path]}, *stack).items():
            np.testing.assert_allclose(kernel, reference[layer_path], atol=ATOL, rtol=0, err_msg=layer_path)


def test_per_layer_factors_of_other_stacks_are_refused(tmp_path):
    task = _bert_base(tmp_path / "base")
    model, variables = hub.from_pretrained(tmp_path / "base", task=task)
    adapters = jt.init_lora(variables["params"], QV, jax.random.key(0))
    path = "bert/encoder/layer_0/attention/self/query/kernel"
    flat = factors_by_path(adapters)
    flat[path] = flat[path].replace(lora_a=np.zeros((2, 32, 4)), lora_b=np.zeros((2, 4, 32)))
    with pytest.raises(jt.UserError, match="layer_0/attention/self/query/kernel have shapes .* not in a layer stack"):
        jt.save_peft(unflatten_paths(flat), model.config, tmp_path / "a", task=task, modules_to_save=[])
