"""T5's building blocks in Flax linen: RMS layer norm, attention with relative position buckets,
the (gated) feed-forward block, blocks and stacks, with the cached decoder pass that generation uses.
The model, its config and checkpoint names are in :mod:`jaxtune.models.t5`.

A stack runs its blocks unrolled (``block_0``, ``block_1``, ...; the first owns the relative
position bias) or, with ``config.scan_layers``, as one scan over one tree ``block`` whose leaves
have a leading layer axis (:func:`jaxtune.models.layer_scan.run_stacked`); the position bias is
then the stack's own ``relative_attention_bias``, computed once outside the scan, and a scanned
decoder's generation memory and cache hold every layer on axis 1 (the batch stays on axis 0).
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
from jaxtune.models.embed import Embed
from jaxtune.models.layer_scan import remat_layer, run_stacked, stacked_params_init

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


def _bias_embedding(config: T5Config, dtype) -> Embed:
    """The relative position bias table: one learned scalar per (bucket, head)."""
    return Embed(config.relative_attention_num_buckets, config.num_heads, dtype=dtype, param_dtype=jnp.float32,
                    embedding_init=_normal(config.initializer_factor * config.d_model ** -0.5))


def relative_position_bias(table: nn.Module, config: T5Config, query_positions, key_positions,
                           bidirectional: bool) -> jax.Array:
    """Position bias ``(1, heads, queries, keys)`` from the bias ``table`` (an ``nn.Embed``) for
    absolute positions of queries and keys.

    Example::

        bias = relative_position_bias(self.relative_attention_bias, config, jnp.arange(5), jnp.arange(5), True)
    """
    rel = key_positions[None, :] - query_positions[:, None]
    buckets = relative_position_bucket(rel, bidirectional, config.relative_attention_num_buckets,
                                       config.relative_attention_max_distance)
    return jnp.transpose(table(buckets), (2, 0, 1))[None]


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
            self.relative_attention_bias = _bias_embedding(c, self.dtype)

    def _heads(self, x):
        return x.reshape(*x.shape[:-1], self.config.num_heads, self.config.d_kv)

    def project_kv(self, states):
        """Key and value heads ``(batch, length, heads, d_kv)`` of ``states``."""
        return self._heads(self.k(states)), self._heads(self.v(states))

    def compute_bias(self, query_positions, key_positions, bidirectional: bool):
        """Position bias ``(1, heads, queries, keys)`` for absolute positions of queries and keys."""
        return relative_position_bias(self.relative_attention_bias, self.config, query_positions, key_positions,
                                      bidirectional)

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


def _scan_step(block: T5Block, hidden_states, position_bias, mask, encoder_hidden_states, encoder_mask,
               deterministic: bool):
    """One block of a scanned stack's full-sequence pass (a decoder block projects its cross keys/values)."""
    cross_kv = block.project_cross_kv(encoder_hidden_states) if block.is_decoder else None
    return block(hidden_states, position_bias, mask, cross_kv, encoder_mask, None, None, deterministic)[0]


