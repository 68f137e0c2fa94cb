"""``model.scan_layers`` / ``model.remat`` in the experiment runner: checked config keys, fingerprints
that stay as they were at the defaults, and a scanned LoRA run that resumes from its stacked
checkpoint and exports per-layer Hugging Face and PEFT names."""
import os
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxtune as jt
from jaxtune import hub
from jaxtune.experiment import build, finetune
from jaxtune.hub_files import _read_safetensors
from jaxtune.run_model import load_model
from tests.test_experiment import _config, data, tiny_model_dir  # noqa: F401  (module fixtures)
from tests.test_lora_runner import LORA_RULES

pytestmark = pytest.mark.xdist_group("scan_runner")  # its module fixtures are expensive: one worker runs them once


def test_scan_keys_are_checked_and_leave_default_fingerprints_alone():
    with pytest.raises(jt.ConfigError, match="model.remat is 'most'; choose one of 'none', 'full', 'dots_saveable'"):
        jt.load_config(None, ["model.remat=most"])
    with pytest.raises(jt.ConfigError, match="model.scan_layers"):
        jt.load_config(None, ["model.scan_layers=sometimes"])
    with pytest.raises(jt.UserError, match="model.scan_layers=True, but mobilenet_v2_imagenet is a CNN"):
        load_model("mobilenet_v2_imagenet", "image_classification", 3, "float32", scan_layers=True)
    digest, keys = jt.run_fingerprint(jt.load_config(None, []))
    assert not {"model.scan_layers", "model.remat"} & set(keys)   # runs made before the keys existed keep theirs
    scanned, scanned_keys = jt.run_fingerprint(jt.load_config(None, ["model.scan_layers=true"]))
    assert scanned != digest and scanned_keys["model.scan_layers"] is True   # the checkpoints' layout differs
    assert jt.run_fingerprint(jt.load_config(None, ["model.remat=full"]))[0] == digest   # the same steps


def test_scanned_lora_run_resumes_and_exports_per_layer_names(tiny_model_dir, data, tmp_path):
    cfg = _config(tiny_model_dir, tmp_path, "scanned", rules=LORA_RULES)
    cfg["model"].update(scan_layers=True, remat="full")
    cfg["checkpoint"].update(export_best_hf=True, export_format="peft")
    assert finetune(cfg, ["train.max_steps=2"], data=data).steps == 2
    result = finetune(cfg, data=data)                     # the same run directory: resumes at step 2
    assert result.steps == 4

    template = build(cfg, data=data).initial_state
    with jt.Checkpointer(os.path.join(result.paths["run_dir"], "checkpoints")) as ckpt:
        state = ckpt.restore(ckpt.best_step(), template=template)[0]
    query = lambda p: p["bert"]["encoder"]["layer"]["attention"]["self"]["query"]["kernel"]
    assert query(state.params.params).shape == (2, 32, 32) and query(state.params.adapters).lora_a.shape == (2, 32, 2)

    written = hub.read_weights(result.paths["export"])
    assert {f"bert.encoder.layer.{i}.attention.self.query.weight" for i in range(2)} <= set(written)
    adapter = _read_safetensors(Path(result.paths["adapter"]) / "adapter_model.safetensors")
    assert {f"base_model.model.bert.encoder.layer.{i}.attention.self.value.lora_B.weight" for i in range(2)} <= set(adapter)
    model, exported = jt.from_pretrained(result.paths["export"], task="sequence_classification", scan_layers=True)
    adapters, _ = jt.load_peft(result.paths["adapter"], model.config, "sequence_classification",
                               params=exported["params"])
    for a, b in zip(jax.tree.leaves(jt.merge_lora(state.params)), jax.tree.leaves(jt.merge_lora(exported["params"],
                                                                                                  adapters))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
