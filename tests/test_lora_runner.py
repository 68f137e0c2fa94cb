"""LoRA in the experiment runner: config rules with lora, adapters in checkpoints, PEFT export (the merged
export is save_pretrained's, tested in test_lora.py)."""
import os

import jax
import numpy as np
import pytest

import jaxtune as jt
from jaxtune.experiment import build, finetune
from jaxtune.lora import factors_by_path
from tests.test_experiment import _config, data, tiny_model_dir  # noqa: F401  (module fixtures)

pytestmark = pytest.mark.xdist_group("lora_runner")  # its module fixture is expensive: one worker runs it once

LORA_RULES = [{"pattern": r".*attention/self/(query|value)/kernel", "lora": {"rank": 2, "alpha": 4}, "name": "lora",
               "weight_decay": 0.0},
              {"pattern": r"classifier/.*", "name": "head"}, {"pattern": ".*", "frozen": True}]


def test_config_lora_rule_is_checked():
    with pytest.raises(jt.ConfigError, match=r"optim.rules\[0\].lora.rank"):
        jt.load_config(None, ["optim.rules=[{pattern: '.*', lora: {rank: 0}}]"])
    with pytest.raises(jt.ConfigError, match="export_format is 'peft' but no rule"):
        jt.load_config(None, ["checkpoint.export_format=peft"])


def test_lora_run_checkpoints_adapters_and_exports_peft(tiny_model_dir, data, tmp_path):
    cfg = _config(tiny_model_dir, tmp_path, "lora", rules=LORA_RULES)
    cfg["train"].update(max_steps=2, eval_every=2)
    cfg["checkpoint"].update(export_best_hf=True, export_format="peft")
    result = finetune(cfg, data=data)
    n_factors = 2 * 2 * 2 * (32 + 32)   # 2 layers x (query, value) x (A, B) x (in + out) x rank 2 / 2
    assert result.trainable_params == n_factors + 32 * 3 + 3
    assert "lora (base)" in open(result.paths["report"]).read()

    template = build(cfg, data=data).initial_state
    with jt.Checkpointer(os.path.join(result.paths["run_dir"], "checkpoints")) as ckpt:
        state = ckpt.restore(ckpt.best_step(), template=template)[0]   # what the export holds
    assert isinstance(state.params, jt.LoraParams)
    trained = factors_by_path(state.params.adapters)
    assert len(trained) == 4 and all(np.any(np.asarray(f.lora_b) != 0) for f in trained.values())
    _, pretrained = jt.from_pretrained(tiny_model_dir, task="sequence_classification")
    kernel = lambda p: p["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"]
    np.testing.assert_array_equal(kernel(state.params.params), kernel(pretrained["params"]))  # base stays frozen

    # PEFT export: the unmerged model in best_hf, the adapter beside it; together the trained model.
    model, exported = jt.from_pretrained(result.paths["export"], task="sequence_classification")
    adapters, head = jt.load_peft(result.paths["adapter"], model.config, "sequence_classification",
                                  params=exported["params"])
    best = jt.merge_lora(state.params)
    again = jt.merge_lora(exported["params"], adapters)
    for a, b in zip(jax.tree.leaves(best), jax.tree.leaves(again)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert sorted(head) == ["classifier/bias", "classifier/kernel"]

