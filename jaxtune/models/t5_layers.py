"""T5's building blocks in Flax linen: RMS layer norm, attention with relative position buckets,
the (gated) feed-forward block, blocks and stacks, with the cached decoder pass that generation uses.
The model, its config and checkpoint names are in :mod:`jaxtune.models.t5`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtune.models.attention import attention
from jaxtune.models.dense import flat_dot_general

if TYPE_CHECKING:
    from jaxtune.models.t5 import T5Config

# transformers' ACT2FN names used by T5 configs (``feed_forward_proj`` "relu" / "gated-gelu" /
# "gated-silu" ...). "gelu" is the exact erf GELU, "gelu_new" the tanh approximation.
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "silu": nn.silu,
    "swish": nn.silu,
}



def relative_position_bucket(relative_position: jax.Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
    """T5's bucket of ``memory_position - query_position``: exact for small distances, log-spaced
    up to ``max_distance``; in the causal (decoder) case positive distances share bucket 0.

    Example::

        rel = jnp.arange(4)[None, :] - jnp.arange(4)[:, None]
        relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    """
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).astype(relative_position.dtype) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # log of max(distance, 1): the clamp only affects entries the `where` below discards.
    scaled = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
              / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    if_large = jnp.minimum(max_exact + scaled.astype(relative_position.dtype), num_buckets - 1)
    return buckets + jnp.where(is_small, distance, if_large)


def _normal(std: float) -> Callable:
    return nn.initializers.normal(stddev=std)


def _dense(features: int, std: float, dtype, name: str) -> nn.Dense:
    """T5's bias-free projection, run as a 2-D matrix product (:func:`flat_dot_general`)."""
    return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=_normal(std),
                    dot_general=flat_dot_general, name=name)


class T5LayerNorm(nn.Module):
    """RMS norm: ``weight * x / sqrt(mean(x**2) + eps)``, no mean, no bias, statistics in fp32."""

    features: int
    eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.ones, (self.features,), jnp.float32)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return weight.astype(self.dtype) * normed.astype(self.dtype)


class T5Attention(nn.Module):
    """Multi-head attention with T5's parameter names; the first block owns the position bias."""

    config: T5Config
    has_relative_attention_bias: bool = False
    dtype: Any = jnp.float32

    def setup(self):
        c, f = self.config, self.config.initializer_factor
        inner = c.num_heads * c.d_kv

        def dense(features, std, name):
            return _dense(features, f * std, self.dtype, name)

        self.q = dense(inner, (c.d_model * c.d_kv) ** -0.5, "q")
        self.k = dense(inner, c.d_model ** -0.5, "k")
        self.v = dense(inner, c.d_model ** -0.5, "v")
        self.o = dense(c.d_model, inner ** -0.5, "o")
        if self.has_relative_attention_bias:
            self.relative_attention_bias = nn.Embed(
                c.relative_attention_num_buckets, c.num_heads, dtype=self.dtype, param_dtype=jnp.float32,
                embedding_init=_normal(f * c.d_model ** -0.5))

    def _heads(self, x):
        return x.reshape(*x.shape[:-1], self.config.num_heads, self.config.d_kv)

    def project_kv(self, states):
        """Key and value heads ``(batch, length, heads, d_kv)`` of ``states``."""
        return self._heads(self.k(states)), self._heads(self.v(states))

    def compute_bias(self, query_positions, key_positions, bidirectional: bool):
        """Position bias ``(1, heads, queries, keys)`` for absolute positions of queries and keys."""
        rel = key_positions[None, :] - query_positions[:, None]
        buckets = relative_position_bucket(rel, bidirectional, self.config.relative_attention_num_buckets,
                                           self.config.relative_attention_max_distance)
        return jnp.transpose(self.relative_attention_bias(buckets), (2, 0, 1))[None]

    def __call__(self, hidden_states, key, value, position_bias, mask, deterministic: bool = True):
        query = self._heads(self.q(hidden_states))
        rate = self.config.dropout_rate
        rng = None if deterministic or rate == 0.0 else self.make_rng("dropout")
        out = attention(query, key.astype(query.dtype), value.astype(query.dtype), bias=position_bias,
                        mask=mask, scale=1.0, dropout_rate=rate, dropout_rng=rng,
                        implementation=self.config.attention_implementation)
        return self.o(out.reshape(*out.shape[:-2], -1))


class T5LayerSelfAttention(nn.Module):
    """Pre-norm self-attention sublayer; with a ``cache`` it writes its keys/values at ``position``."""

    config: T5Config
    has_relative_attention_bias: bool = False
    dtype: Any = jnp.float32

    def setup(self):
        self.SelfAttention = T5Attention(self.config, self.has_relative_attention_bias, self.dtype)
        self.layer_norm = T5LayerNorm(self.config.d_model, self.config.layer_norm_epsilon, self.dtype)
        self.dropout = nn.Dropout(self.config.dropout_rate)

    def __call__(self, hidden_states, position_bias, mask, cache=None, position=None, deterministic=True):
        normed = self.layer_norm(hidden_states)
        key, value = self.SelfAttention.project_kv(normed)
        if cache is not None:
            start = (0, position, 0, 0)
            key = jax.lax.dynamic_update_slice(cache["key"], key.astype(cache["key"].dtype), start)
            value = jax.lax.dynamic_update_slice(cache["value"], value.astype(cache["value"].dtype), start)
            cache = {"key": key, "value": value}
        out = self.SelfAttention(normed, key, value, position_bias, mask, deterministic)
        return hidden_states + self.dropout(out, deterministic=deterministic), cache


