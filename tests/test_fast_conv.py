"""The CPU forms of the mobile CNNs' depthwise and 1x1 convolutions equal XLA's convolution: values,
gradients, under vmap, in bfloat16, and as drop-in layers with nn.Conv's parameter."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxtune as jt
from jaxtune.models.fast_conv import (DepthwiseConv, PointwiseConv, conv_implementation, depthwise_conv,
                                     pointwise_conv)

RNG = np.random.default_rng(0)


def _normal(*shape, dtype=jnp.float32):
    return jnp.asarray(RNG.standard_normal(shape), dtype)


@pytest.mark.parametrize("size,k,strides,padding", [
    (8, 3, 1, [(1, 1), (1, 1)]), (8, 3, 2, [(1, 1), (1, 1)]), (7, 3, 2, "SAME"), (8, 5, 2, "SAME"),
    (9, 5, 1, "SAME"), (7, 3, 1, "VALID"), (6, 3, 2, [(0, 1), (2, 0)])])
def test_depthwise_forms_agree_in_value_and_gradient(size, k, strides, padding):
    x, kernel = _normal(2, size, size + 1, 5), _normal(k, k, 1, 5)
    cpu, conv = (lambda x, w, i=i: depthwise_conv(x, w, strides, padding, implementation=i) for i in ("cpu", "conv"))
    np.testing.assert_allclose(cpu(x, kernel), conv(x, kernel), rtol=1e-5, atol=1e-5)   # float32
    loss = lambda f: jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1))(x, kernel)
    for got, want in zip(loss(cpu), loss(conv)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_pointwise_forms_agree_in_value_and_gradient_under_vmap():
    x, kernel = _normal(3, 2, 4, 4, 6), _normal(3, 1, 1, 6, 7)      # 3 members, each its own input and kernel
    forms = [jax.vmap(lambda x, w, i=i: pointwise_conv(x, w, implementation=i)) for i in ("cpu", "conv")]
    np.testing.assert_allclose(forms[0](x, kernel), forms[1](x, kernel), rtol=1e-5, atol=1e-5)   # float32
    grads = [jax.grad(lambda x, w, f=f: jnp.sum(jnp.tanh(f(x, w))), argnums=1)(x, kernel) for f in forms]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_depthwise_in_bfloat16_accumulates_in_float32_and_returns_bfloat16():
    x, kernel = _normal(2, 6, 6, 4, dtype=jnp.bfloat16), _normal(5, 5, 1, 4, dtype=jnp.bfloat16)
    got = depthwise_conv(x, kernel, 1, "SAME", implementation="cpu")
    assert got.dtype == jnp.bfloat16
    want = depthwise_conv(x.astype(jnp.float32), kernel.astype(jnp.float32), 1, "SAME", implementation="conv")
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=1e-2, atol=2e-2)   # one bf16 rounding of the sum


def test_layers_are_drop_ins_for_nn_conv_with_the_same_parameter():
    x = _normal(2, 6, 6, 4)
    pairs = [(DepthwiseConv(3, 2, "SAME"), nn.Conv(4, (3, 3), 2, "SAME", feature_group_count=4, use_bias=False)),
             (PointwiseConv(7), nn.Conv(7, (1, 1), use_bias=False))]
    for layer, reference in pairs:
        variables = reference.init(jax.random.key(0), x)
        assert jax.tree.map(jnp.shape, layer.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, variables)
        np.testing.assert_allclose(layer.apply(variables, x), reference.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_bad_kernels_and_implementations_are_named():
    x = _normal(1, 4, 4, 3)
    with pytest.raises(jt.UserError, match=r"kernel of shape \(k, k, 1, 3\).*\(3, 3, 3, 3\)"):
        depthwise_conv(x, _normal(3, 3, 3, 3))
    with pytest.raises(jt.UserError, match=r"kernel of shape \(1, 1, 3, D\).*\(3, 3, 3, 5\)"):
        pointwise_conv(x, _normal(3, 3, 3, 5))
    with pytest.raises(jt.UserError, match="implementation='fast'.*'auto', 'cpu', 'conv'"):
        depthwise_conv(x, _normal(3, 3, 1, 3), implementation="fast")
    with pytest.raises(jt.UserError, match="implementation='xla'"):
        with conv_implementation("xla"):
            pass


@pytest.mark.parametrize("family", ["mobilenet_v2", "efficientnet_lite"])
def test_mobile_cnns_train_alike_with_either_form(family):
    """A tiny MobileNetV2 (symmetric padding, 3x3) and EfficientNet-Lite (TF "SAME" padding, 3x3 and 5x5):
    train-mode logits and every parameter gradient agree between the CPU forms and XLA's convolutions
    (float32; differences are summation order)."""
    from jaxtune.models import efficientnet, mobilenet

    if family == "mobilenet_v2":
        model = mobilenet.MobileNetV2(mobilenet.MobileNetV2Config(
            inverted_residual_setting=((1, 8, 1, 1), (2, 16, 2, 2)), stem_channels=8, last_channels=16, dropout=0.0),
            num_labels=3)
    else:
        model = efficientnet.EfficientNetLite(efficientnet.EfficientNetLiteConfig(
            stages=((1, 3, 1, 1, 32, 16), (2, 5, 2, 6, 16, 24)), dropout=0.0), num_labels=3)
    images = _normal(2, 19, 19, 3)
    variables = model.init(jax.random.key(0), images)

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(logits)), logits

    out = {}
    for name in ("cpu", "conv"):
        with conv_implementation(name):
            out[name] = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    np.testing.assert_allclose(out["cpu"][1], out["conv"][1], rtol=1e-4, atol=1e-5)
    for got, want in zip(jax.tree.leaves(out["cpu"][0]), jax.tree.leaves(out["conv"][0])):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
