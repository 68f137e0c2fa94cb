"""A small text classifier that starts from a word-embedding table (Word2Vec, GloVe, or random).

``ids -> embeddings -> [encoder layers] -> masked mean over the words -> hidden (ReLU) -> head``.
With ``encoder_layers=0`` it is an embedding bag (a bag of words); with 1 or more it adds learned
position embeddings and post-norm Transformer encoder layers before the pooling.

Parameter paths (``variables["params"]`` joined by "/") and their layer ids::

    embeddings/embedding                      0   the word table, [vocab_size, embed_dim]
    position_embeddings/embedding             0   only with encoder layers
    encoder/layer_<i>/...                     i + 1
    hidden/kernel, hidden/bias                encoder_layers + 1
    head/kernel, head/bias                    encoder_layers + 2

Freezing the word vectors, training them, or unfreezing them after ``k`` epochs is a rule table,
like for every other family::

    frozen = [(r"embeddings/.*", jt.freeze("word_vectors")), *bag.default_rules()]
    tx = jt.make_optimizer(params, bag.default_rules(), runtime=True)
    state = jt.TrainState.create(params, tx)
    state = state.replace(opt_state=jt.set_trainable(state.opt_state, jt.trainable_mask(params, frozen)))
    ...  # after k epochs:
    state = state.replace(opt_state=jt.set_trainable(state.opt_state, jt.trainable_mask(params, bag.default_rules())))
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.models.attention import attention
from jaxtune.models.dense import flat_dot_general
from jaxtune.models.embed import Embed
from jaxtune.rules import Settings, settings

__all__ = ["BagClassifier", "BagConfig", "default_rules", "layer_ids", "with_embedding_table"]


@dataclasses.dataclass(frozen=True)
class BagConfig:
    """Shape of a :class:`BagClassifier`.

    Attributes:
      vocab_size, embed_dim: the word table's shape (take them from the pretrained table).
      num_labels: classes of the head.
      hidden_size: width of the ReLU layer between the pooled vector and the head.
      encoder_layers: Transformer encoder layers before pooling (0: a plain embedding bag).
      num_heads, intermediate_size: of the encoder layers (``intermediate_size`` default ``4 * embed_dim``).
      max_length: longest input with encoder layers (size of the position table).
      dropout: dropout rate on the pooled vector, the hidden layer and inside the encoder.
      padding_index: the id that marks padding (left out of the mean and of attention).
    """

    vocab_size: int
    embed_dim: int
    num_labels: int
    hidden_size: int = 128
    encoder_layers: int = 0
    num_heads: int = 4
    intermediate_size: int | None = None
    max_length: int = 128
    dropout: float = 0.1
    padding_index: int = 0

    def __post_init__(self):
        if self.encoder_layers < 0:
            raise ValueError(f"encoder_layers must be >= 0, got {self.encoder_layers}")
        if self.encoder_layers and self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not 0 <= self.padding_index < self.vocab_size:
            raise ValueError(f"padding_index {self.padding_index} is outside 0..{self.vocab_size - 1}")

    @property
    def num_layers(self) -> int:
        """Layers between the embeddings (id 0) and the head (id ``num_layers + 1``): encoder + hidden."""
        return self.encoder_layers + 1


class _EncoderLayer(nn.Module):
    """Post-norm Transformer layer (BERT order): attention, add & norm, feed-forward, add & norm."""

    config: BagConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.config
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=jnp.float32, name=name,
                                         dot_general=flat_dot_general)
        heads, head_dim = cfg.num_heads, cfg.embed_dim // cfg.num_heads
        split = lambda name: dense(cfg.embed_dim, name)(x).reshape(x.shape[:2] + (heads, head_dim))
        # Keys only: padding is never attended to; outputs at padding are left out of the pooling.
        attn = attention(split("query"), split("key"), split("value"), mask=mask[:, None, None, :])
        attn = dense(cfg.embed_dim, "output")(attn.reshape(x.shape))
        attn = nn.Dropout(cfg.dropout)(attn, deterministic=deterministic)
        x = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="attention_norm")(x + attn)
        ffn = nn.gelu(dense(cfg.intermediate_size or 4 * cfg.embed_dim, "intermediate")(x))
        ffn = nn.Dropout(cfg.dropout)(dense(cfg.embed_dim, "ffn_output")(ffn), deterministic=deterministic)
        return nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="output_norm")(x + ffn)


class _Encoder(nn.Module):
    """``config.encoder_layers`` encoder layers named ``layer_<i>``."""

    config: BagConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool) -> jax.Array:
        for i in range(self.config.encoder_layers):
            x = _EncoderLayer(self.config, self.dtype, name=f"layer_{i}")(x, mask, deterministic)
        return x


class BagClassifier(nn.Module):
    """Word ids ``[batch, length]`` -> class logits ``[batch, num_labels]`` (float32).

    Example::

        model = BagClassifier(BagConfig(vocab_size=len(vocab), embed_dim=100, num_labels=3))
        params = model.init(jax.random.key(0), ids)["params"]
        params = with_embedding_table(params, table)          # start from pretrained vectors
        logits = model.apply({"params": params}, ids)
    """

    config: BagConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Class logits ``(batch, num_labels)``, float32.

        Args:
          ids: ``(batch, length)`` int word ids (:class:`jaxtune.Vocabulary`); ``config.padding_index`` marks padding.
          deterministic: False turns dropout on (pass ``rngs={"dropout": key}`` to ``apply``).
        """
        cfg = self.config
        mask = ids != cfg.padding_index
        x = Embed(cfg.vocab_size, cfg.embed_dim, dtype=self.dtype, param_dtype=jnp.float32,
                     name="embeddings")(ids)
        if cfg.encoder_layers:
            if ids.shape[1] > cfg.max_length:
                raise ValueError(f"inputs of length {ids.shape[1]} exceed max_length={cfg.max_length}")
            positions = Embed(cfg.max_length, cfg.embed_dim, dtype=self.dtype, param_dtype=jnp.float32,
                                 embedding_init=nn.initializers.normal(0.02), name="position_embeddings")
            x = x + positions(jnp.arange(ids.shape[1]))[None]
            x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
            x = _Encoder(cfg, self.dtype, name="encoder")(x, mask, deterministic)
        weights = mask.astype(x.dtype)[..., None]
        pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        pooled = nn.Dropout(cfg.dropout)(pooled, deterministic=deterministic)
        h = nn.relu(nn.Dense(cfg.hidden_size, dtype=self.dtype, param_dtype=jnp.float32, name="hidden")(pooled))
        h = nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
        logits = nn.Dense(cfg.num_labels, dtype=self.dtype, param_dtype=jnp.float32, name="head")(h)
        return logits.astype(jnp.float32)

    def layer_ids(self, path: str) -> int:
        """Layer id of a parameter path (see :func:`layer_ids`)."""
        return layer_ids(path, self.config.num_layers)

    def default_rules(self) -> list:
        """The family's default rule table (the module's :func:`default_rules`), e.g.
        ``jt.make_optimizer(params, model.default_rules(), layer_ids=model.layer_ids, layer_decay=0.8)``."""
        return default_rules()