class T5LayerCrossAttention(nn.Module):
    """Pre-norm attention over the encoder output (keys/values projected once per input)."""

    config: T5Config
    dtype: Any = jnp.float32

    def setup(self):
        self.EncDecAttention = T5Attention(self.config, False, self.dtype)
        self.layer_norm = T5LayerNorm(self.config.d_model, self.config.layer_norm_epsilon, self.dtype)
        self.dropout = nn.Dropout(self.config.dropout_rate)

    def project_kv(self, encoder_hidden_states):
        return self.EncDecAttention.project_kv(encoder_hidden_states)

    def __call__(self, hidden_states, key, value, mask, deterministic=True):
        out = self.EncDecAttention(self.layer_norm(hidden_states), key, value, None, mask, deterministic)
        return hidden_states + self.dropout(out, deterministic=deterministic)


class T5DenseActDense(nn.Module):
    """Feed-forward ``wo(act(wi(x)))`` (T5 v1.0, ReLU) or gated ``wo(act(wi_0(x)) * wi_1(x))`` (v1.1)."""

    config: T5Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic=True):
        c, f = self.config, self.config.initializer_factor

        def dense(features, std, name):
            return _dense(features, f * std, self.dtype, name)

        act = _ACTIVATIONS[c.dense_act_fn]
        if c.is_gated_act:
            h = act(dense(c.d_ff, c.d_model ** -0.5, "wi_0")(x)) * dense(c.d_ff, c.d_model ** -0.5, "wi_1")(x)
        else:
            h = act(dense(c.d_ff, c.d_model ** -0.5, "wi")(x))
        h = nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)
        return dense(c.d_model, c.d_ff ** -0.5, "wo")(h)


class T5LayerFF(nn.Module):
    config: T5Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states, deterministic=True):
        normed = T5LayerNorm(self.config.d_model, self.config.layer_norm_epsilon, self.dtype,
                             name="layer_norm")(hidden_states)
        out = T5DenseActDense(self.config, self.dtype, name="DenseReluDense")(normed, deterministic)
        return hidden_states + nn.Dropout(self.config.dropout_rate)(out, deterministic=deterministic)


class T5Block(nn.Module):
    """``layer_0`` self-attention, ``layer_1`` cross-attention (decoder only), last: feed-forward."""

    config: T5Config
    is_decoder: bool
    has_relative_attention_bias: bool = False
    dtype: Any = jnp.float32

    def setup(self):
        layers = [T5LayerSelfAttention(self.config, self.has_relative_attention_bias, self.dtype)]
        if self.is_decoder:
            layers.append(T5LayerCrossAttention(self.config, self.dtype))
        layers.append(T5LayerFF(self.config, self.dtype))
        self.layer = layers

    def project_cross_kv(self, encoder_hidden_states):
        return self.layer[1].project_kv(encoder_hidden_states)

    def __call__(self, hidden_states, position_bias, mask, cross_kv=None, cross_mask=None, cache=None,
                 position=None, deterministic=True):
        hidden_states, cache = self.layer[0](hidden_states, position_bias, mask, cache, position, deterministic)
        if self.is_decoder:
            hidden_states = self.layer[1](hidden_states, *cross_kv, cross_mask, deterministic)
        return self.layer[-1](hidden_states, deterministic), cache


class T5Stack(nn.Module):
    """The encoder or decoder stack; takes embedded tokens, returns final-normed hidden states."""

    config: T5Config
    is_decoder: bool
    dtype: Any = jnp.float32

    def setup(self):
        n = self.config.num_decoder_layers if self.is_decoder else self.config.num_layers
        self.block = [T5Block(self.config, self.is_decoder, i == 0, self.dtype) for i in range(n)]
        self.final_layer_norm = T5LayerNorm(self.config.d_model, self.config.layer_norm_epsilon, self.dtype)
        self.dropout = nn.Dropout(self.config.dropout_rate)

    def _position_bias(self, query_positions, key_positions):
        attention = self.block[0].layer[0].SelfAttention
        return attention.compute_bias(query_positions, key_positions, bidirectional=not self.is_decoder)

    def __call__(self, embeddings, mask, encoder_hidden_states=None, encoder_mask=None, deterministic=True):
        """Full-sequence pass. ``mask``: bool, broadcastable to (batch, 1, length, length)."""
        positions = jnp.arange(embeddings.shape[1])
        bias = self._position_bias(positions, positions)
        hidden = self.dropout(embeddings, deterministic=deterministic)
        for block in self.block:
            cross_kv = block.project_cross_kv(encoder_hidden_states) if self.is_decoder else None
            hidden, _ = block(hidden, bias, mask, cross_kv, encoder_mask, deterministic=deterministic)
        return self.dropout(self.final_layer_norm(hidden), deterministic=deterministic)

    def init_memory(self, encoder_hidden_states, encoder_mask):
        """Cross-attention keys/values of every decoder block, projected once."""
        return {"encoder_mask": encoder_mask,
                "cross": [block.project_cross_kv(encoder_hidden_states) for block in self.block]}

    def decode(self, embeddings, position, memory, cache):
        """Cached pass over ``embeddings`` placed at ``position``; returns (hidden, new cache)."""
        max_length = cache[0]["key"].shape[1]
        query_positions = position + jnp.arange(embeddings.shape[1])
        key_positions = jnp.arange(max_length)
        bias = self._position_bias(query_positions, key_positions)
        mask = (key_positions[None, :] <= query_positions[:, None])[None, None]
        hidden, new_cache = embeddings, []
        for block, cross_kv, layer_cache in zip(self.block, memory["cross"], cache):
            hidden, layer_cache = block(hidden, bias, mask, cross_kv, memory["encoder_mask"], layer_cache, position)
            new_cache.append(layer_cache)
        return self.final_layer_norm(hidden), new_cache

