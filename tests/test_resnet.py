"""ResNet parity with Hugging Face transformers (PyTorch, CPU, float32).

Tiny random ``ResNetForImageClassification`` checkpoints with non-trivial BatchNorm statistics are
written with ``save_pretrained`` and loaded by jaxtune. Tolerance: max abs difference <= 1e-4 in fp32.
"""
import copy
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxtune import hub
from jaxtune.models import resnet
from jaxtune.models.family import flatten_paths

TOL = 5e-6  # float32 max abs diff to PyTorch: logits, features, running stats (measured <= 1.3e-6; README)
TASK = "image_classification"

CONFIGS = {
    "basic": {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic"},
    "bottleneck": {"embedding_size": 8, "hidden_sizes": [16, 32], "depths": [1, 2], "layer_type": "bottleneck"},
    "bottleneck_downsample_gelu": {"embedding_size": 8, "hidden_sizes": [16, 32], "depths": [2, 1],
                                   "layer_type": "bottleneck", "downsample_in_first_stage": True,
                                   "downsample_in_bottleneck": True, "hidden_act": "gelu"},
}


def _images(seed, batch=2, size=32):
    return np.random.default_rng(seed).normal(size=(batch, 3, size, size)).astype(np.float32)


def _nhwc(x_nchw):
    return jnp.asarray(x_nchw.transpose(0, 2, 3, 1))


def _torch_logits(model, x_nchw):
    with torch.no_grad():
        return model(torch.from_numpy(x_nchw)).logits.numpy()


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def _make_checkpoint(directory, name, num_labels=5):
    """A random torch ResNet with random BN affine params and running stats from 3 train batches."""
    torch.manual_seed(0)
    config = transformers.ResNetConfig(num_labels=num_labels, **CONFIGS[name])
    model = transformers.ResNetForImageClassification(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
        model.train()
        for seed in range(3):
            model(torch.from_numpy(_images(100 + seed)))
    model.eval()
    model.save_pretrained(directory)
    return model


def _load(directory, task=TASK, **kwargs):
    """jaxtune.hub.from_pretrained -> (config, model, variables, report)."""
    model, variables, report = hub.from_pretrained(directory, task=task, return_report=True, **kwargs)
    return model.config, model, variables, report


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    torch_model = _make_checkpoint(directory, request.param)
    return directory, torch_model


def test_load_uses_every_tensor(checkpoint):
    directory, _ = checkpoint
    config, model, variables, report = _load(directory)
    assert isinstance(model, resnet.ResNetForImageClassification)
    assert report.initialized == () and report.ignored == () and report.resized == ()
    assert set(report.loaded) == set(flatten_paths(variables))
    assert {"params", "batch_stats"} == set(variables)
    # num_batches_tracked is consumed (not reported as ignored) but has no Flax counterpart
    tensors = safetensors.numpy.load_file(str(directory / "model.safetensors"))
    _, used = resnet.FAMILY.to_flax(config, tensors, TASK)
    assert used == set(tensors) and any(n.endswith("num_batches_tracked") for n in tensors)


def test_eval_logits_match_torch(checkpoint):
    directory, torch_model = checkpoint
    _, model, variables, _ = _load(directory)
    x = _images(0)
    logits = model.apply(variables, _nhwc(x))
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    assert _max_diff(logits, _torch_logits(torch_model, x)) <= TOL


def test_train_forward_updates_batch_stats_like_torch(checkpoint):
    directory, torch_model = checkpoint
    config, model, variables, _ = _load(directory)
    x = _images(1)
    logits, updates = model.apply(variables, _nhwc(x), train=True, mutable=["batch_stats"])
    torch_model = copy.deepcopy(torch_model).train()     # keep the shared fixture's stats intact
    with torch.no_grad():
        torch_logits = torch_model(torch.from_numpy(x)).logits.numpy()
    assert _max_diff(logits, torch_logits) <= TOL
    saved = resnet.FAMILY.to_hf(config, {"params": variables["params"], **updates}, TASK)
    state = torch_model.state_dict()
    stats = [name for name in saved if name.endswith(("running_mean", "running_var"))]
    assert stats
    for name in stats:
        assert _max_diff(saved[name], state[name].numpy()) <= TOL, name
    # the update really changed the statistics (the check above is not vacuous)
    before = resnet.FAMILY.to_hf(config, variables, TASK)
    assert max(_max_diff(saved[n], before[n]) for n in stats) > 1e-3


def test_frozen_bn_uses_and_keeps_running_stats(checkpoint):
    directory, _ = checkpoint
    _, model, variables, _ = _load(directory)
    frozen = model.clone(frozen_bn=True)
    x = _nhwc(_images(2))
    eval_logits = model.apply(variables, x)
    train_logits = frozen.apply(variables, x, train=True)       # no mutable needed
    assert _max_diff(train_logits, eval_logits) <= 1e-6
    _, updates = frozen.apply(variables, x, train=True, mutable=["batch_stats"])
    for path, value in flatten_paths(updates["batch_stats"]).items():
        np.testing.assert_array_equal(value, flatten_paths(variables["batch_stats"])[path])
    unfrozen_logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert _max_diff(unfrozen_logits, eval_logits) > 1e-3


def test_backbone_task_matches_torch_pooler(checkpoint):
    directory, torch_model = checkpoint
    _, model, variables, report = _load(directory, task=None)
    assert isinstance(model, resnet.ResNetModel)
    assert report.ignored == ("classifier.1.bias", "classifier.1.weight") and report.initialized == ()
    x = _images(3)
    features, pooled = model.apply(variables, _nhwc(x))
    with torch.no_grad():
        out = torch_model.resnet(torch.from_numpy(x))
    assert _max_diff(features, out.last_hidden_state.numpy().transpose(0, 2, 3, 1)) <= TOL
    assert _max_diff(pooled, out.pooler_output.numpy()[:, :, 0, 0]) <= TOL


def test_round_trip_to_transformers(checkpoint, tmp_path):
    directory, torch_model = checkpoint
    config, _, variables, _ = _load(directory)
    saved = resnet.FAMILY.to_hf(config, jax.device_get(variables), TASK)
    original = safetensors.numpy.load_file(str(directory / "model.safetensors"))
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in original.items()}
    safetensors.numpy.save_file(saved, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(resnet.FAMILY.config_to_hf(config, TASK, None)))
    reloaded, info = transformers.ResNetForImageClassification.from_pretrained(
        tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    reloaded.eval()
    x = _images(4)
    assert _max_diff(_torch_logits(reloaded, x), _torch_logits(torch_model, x)) <= TOL


def test_new_head_on_bare_backbone_checkpoint(tmp_path):
    torch.manual_seed(1)
    backbone = transformers.ResNetModel(transformers.ResNetConfig(**CONFIGS["basic"])).eval()
    backbone.save_pretrained(tmp_path)
    config, model, variables, report = _load(tmp_path, num_labels=7)
    assert config.num_labels == 7 and len(resnet.config_to_hf(config, TASK)["id2label"]) == 7
    assert report.initialized == ("params/classifier/bias", "params/classifier/kernel")
    assert report.ignored == ()
    x = _images(6)
    logits = model.apply(variables, _nhwc(x))
    assert logits.shape == (2, 7)
    with torch.no_grad():
        pooled = backbone(torch.from_numpy(x)).pooler_output.numpy()[:, :, 0, 0]
    head = variables["params"]["classifier"]
    assert _max_diff(logits, pooled @ np.asarray(head["kernel"]) + np.asarray(head["bias"])) <= TOL


def test_head_paths_are_exactly_the_classifier():
    config = resnet.resnet_config(18, num_labels=3)
    shapes = jax.eval_shape(resnet.build(config, TASK).init, jax.random.key(0),
                            *resnet.example_inputs(config, TASK))
    head = [p for p in flatten_paths(shapes) if any(re.fullmatch(r, p) for r in resnet.FAMILY.head_paths)]
    assert sorted(head) == ["params/classifier/bias", "params/classifier/kernel"]


def test_saving_params_only_is_refused(checkpoint, tmp_path):
    directory, _ = checkpoint
    config, _, variables, _ = _load(directory)
    with pytest.raises(ValueError, match="batch_stats"):
        hub.save_pretrained(variables["params"], config, tmp_path, task=TASK)


def test_config_round_trip_and_errors():
    config = resnet.resnet_config(18, num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"})
    hf = resnet.config_to_hf(config, TASK)
    assert hf["architectures"] == ["ResNetForImageClassification"]
    assert hf["id2label"] == {"0": "cat", "1": "dog", "2": "fox"}
    assert resnet.config_to_hf(config, TASK, num_labels=2)["id2label"] == {"0": "LABEL_0", "1": "LABEL_1"}
    assert resnet.config_to_hf(config, None)["architectures"] == ["ResNetModel"]
    assert resnet.config_from_hf(hf) == config
    assert transformers.ResNetConfig(**hf).depths == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="layer_type"):
        resnet.ResNetConfig(layer_type="wide")
    with pytest.raises(ValueError, match="ResNet-20"):
        resnet.resnet_config(20)
    with pytest.raises(ValueError, match="no task 'masked_lm'"):
        resnet.build(config, "masked_lm")
    with pytest.raises(ValueError, match="NHWC"):
        model = resnet.build(config, TASK)
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 3, 32, 32)))


