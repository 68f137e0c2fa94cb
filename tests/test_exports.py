"""Exports load where they claim to, with the data's label names (CPU, float32).

* PyTorch-ecosystem CNNs (MobileNetV2, EfficientNet-Lite, VGG: tiny random configs with random
  batch-norm statistics): ``model.pth`` is read with ``torch.load(weights_only=True)`` into the
  reference module (``tests/_torch_reference.py``, or the ``efficientnet_lite_pytorch`` package's
  ``EfficientNet`` on the same stages) with ``load_state_dict(strict=True)``; logits agree to
  1e-4 max abs difference (relative to max(1, largest |logit|)); transformers refuses the directory;
  ``from_pretrained`` gives back identical variables.
* HF families (BERT, ResNet) saved with ``labels=``: transformers loads them with those
  ``id2label`` names and equal logits (1e-4 max abs difference).
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from _torch_reference import VGG, MobileNetV2
from jaxtune import UserError, hub
from jaxtune.models import bert, efficientnet, mobilenet, resnet, vgg
from jaxtune.models.family import export_labels, flatten_paths, unflatten_paths
from jaxtune.torch_checkpoint import load_torch_state_dict
from jaxtune.torch_writer import save_torch_state_dict

TOL = 1e-4
LABELS = ("cat", "dog", "bird")
TASK = "image_classification"
TINY_MOBILENET = mobilenet.MobileNetV2Config(inverted_residual_setting=((1, 8, 1, 1), (2, 16, 2, 2), (2, 24, 1, 2)),
                                             stem_channels=8, last_channels=32, num_labels=3)
# (repeats, kernel, stride, expand ratio, in, out) per stage; stem 32 and head 1280 as in every Lite model.
TINY_EFFICIENTNET = efficientnet.EfficientNetLiteConfig(stages=((1, 3, 1, 1, 32, 16), (2, 5, 2, 6, 16, 24)),
                                                        num_labels=3)
TINY_VGG = vgg.VGGConfig(layers=(8, "M", 16, "M"), batch_norm=True, hidden_size=16, num_labels=3)


def _random_variables(model, inputs, seed):
    """Random values for every variable of ``model`` (no ``init`` to compile): kernels scaled by
    1/sqrt(fan-in), random biases, norm scales and batch-norm statistics (fresh ones would hide
    layout errors)."""
    rng = np.random.default_rng(seed)
    shapes = flatten_paths(jax.eval_shape(model.init, jax.random.key(0), *inputs))
    ranges = {"bias": (-0.5, 0.5), "scale": (0.5, 1.5), "mean": (-0.5, 0.5), "var": (0.5, 2.0)}

    def value(path, shape):
        low_high = ranges.get(path.rsplit("/", 1)[-1])
        if low_high is not None:
            return rng.uniform(*low_high, shape)
        return rng.normal(size=shape) / np.sqrt(max(1, int(np.prod(shape[:-1]))))

    return unflatten_paths({p: jnp.asarray(value(p, s.shape), s.dtype) for p, s in shapes.items()})


def _images(seed, size=32):
    return np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype(np.float32)


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _tiny_cnn(family_module, config):
    model = family_module.FAMILY.build(config, TASK)
    return model, _random_variables(model, (jnp.zeros((1, 32, 32, 3)),), seed=1)


def _mobilenet():
    model, variables = _tiny_cnn(mobilenet, TINY_MOBILENET)
    reference = MobileNetV2(3, inverted_residual_setting=TINY_MOBILENET.inverted_residual_setting,
                            stem_channels=8, last_channels=32)
    return model, variables, reference


def _efficientnet():
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.utils import BlockDecoder, efficientnet_lite

    model, variables = _tiny_cnn(efficientnet, TINY_EFFICIENTNET)
    _, global_params = efficientnet_lite(1.0, 1.0, 224, num_classes=3)
    blocks = BlockDecoder.decode(["r1_k3_s11_e1_i32_o16", "r2_k5_s22_e6_i16_o24"])  # TINY_EFFICIENTNET's stages
    return model, variables, EfficientNet(blocks, global_params)


def _vgg():
    model, variables = _tiny_cnn(vgg, TINY_VGG)
    return model, variables, VGG(TINY_VGG.layers, batch_norm=True, hidden=16, num_classes=3)


@pytest.fixture(scope="module", params=["mobilenet_v2", "efficientnet_lite", "vgg"])
def cnn_export(request, tmp_path_factory):
    """(model, variables, reference torch module, export directory) of one family, saved with LABELS."""
    model, variables, reference = {"mobilenet_v2": _mobilenet, "efficientnet_lite": _efficientnet,
                                   "vgg": _vgg}[request.param]()
    directory = tmp_path_factory.mktemp(request.param)
    hub.save_pretrained(variables, model.config, directory, task=TASK, labels=LABELS)
    return model, variables, reference.eval(), directory


def test_cnn_export_loads_into_the_torch_module_with_equal_logits(cnn_export):
    model, variables, reference, directory = cnn_export
    state = torch.load(directory / "model.pth", weights_only=True)
    reference.load_state_dict(state, strict=True)  # every name and shape is the reference module's
    x = _images(2)
    logits = np.asarray(jax.jit(model.apply)(variables, x))
    with torch.no_grad():
        ref = reference(_nchw(x)).numpy()
    assert logits.shape == ref.shape == (2, 3)
    assert np.abs(logits - ref).max() <= TOL * max(1.0, np.abs(ref).max())
    # model.safetensors (what jaxtune reads) holds the same tensors.
    import safetensors.numpy

    saved = safetensors.numpy.load_file(str(directory / "model.safetensors"))
    assert set(saved) == set(state)
    assert all(np.array_equal(saved[k], state[k].numpy()) for k in saved)


def test_cnn_export_round_trips_through_jaxtune(cnn_export):
    model, variables, _, directory = cnn_export
    loaded_model, loaded = hub.from_pretrained(directory, task=TASK)
    assert loaded_model.config == model.config and loaded_model.num_labels == 3
    assert jax.tree.all(jax.tree.map(np.array_equal, loaded, variables))


def test_cnn_export_is_refused_by_transformers_and_names_its_labels(cnn_export):
    _, _, _, directory = cnn_export
    config = json.loads((directory / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "bird"} and config["label2id"]["bird"] == 2
    assert config["torch_state_dict"] == "model.pth" and "architectures" not in config
    # Not a transformers model: AutoModel refuses it instead of building random weights (the old
    # model_type "mobilenet_v2" made it build MobileNetV2ForImageClassification with 314 missing keys).
    with pytest.raises(ValueError, match="does not recognize this architecture"):
        transformers.AutoModelForImageClassification.from_pretrained(directory)


def test_new_head_size_exports_and_older_exports_still_load(tmp_path):
    # mobilenet_v2(num_labels=5) on a 1000-label config: model.config must say 5, or the export
    # would reload with a re-initialised head.
    model = mobilenet.mobilenet_v2(dataclasses.replace(TINY_MOBILENET, num_labels=1000), num_labels=5)
    assert model.config.num_labels == 5
    variables = _random_variables(model, (jnp.zeros((1, 32, 32, 3)),), seed=3)
    hub.save_pretrained(variables, model.config, tmp_path, task=TASK)
    # ... written as jaxtune did before (model_type "mobilenet_v2", no model.pth): still loads.
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "mobilenet_v2"}))
    (tmp_path / "model.pth").unlink()
    _, loaded, report = hub.from_pretrained(tmp_path, task=TASK, return_report=True)
    assert not report.initialized and not report.resized
    assert jax.tree.all(jax.tree.map(np.array_equal, loaded, variables))


def _tiny_bert():
    config = bert.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=24, max_position_embeddings=16)
    model = bert.build(config, "sequence_classification", num_labels=3)
    return model, _random_variables(model, bert.example_inputs(config, "sequence_classification"), seed=2)


def test_bert_export_carries_label_names_into_transformers(tmp_path):
    model, variables = _tiny_bert()
    hub.save_pretrained(variables, model.config, tmp_path, task="sequence_classification",
                        labels=["negative", "neutral", "positive"])
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    ids = np.random.default_rng(3).integers(0, 64, size=(2, 8)).astype(np.int32)
    mask = np.ones_like(ids)
    with torch.no_grad():
        ref = reloaded(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask)).logits.numpy()
    logits = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(logits - ref).max() <= TOL
    again, _ = hub.from_pretrained(tmp_path, task="sequence_classification")
    assert again.config.labels == ("negative", "neutral", "positive")


def test_resnet_export_loads_in_transformers_with_equal_logits_and_labels(tmp_path):
    config = resnet.ResNetConfig(embedding_size=8, hidden_sizes=(8, 16), depths=(1, 1), layer_type="basic")
    model = resnet.build(config, TASK, num_labels=3)
    variables = _random_variables(model, (jnp.zeros((1, 32, 32, 3)),), seed=4)
    hub.save_pretrained(variables, model.config, tmp_path, task=TASK, labels=LABELS)
    reloaded, info = transformers.AutoModelForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(reloaded).__name__ == "ResNetForImageClassification"
    assert reloaded.config.id2label == dict(enumerate(LABELS))
    x = _images(5)
    with torch.no_grad():
        ref = reloaded.eval()(_nchw(x)).logits.numpy()
    assert np.abs(np.asarray(jax.jit(model.apply)(variables, x)) - ref).max() <= TOL


def test_bad_labels_are_refused_before_anything_is_written(tmp_path):
    model = bert.build(bert.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=24), "sequence_classification", num_labels=3)
    variables = {"params": {}}  # labels are checked before any tensor is converted
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"2 label names \['a', 'b'\] for a head of 3 outputs"):
        hub.save_pretrained(variables, model.config, out, task="sequence_classification", labels=["a", "b"])
    with pytest.raises(UserError, match=r"repeated: \['a'\]"):
        hub.save_pretrained(variables, model.config, out, task="sequence_classification", labels=["a", "b", "a"])
    with pytest.raises(UserError, match="task 'masked_lm' has none"):
        hub.save_pretrained(variables, model.config, out, task="masked_lm", labels=["a", "b", "c"])
    assert not out.exists()


def test_export_labels_pad_a_wider_head():
    assert export_labels(("neg", "pos"), None, "sequence_classification") == ("neg", "pos")
    assert export_labels(("neg", "pos"), 3, "token_classification") == ("neg", "pos", "LABEL_2")
    assert export_labels(("neg", "pos"), None, "question_answering") is None
    assert export_labels((), 1, "sequence_classification") is None


def test_torch_state_dict_writer_round_trips_dtypes_and_layouts(tmp_path):
    import ml_dtypes

    rng = np.random.default_rng(0)
    tensors = {
        "w": rng.normal(size=(3, 4)).astype(np.float32),
        "transposed": rng.normal(size=(4, 3)).astype(np.float32).T,  # not C-contiguous
        "num_batches_tracked": np.array(7, np.int64),  # 0-d
        "half": rng.normal(size=5).astype(np.float16),
        "bf16": rng.normal(size=(2, 2)).astype(ml_dtypes.bfloat16),
        "mask": np.array([True, False]),
        "big_endian": np.arange(3, dtype=">f4"),
        "empty": np.zeros((0, 3), np.float32),
    }
    path = save_torch_state_dict(tensors, tmp_path / "state.pth")
    loaded = torch.load(path, weights_only=True)
    assert list(loaded) == list(tensors)
    for name, array in tensors.items():
        got = loaded[name].float().numpy() if loaded[name].dtype == torch.bfloat16 else loaded[name].numpy()
        assert got.shape == array.shape and np.array_equal(got, np.asarray(array).astype(got.dtype)), name
    back = load_torch_state_dict(path)  # jaxtune's own torch-free reader
    assert all(np.array_equal(back[k], np.asarray(v).astype(back[k].dtype)) for k, v in tensors.items())
    with pytest.raises(TypeError, match="'c' has dtype complex64"):
        save_torch_state_dict({"c": np.zeros(2, np.complex64)}, tmp_path / "bad.pth")
