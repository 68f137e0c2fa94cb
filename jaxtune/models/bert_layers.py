"""The building blocks of the BERT encoder (:mod:`jaxtune.models.bert`): embeddings, attention,
feed-forward, the transformer layer, the encoder (unrolled ``layer_<i>`` or one scan over a stacked
``layer``), the pooler and the masked-LM head. The models, their config and the checkpoint names
live in :mod:`jaxtune.models.bert`, which re-exports these classes.

Example::

    layer = BertLayer(config, jnp.float32)
    variables = layer.init(jax.random.key(0), x, mask, True)
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtune.models.attention import attention
from jaxtune.models.dense import flat_dot_general
from jaxtune.models.embed import Embed
from jaxtune.models.layer_scan import remat_layer, scan_layers

# HF ``hidden_act`` name -> activation. "gelu" is the exact (erf) GELU, as in PyTorch.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def dense(config: Any, features: int, dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name, dot_general=flat_dot_general,
                    kernel_init=nn.initializers.normal(config.initializer_range))


def layer_norm(config: Any, dtype, name: str = "LayerNorm") -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=jnp.float32, name=name)


class BertEmbeddings(nn.Module):
    """Word + absolute position + token type embeddings, LayerNorm, dropout."""

    config: Any   # jaxtune.models.bert.BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)

        def embed(num, name):
            return Embed(num, cfg.hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
                            embedding_init=init, name=name)

        positions = jnp.arange(input_ids.shape[-1])[None, :]
        x = (embed(cfg.vocab_size, "word_embeddings")(input_ids)
             + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
             + embed(cfg.max_position_embeddings, "position_embeddings")(positions))
        x = layer_norm(cfg, self.dtype)(x)
        return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention through :func:`jaxtune.models.attention.attention`: cuDNN flash
    attention on NVIDIA GPUs in bf16/fp16 without attention dropout, XLA otherwise
    (``BertConfig.attention_implementation``). Set ``attention_probs_dropout_prob=0`` to train on
    the fused kernel; with attention dropout active the probabilities are dropped as in PyTorch.
    """

    config: Any   # jaxtune.models.bert.BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        cfg = self.config
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads

        def project(name):
            y = dense(cfg, cfg.hidden_size, self.dtype, name)(x)
            return y.reshape(*y.shape[:-1], heads, head_dim)       # (batch, seq, heads, head_dim)

        q, k, v = project("query"), project("key"), project("value")
        rate = cfg.attention_probs_dropout_prob
        rng = None if deterministic or rate == 0.0 else self.make_rng("dropout")
        out = attention(q, k, v, mask=mask, dropout_rate=rate, dropout_rng=rng,
                        implementation=cfg.attention_implementation)
        return out.reshape(*out.shape[:-2], cfg.hidden_size)


class BertAddNorm(nn.Module):
    """dense -> dropout -> residual add -> LayerNorm (HF BertSelfOutput / BertOutput)."""

    config: Any   # jaxtune.models.bert.BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, residual, deterministic: bool):
        x = dense(self.config, self.config.hidden_size, self.dtype, "dense")(x)
        x = nn.Dropout(self.config.hidden_dropout_prob)(x, deterministic=deterministic)
        return layer_norm(self.config, self.dtype)(x + residual)


class BertAttention(nn.Module):
    """attention/self (multi-head attention) followed by attention/output (dense, residual, norm)."""

    config: Any   # jaxtune.models.bert.BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        y = BertSelfAttention(self.config, self.dtype, name="self")(x, mask, deterministic)
        return BertAddNorm(self.config, self.dtype, name="output")(y, x, deterministic)


class BertIntermediate(nn.Module):
    """The feed-forward expansion: dense to ``intermediate_size`` and the activation."""

    config: Any   # jaxtune.models.bert.BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = dense(self.config, self.config.intermediate_size, self.dtype, "dense")(x)
        return ACTIVATIONS[self.config.hidden_act](x)


class BertLayer(nn.Module):
    """One post-LN transformer block."""

    config: Any   # jaxtune.models.bert.BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        x = BertAttention(self.config, self.dtype, name="attention")(x, mask, deterministic)
        h = BertIntermediate(self.config, self.dtype, name="intermediate")(x)
        return BertAddNorm(self.config, self.dtype, name="output")(h, x, deterministic)


class BertEncoder(nn.Module):
    """``num_hidden_layers`` blocks named ``layer_0``, ``layer_1``, ...; with ``config.scan_layers``
    one tree ``layer`` whose leaves have a leading layer axis, run by one scan
    (:func:`jaxtune.models.layer_scan.scan_layers`). ``config.remat`` rematerialises each block.
    ``frozen_layers`` (scanned only): the bottom k blocks run under ``stop_gradient`` in a scan of
    their own, so a step computes no weight gradient for them."""

    config: Any   # jaxtune.models.bert.BertConfig
    dtype: Any = jnp.float32
    frozen_layers: int = 0

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        cfg = self.config
        if cfg.scan_layers:
            return scan_layers(self, BertLayer(cfg, self.dtype, parent=None), x, mask, length=cfg.num_hidden_layers,
                               deterministic=deterministic, remat=cfg.remat, frozen=self.frozen_layers,
                               unroll=cfg.scan_unroll)
        layer_cls = remat_layer(BertLayer, cfg.remat, static_argnums=(3,))
        for i in range(cfg.num_hidden_layers):
            x = layer_cls(cfg, self.dtype, name=f"layer_{i}")(x, mask, deterministic)
        return x


class BertPooler(nn.Module):
    """tanh(dense(hidden state of the first token))."""

    config: Any   # jaxtune.models.bert.BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(dense(self.config, self.config.hidden_size, self.dtype, "dense")(x[:, 0]))


class BertPredictionTransform(nn.Module):
    """dense -> activation -> LayerNorm before the masked-LM decoder."""

    config: Any   # jaxtune.models.bert.BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = dense(self.config, self.config.hidden_size, self.dtype, "dense")(x)
        return layer_norm(self.config, self.dtype)(ACTIVATIONS[self.config.hidden_act](x))


class BertLMPredictionHead(nn.Module):
    """transform, then the decoder tied to the word embeddings, plus a per-token ``bias``."""

    config: Any   # jaxtune.models.bert.BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, word_embeddings):
        x = BertPredictionTransform(self.config, self.dtype, name="transform")(x)
        bias = self.param("bias", nn.initializers.zeros, (self.config.vocab_size,), jnp.float32)
        logits = jnp.einsum("...h,vh->...v", x, word_embeddings.astype(self.dtype))
        return logits + bias.astype(self.dtype)


class BertMLMHead(nn.Module):
    """Scope ``cls`` holding ``predictions`` (the HF ``BertOnlyMLMHead`` layout)."""

    config: Any   # jaxtune.models.bert.BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, word_embeddings):
        return BertLMPredictionHead(self.config, self.dtype, name="predictions")(x, word_embeddings)