@pytest.mark.parametrize("depth,num_params", [(18, 11_689_512), (50, 25_557_032)])
def test_standard_sizes_match_torchvision_counts(depth, num_params):
    config = resnet.resnet_config(depth)
    shapes = jax.eval_shape(resnet.build(config, TASK).init, jax.random.key(0),
                            *resnet.example_inputs(config, TASK))
    assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"])) == num_params


def test_layer_ids_cover_resnet50_and_rules_match():
    config = resnet.resnet_config(50)
    model = resnet.build(config, TASK)
    shapes = jax.eval_shape(model.init, jax.random.key(0), *resnet.example_inputs(config, TASK))
    paths = list(flatten_paths(shapes["params"]))
    ids = {path: model.layer_ids(path) for path in paths}
    assert set(ids.values()) == set(range(config.num_stages + 2))
    assert ids["resnet/embedder/embedder/convolution/kernel"] == 0
    assert ids["resnet/encoder/stages_2/layers_5/layer_2/normalization/scale"] == 3
    assert ids["classifier/kernel"] == 5
    assert resnet.layer_ids("encoder/stages_3/layers_0/shortcut/convolution/kernel", 4) == 4
    with pytest.raises(KeyError, match="stage '4'"):
        resnet.layer_ids("resnet/encoder/stages_4/layers_0/layer_0/convolution/kernel", 4)
    with pytest.raises(KeyError, match="unknown parameter path 'pooler/kernel'"):
        resnet.layer_ids("pooler/kernel", 4)

    rules = resnet.default_rules()
    first = {p: next(i for i, (regex, _) in enumerate(rules) if re.fullmatch(regex, p)) for p in paths}
    assert set(first.values()) == set(range(len(rules)))       # every rule matches something
    no_decay = {p for p, i in first.items() if rules[i][1].weight_decay == 0.0}
    assert "classifier/bias" in no_decay and "resnet/embedder/embedder/normalization/scale" in no_decay
    assert "classifier/kernel" not in no_decay
    assert not any(p.endswith("convolution/kernel") for p in no_decay)


@pytest.mark.parametrize("checkpoint", ["bottleneck"], indirect=True)
def test_bfloat16_compute_keeps_float32_params(checkpoint):
    directory, _ = checkpoint
    config, _, variables, _ = _load(directory)
    model = resnet.build(config, TASK, None, jnp.bfloat16)
    x = _nhwc(_images(5))
    logits = model.apply(variables, x)
    reference = resnet.build(config, TASK).apply(variables, x)
    assert logits.dtype == jnp.bfloat16
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    assert _max_diff(logits, reference) <= 0.1 * (1.0 + float(jnp.max(jnp.abs(reference))))
