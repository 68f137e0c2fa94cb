"""jaxtune.models.attention: the implementation choice, the dropout path and cuDNN's input form.

cuDNN itself needs an NVIDIA GPU; here the dispatch is checked with the fused call replaced, and the
inputs prepared for cuDNN are checked to mean the same attention through the XLA kernel."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.models import attention as A
from jaxtune.models.bert import BertConfig
from jaxtune.models.t5 import T5Config


def _qkv(seed=0, b=2, t=5, s=5, n=4, h=8, dtype=np.float32):
    rng = np.random.RandomState(seed)
    q = rng.standard_normal((b, t, n, h)).astype(dtype)
    k, v = rng.standard_normal((2, b, s, n, h)).astype(dtype)
    return q, k, v


@pytest.mark.parametrize("scale", [None, 1.0])
def test_dropout_path_at_zero_rate_equals_xla_kernel(scale):
    """The einsum path (taken under attention dropout) computes what the fused XLA kernel does;
    a rate of 1e-12 keeps every probability. float32, atol 1e-5."""
    q, k, v = _qkv()
    bias = np.random.RandomState(1).standard_normal((1, 4, 5, 5)).astype(np.float32)
    mask = jnp.tril(jnp.ones((5, 5), bool))[None, None]

    @jax.jit
    def both(q, k, v, bias, mask):
        return (A.attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation="xla"),
                A.attention(q, k, v, bias=bias, mask=mask, scale=scale, dropout_rate=1e-12,
                            dropout_rng=jax.random.key(2)))

    fused, explicit = both(q, k, v, bias, mask)
    np.testing.assert_allclose(np.asarray(explicit), np.asarray(fused), rtol=0, atol=1e-5)


def test_dropout_zeroes_and_rescales():
    q, k, v = _qkv()
    out = A.attention(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(0))
    ref = A.attention(q, k, v)
    assert out.shape == ref.shape
    assert not np.allclose(np.asarray(out), np.asarray(ref), atol=1e-3)


@pytest.mark.parametrize("platform,dtype,head_dim,dropout,max_head_dim,expected", [
    ("cuda", jnp.bfloat16, 64, False, 128, "cudnn"),
    ("cuda", jnp.float16, 128, False, 128, "cudnn"),
    ("cuda", jnp.float32, 64, False, 128, "xla"),       # cuDNN's flash kernel is bf16/fp16 only
    ("cuda", jnp.bfloat16, 12, False, 128, "xla"),      # head dim not a multiple of 8
    ("cuda", jnp.bfloat16, 192, False, 128, "xla"),     # over the pre-Hopper limit
    ("cuda", jnp.bfloat16, 192, False, 256, "cudnn"),   # Hopper takes up to 256
    ("cuda", jnp.bfloat16, 64, True, 128, "xla"),       # attention dropout
    ("cpu", jnp.bfloat16, 64, False, 128, "xla"),
    ("gpu", jnp.bfloat16, 64, False, 128, "xla"),       # ROCm
])
def test_choose_implementation(platform, dtype, head_dim, dropout, max_head_dim, expected):
    assert A.choose_implementation(platform=platform, dtype=dtype, head_dim=head_dim, dropout=dropout,
                                   max_head_dim=max_head_dim) == expected


def test_auto_dispatches_to_cudnn_and_falls_back_when_refused(monkeypatch):
    q, k, v = _qkv(dtype=jnp.bfloat16)
    calls = []

    def fake_cudnn(query, key, value, bias, mask, scale):
        calls.append(query.dtype)
        return jnp.zeros_like(query)

    monkeypatch.setattr(A, "current_platform", lambda: "cuda")
    monkeypatch.setattr(A, "_cudnn", fake_cudnn)
    out = A.attention(q, k, v)
    assert calls == [jnp.bfloat16] and not np.asarray(out, np.float32).any()
    A.attention(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32))
    assert len(calls) == 1                                  # fp32 stays on XLA

    def refusing_cudnn(*args):
        raise NotImplementedError("Unsupported sequence length")

    monkeypatch.setattr(A, "_cudnn", refusing_cudnn)
    out = A.attention(q, k, v)
    ref = A.attention(q, k, v, implementation="xla")
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(ref, np.float32))


def test_cudnn_inputs_mean_the_same_attention():
    """BERT's (batch, 1, 1, S) padding mask and T5's (1, heads, T, S) float32 bias, in the form
    prepared for cuDNN, give the same attention (XLA kernel, bfloat16 inputs, atol 1e-2)."""
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(t=6, s=6))
    mask = jnp.asarray([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)[:, None, None, :]
    bias = jnp.asarray(np.random.RandomState(3).standard_normal((1, 4, 6, 6)), jnp.float32)
    fused_bias, fused_mask = A.fused_bias_and_mask(q, k, bias, mask)
    assert fused_mask.shape == (2, 1, 6, 6) and fused_bias.shape == (1, 4, 6, 6)
    assert fused_bias.dtype == jnp.bfloat16
    ref = jax.nn.dot_product_attention(q, k, v, bias=bias.astype(jnp.bfloat16), mask=mask)
    out = jax.nn.dot_product_attention(q, k, v, bias=fused_bias, mask=fused_mask)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=1e-2)
    _, mask_2d = A.fused_bias_and_mask(q, k, None, jnp.ones((6, 6), bool))
    assert mask_2d.shape == (1, 1, 6, 6)


def test_cudnn_refuses_attention_dropout_and_unknown_names():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="no attention dropout"):
        A.attention(q, k, v, dropout_rate=0.1, dropout_rng=jax.random.key(0), implementation="cudnn")
    with pytest.raises(ValueError, match="BertConfig.attention_implementation='flash'"):
        BertConfig(attention_implementation="flash")
    with pytest.raises(ValueError, match="T5Config.attention_implementation"):
        T5Config(attention_implementation="Flash")


def test_attention_implementation_is_not_a_config_json_field():
    bert = BertConfig(attention_implementation="xla")
    assert "attention_implementation" not in bert.to_hf("sequence_classification")
    assert BertConfig.from_hf({**bert.to_hf(), "attention_implementation": "cudnn"}).attention_implementation == "auto"
    t5 = T5Config(attention_implementation="xla")
    assert "attention_implementation" not in t5.to_hf()
    assert dataclasses.replace(T5Config.from_hf(t5.to_hf()), attention_implementation="xla") == t5


@pytest.mark.parametrize("kind,version,expected", [
    ("NVIDIA H100 80GB HBM3", "cuda 12080", "cuda"),
    ("NVIDIA H200", "<unknown>", "cuda"),
    ("AMD Instinct MI300X", "rocm 60300", "gpu"),
])
def test_current_platform_tells_cuda_from_rocm(monkeypatch, kind, version, expected):
    client = type("Client", (), {"platform_version": version})()
    device = type("Device", (), {"device_kind": kind, "client": client})()
    monkeypatch.setattr(A.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(A.jax, "devices", lambda: [device])
    assert A.current_platform() == expected