class T5Stack(nn.Module):
    """The encoder or decoder stack; takes embedded tokens, returns final-normed hidden states.

    Unrolled, ``block_<i>`` (rematerialised with ``config.remat``); with ``config.scan_layers`` one
    stacked ``block`` run by one scan and the stack's own ``relative_attention_bias``. ``frozen_layers``
    (scanned only): the bottom k blocks run under ``stop_gradient`` in a scan of their own, so a step
    computes no weight gradient for them.
    """

    config: T5Config
    is_decoder: bool
    dtype: Any = jnp.float32
    frozen_layers: int = 0

    @property
    def num_blocks(self) -> int:
        return self.config.num_decoder_layers if self.is_decoder else self.config.num_layers

    def setup(self):
        c = self.config
        if c.scan_layers:
            self.relative_attention_bias = _bias_embedding(c, self.dtype)
            x = jnp.zeros((1, 1, c.d_model), self.dtype)
            example = (x, jnp.zeros((1, c.num_heads, 1, 1), self.dtype), jnp.ones((1, 1, 1, 1), bool), x,
                       jnp.ones((1, 1, 1, 1), bool))
            self.block = self.param("block", stacked_params_init(self._scanned_block(), self.num_blocks, example,
                                                                 method=_scan_step))
        else:
            block_cls = remat_layer(T5Block, c.remat, static_argnums=(8,))
            self.block = [block_cls(c, self.is_decoder, i == 0, self.dtype) for i in range(self.num_blocks)]
        self.final_layer_norm = T5LayerNorm(c.d_model, c.layer_norm_epsilon, self.dtype)
        self.dropout = nn.Dropout(c.dropout_rate)

    def _scanned_block(self) -> T5Block:
        """The unbound block a scan applies to each layer's slice of the stacked ``block``."""
        return T5Block(self.config, self.is_decoder, False, self.dtype, parent=None)

    def _position_bias(self, query_positions, key_positions):
        bidirectional = not self.is_decoder
        if self.config.scan_layers:
            return relative_position_bias(self.relative_attention_bias, self.config, query_positions, key_positions,
                                          bidirectional)
        attention = self.block[0].layer[0].SelfAttention
        return attention.compute_bias(query_positions, key_positions, bidirectional=bidirectional)

    def __call__(self, embeddings, mask, encoder_hidden_states=None, encoder_mask=None, deterministic=True):
        """Full-sequence pass. ``mask``: bool, broadcastable to (batch, 1, length, length)."""
        positions = jnp.arange(embeddings.shape[1])
        bias = self._position_bias(positions, positions)
        hidden = self.dropout(embeddings, deterministic=deterministic)
        if self.config.scan_layers:
            block = self._scanned_block()

            def step(params, hidden, _, rngs):
                return block.apply({"params": params}, hidden, bias, mask, encoder_hidden_states, encoder_mask,
                                   deterministic, rngs=rngs, method=_scan_step)

            hidden = run_stacked(step, self.block, hidden, length=self.num_blocks,
                                 dropout_key=None if deterministic else self.make_rng("dropout"),
                                 remat=self.config.remat, frozen=self.frozen_layers, unroll=self.config.scan_unroll)
        else:
            for block in self.block:
                cross_kv = block.project_cross_kv(encoder_hidden_states) if self.is_decoder else None
                hidden, _ = block(hidden, bias, mask, cross_kv, encoder_mask, None, None, deterministic)
        return self.dropout(self.final_layer_norm(hidden), deterministic=deterministic)

    def init_memory(self, encoder_hidden_states, encoder_mask):
        """Cross-attention keys/values of every decoder block, projected once: a list of (key, value)
        per block, or (scanned) one (key, value) pair of ``(batch, layers, length, heads, d_kv)``."""
        if self.config.scan_layers:
            block = self._scanned_block()
            project = lambda params: block.apply({"params": params}, encoder_hidden_states,
                                                 method=T5Block.project_cross_kv)
            return {"encoder_mask": encoder_mask, "cross": jax.vmap(project, out_axes=1)(self.block)}
        return {"encoder_mask": encoder_mask,
                "cross": [block.project_cross_kv(encoder_hidden_states) for block in self.block]}

    def init_cache(self, batch: int, max_length: int) -> Any:
        """Empty self-attention keys/values for ``max_length`` positions: a list of ``{"key", "value"}``
        of ``(batch, max_length, heads, d_kv)`` per block, or (scanned) one such dict of
        ``(batch, layers, max_length, heads, d_kv)``."""
        c = self.config
        shape = (batch, max_length, c.num_heads, c.d_kv)
        if c.scan_layers:
            shape = (batch, self.num_blocks, *shape[1:])
            return {"key": jnp.zeros(shape, self.dtype), "value": jnp.zeros(shape, self.dtype)}
        return [{"key": jnp.zeros(shape, self.dtype), "value": jnp.zeros(shape, self.dtype)}
                for _ in range(self.num_blocks)]

    def decode(self, embeddings, position, memory, cache):
        """Cached pass over ``embeddings`` placed at ``position``; returns (hidden, new cache)."""
        scanned = self.config.scan_layers
        max_length = cache["key"].shape[2] if scanned else cache[0]["key"].shape[1]
        query_positions = position + jnp.arange(embeddings.shape[1])
        key_positions = jnp.arange(max_length)
        bias = self._position_bias(query_positions, key_positions)
        mask = (key_positions[None, :] <= query_positions[:, None])[None, None]
        if scanned:
            return self._scanned_decode(embeddings, position, bias, mask, memory, cache)
        hidden, new_cache = embeddings, []
        for block, cross_kv, layer_cache in zip(self.block, memory["cross"], cache):
            hidden, layer_cache = block(hidden, bias, mask, cross_kv, memory["encoder_mask"], layer_cache, position,
                                        True)
            new_cache.append(layer_cache)
        return self.final_layer_norm(hidden), new_cache

    def _scanned_decode(self, embeddings, position, bias, mask, memory, cache):
        """:meth:`decode` of a scanned decoder: layer ``i`` reads and writes index ``i`` of axis 1 of
        the stacked cache and memory."""
        block, cross = self._scanned_block(), memory["cross"]

        def step(params, carry, i, _):
            hidden, cache = carry
            take = lambda a: jax.lax.dynamic_index_in_dim(a, i, axis=1, keepdims=False)
            hidden, layer_cache = block.apply({"params": params}, hidden, bias, mask, tuple(map(take, cross)),
                                              memory["encoder_mask"], jax.tree_util.tree_map(take, cache), position)
            put = lambda a, u: jax.lax.dynamic_update_index_in_dim(a, u, i, axis=1)
            return hidden, jax.tree_util.tree_map(put, cache, layer_cache)

        hidden, cache = run_stacked(step, self.block, (embeddings, cache), length=self.num_blocks,
                                    per_layer=jnp.arange(self.num_blocks), unroll=self.config.scan_unroll)
        return self.final_layer_norm(hidden), cache