_ENCODER = re.compile(r"encoder/layer_(\d+)/.+")


def layer_ids(path: str, num_layers: int) -> int:
    """Layer id of a parameter path: embeddings 0, encoder layer ``i`` -> ``i + 1``, hidden
    ``num_layers``, head ``num_layers + 1``; ``num_layers = encoder_layers + 1`` (``config.num_layers``).

    Example::

        layer_ids("embeddings/embedding", 1)   # -> 0
        layer_ids("hidden/kernel", 1)          # -> 1
        layer_ids("head/bias", 1)              # -> 2
    """
    path = path.removeprefix("params/")
    top = path.split("/", 1)[0]
    if top in ("embeddings", "position_embeddings"):
        return 0
    if top == "hidden":
        return num_layers
    if top == "head":
        return num_layers + 1
    m = _ENCODER.fullmatch(path)
    if m:
        i = int(m.group(1))
        if i >= num_layers - 1:
            raise KeyError(f"bag layer_ids: encoder layer {i} in {path!r} is outside 0..{num_layers - 2} "
                           f"(num_layers={num_layers}); pass num_layers=config.num_layers (encoder_layers + 1)")
        return i + 1
    raise KeyError(f"bag layer_ids: unknown parameter path {path!r}; expected 'embeddings/...', "
                   "'position_embeddings/...', 'encoder/layer_<i>/...', 'hidden/...' or 'head/...'")


def default_rules() -> list[tuple[str, Settings]]:
    """Default rule table: no weight decay on biases and LayerNorm scales, defaults elsewhere.

    Example::

        frozen_vectors = [(r"embeddings/.*", jt.freeze("word_vectors")), *bag.default_rules()]
        tx = jt.make_optimizer(params, frozen_vectors, optax.adamw, learning_rate=1e-3)
    """
    return [
        (r".*(bias|scale)", settings(weight_decay=0.0, name="no_decay")),
        (r".*", settings()),
    ]


def with_embedding_table(params: dict, table: Any) -> dict:
    """A copy of ``params`` whose ``embeddings/embedding`` is ``table`` (float32), shape checked.

    Example::

        table, report = jt.embedding_table(vectors, vocab)
        params = with_embedding_table(model.init(jax.random.key(0), ids)["params"], table)
    """
    current = params["embeddings"]["embedding"]
    table = np.asarray(table, np.float32)
    if table.shape != tuple(current.shape):
        raise ValueError(f"embedding table has shape {table.shape} but the model's embeddings/embedding is "
                         f"{tuple(current.shape)}; build the BagConfig with vocab_size, embed_dim = table.shape")
    return {**params, "embeddings": {**params["embeddings"], "embedding": jnp.asarray(table)}}
