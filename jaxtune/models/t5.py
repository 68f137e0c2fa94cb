"""T5 encoder-decoder in Flax linen, with Hugging Face checkpoint conversion.

Covers T5 v1.0 (``feed_forward_proj="relu"``, ``lm_head`` tied to the shared embedding, decoder
output scaled by ``d_model ** -0.5``) and T5 v1.1 / Flan-T5 / mT5 (``"gated-gelu"``, an untied
``lm_head``, no scaling), read from ``config.json``. Semantics follow transformers'
``modeling_t5.py``: relative position buckets (bidirectional in the encoder, causal in the
decoder) whose bias lives in the first block of each stack and is reused by the others, RMS layer
norm without mean or bias, unscaled dot-product attention, pre-norm residual blocks.

Parameter paths mirror the HF names (``shared/embedding``,
``encoder/block_0/layer_0/SelfAttention/q/kernel``,
``encoder/block_0/layer_0/SelfAttention/relative_attention_bias/embedding``,
``decoder/block_1/layer_1/EncDecAttention/k/kernel``, ``decoder/final_layer_norm/weight``,
``lm_head/kernel``), so the name map below is one short table.

Example::

    model, variables = jaxtune.hub.from_pretrained("google/flan-t5-small", task="text_to_text")
    logits = model.apply(variables, input_ids, attention_mask, decoder_input_ids)
    loss = t5_loss(logits, labels)
    tokens = jaxtune.generate(model, variables, input_ids, attention_mask, max_length=32, num_beams=4)

The encoder-decoder generation protocol (``encode`` / ``init_cache`` / ``decode``) is described in
:mod:`jaxtune.generation`. The building blocks (attention, feed-forward, blocks, stacks) are in
:mod:`jaxtune.models.t5_layers`.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.models.attention import check_implementation
from jaxtune.models.embed import Embed
from jaxtune.models.family import ModelFamily, NameMap, NameRule, flatten_paths, unflatten_paths
from jaxtune.models.layer_scan import check_remat, check_unroll
from jaxtune.models.stacking import stack_layers, unstack_layers
from jaxtune.models.t5_layers import (_ACTIVATIONS, T5Attention, T5Block, T5DenseActDense,  # blocks re-exported
                                      T5LayerCrossAttention, T5LayerFF, T5LayerNorm, T5LayerSelfAttention, T5Stack,
                                      _dense, _normal, relative_position_bucket)
from jaxtune.rules import Settings, settings

logger = logging.getLogger(__name__)

TASKS: tuple[str | None, ...] = (None, "text_to_text")
_JAXTUNE_FIELDS = ("attention_implementation", "scan_layers", "scan_unroll", "remat")   # never read from / written to config.json


@dataclasses.dataclass(frozen=True)
class T5Config:
    """The fields of a T5 ``config.json`` that the Flax model uses.

    ``tie_word_embeddings`` says whether the output projection is the shared embedding (no
    ``lm_head`` parameter); ``scale_decoder_outputs`` whether the decoder output is multiplied by
    ``d_model ** -0.5`` before it (T5 v1.0). transformers < 5 derived both from
    ``tie_word_embeddings``; transformers >= 5 writes ``scale_decoder_outputs`` itself.

    Example::

        config = T5Config.from_hf(json.load(open("flan-t5-small/config.json")))
        scanned = dataclasses.replace(config, scan_layers=True, remat="full")   # or from_pretrained(..., scan_layers=True)

    jaxtune's own fields (never in ``config.json``): ``attention_implementation``; ``scan_layers``
    (each stack's blocks stacked on a leading axis under ``encoder/block`` / ``decoder/block`` and
    run as one scan, the relative position bias in ``encoder/relative_attention_bias`` /
    ``decoder/relative_attention_bias``); ``scan_unroll``; ``remat`` (as :class:`BertConfig`'s).
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool = True
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    # jaxtune's own, not config.json fields (_JAXTUNE_FIELDS). attention_implementation: "auto" (cuDNN
    # on NVIDIA GPUs where it can run, else XLA), "xla" or "cudnn"; see jaxtune.models.attention.
    # scan_layers: each stack's blocks stacked and run as one scan; scan_unroll: blocks per loop
    # iteration; remat: "none", "full" or "dots_saveable" (jaxtune.models.layer_scan), as BertConfig's.
    attention_implementation: str = "auto"
    scan_layers: bool = False
    scan_unroll: int = 1
    remat: str = "none"

    def __post_init__(self):
        check_implementation(self.attention_implementation, "T5Config.attention_implementation")
        check_remat(self.remat, "T5Config.remat")
        check_unroll(self.scan_unroll, "T5Config.scan_unroll")
        if not isinstance(self.scan_layers, bool):
            raise ValueError(f"T5Config.scan_layers must be true or false, got {self.scan_layers!r}")
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or self.dense_act_fn not in _ACTIVATIONS:
            raise ValueError(f"T5Config: feed_forward_proj {self.feed_forward_proj!r} is not supported; "
                             f"use 'ACT' or 'gated-ACT' with ACT in {sorted(_ACTIVATIONS)}")

    @property
    def is_gated_act(self) -> bool:
        """True for the gated feed-forward block of T5 v1.1 (``wi_0``, ``wi_1``, ``wo``)."""
        return self.feed_forward_proj.startswith("gated-")

    @property
    def dense_act_fn(self) -> str:
        """Activation name; "gated-gelu" means the tanh GELU, as in transformers."""
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> T5Config:
        """Reads a transformers T5 ``config.json`` dict (v4 or v5 layout)."""
        if hf.get("model_type", "t5") != "t5":
            raise ValueError(f"T5Config.from_hf: model_type is {hf.get('model_type')!r}, expected 't5'")
        names = {f.name for f in dataclasses.fields(cls)} - {"tie_word_embeddings", "scale_decoder_outputs",
                                                              "eos_token_id", "num_decoder_layers",
                                                              "decoder_start_token_id", "pad_token_id",
                                                              *_JAXTUNE_FIELDS}
        kwargs = {name: hf[name] for name in names if hf.get(name) is not None}
        tie = hf.get("tie_word_embeddings", True) is not False
        pad = hf.get("pad_token_id")
        pad = 0 if pad is None else int(pad)
        eos = hf.get("eos_token_id", 1)
        if isinstance(eos, (list, tuple)):
            eos = eos[0]
        start = hf.get("decoder_start_token_id")
        return cls(**kwargs,
                   num_decoder_layers=hf.get("num_decoder_layers") or kwargs.get("num_layers", cls.num_layers),
                   tie_word_embeddings=tie,
                   scale_decoder_outputs=bool(hf.get("scale_decoder_outputs", tie)),
                   pad_token_id=pad,
                   eos_token_id=1 if eos is None else int(eos),
                   decoder_start_token_id=pad if start is None else int(start))

    def to_hf(self, task: str | None = "text_to_text") -> dict[str, Any]:
        """``config.json`` dict that transformers' ``T5Model`` / ``T5ForConditionalGeneration`` loads."""
        hf = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _JAXTUNE_FIELDS}
        hf.update(model_type="t5", is_encoder_decoder=True, dense_act_fn=self.dense_act_fn,
                  is_gated_act=self.is_gated_act,
                  architectures=["T5ForConditionalGeneration" if task == "text_to_text" else "T5Model"])
        return hf


def _key_mask(attention_mask, batch: int, length: int):
    """(batch, length) 0/1 mask (or None) -> bool (batch, 1, 1, length)."""
    if attention_mask is None:
        return jnp.ones((batch, 1, 1, length), bool)
    return attention_mask.astype(bool)[:, None, None, :]


class T5Model(nn.Module):
    """T5 encoder-decoder. ``task="text_to_text"`` returns LM logits, ``task=None`` the decoder's
    last hidden states (like transformers' ``T5Model``).

    ``frozen_layers`` (a scanned model's, ``config.scan_layers``): the bottom k blocks in layer-id
    order (the encoder's, then the decoder's) run under ``stop_gradient`` in a scan of their own, so
    that a training step computes no weight gradient for them (:func:`jaxtune.with_frozen_layers`).

    Example::

        model = T5Model(T5Config(), task="text_to_text")
        variables = model.init(jax.random.key(0), input_ids, attention_mask, decoder_input_ids)
        logits = model.apply(variables, input_ids, attention_mask, decoder_input_ids)   # (B, T, vocab)
        # training with dropout:
        logits = model.apply(variables, ..., deterministic=False, rngs={"dropout": key})
    """

    config: T5Config
    task: str | None = "text_to_text"
    dtype: Any = jnp.float32
    frozen_layers: int = 0

    def setup(self):
        if self.task not in TASKS:
            raise ValueError(f"T5 has no task {self.task!r}; supported: {list(TASKS)}")
        c = self.config
        if not 0 <= self.frozen_layers <= c.num_layers + c.num_decoder_layers:
            raise ValueError(f"T5Model.frozen_layers={self.frozen_layers}; need 0 <= frozen_layers <= "
                             f"{c.num_layers + c.num_decoder_layers} (encoder then decoder blocks)")
        self.shared = Embed(c.vocab_size, c.d_model, dtype=self.dtype, param_dtype=jnp.float32,
                               embedding_init=_normal(c.initializer_factor))
        self.encoder = T5Stack(c, is_decoder=False, dtype=self.dtype, frozen_layers=min(self.frozen_layers,
                                                                                         c.num_layers))
        self.decoder = T5Stack(c, is_decoder=True, dtype=self.dtype,
                               frozen_layers=max(self.frozen_layers - c.num_layers, 0))
        if self.task == "text_to_text" and not c.tie_word_embeddings:
            self.lm_head = _dense(c.vocab_size, c.initializer_factor, self.dtype, "lm_head")

    def layer_ids(self, path: str) -> int:
        """Layer id of a parameter path of this model (see the module-level :func:`layer_ids`)."""
        return layer_ids(path, self.config.num_layers, self.config.num_decoder_layers)

    def default_rules(self) -> list:
        """The family's default rule table (the module's :func:`default_rules`), e.g.
        ``jt.make_optimizer(params, model.default_rules(), layer_ids=model.layer_ids, layer_decay=0.8)``."""
        return default_rules()

    def _head(self, hidden):
        if self.task is None:
            return hidden
        if self.config.scale_decoder_outputs:
            hidden = hidden * (self.config.d_model ** -0.5)
        if self.config.tie_word_embeddings:
            return self.shared.attend(hidden)
        return self.lm_head(hidden)

    def encode(self, input_ids, attention_mask=None, deterministic: bool = True):
        """Encoder hidden states ``(batch, length, d_model)``."""
        mask = _key_mask(attention_mask, *input_ids.shape)
        return self.encoder(self.shared(input_ids), mask, deterministic=deterministic)

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 deterministic: bool = True):
        """Teacher-forced logits ``(batch, target_length, vocab)`` (hidden states for task None).

        Args:
          input_ids: ``(batch, source_length)`` int token ids of the input text.
          attention_mask: ``(batch, source_length)``, 1 for real tokens, 0 for padding (default: all 1).
          decoder_input_ids: ``(batch, target_length)`` the labels shifted right (:func:`shift_right`).
          decoder_attention_mask: ``(batch, target_length)`` (optional) masks padded decoder keys on
            top of the causal mask.
          deterministic: False turns dropout on (pass ``rngs={"dropout": key}`` to ``apply``).
        """
        if decoder_input_ids is None:
            raise ValueError("T5Model needs decoder_input_ids, e.g. shift_right(labels, "
                             "config.decoder_start_token_id, config.pad_token_id)")
        encoded = self.encode(input_ids, attention_mask, deterministic)
        batch, length = decoder_input_ids.shape
        causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
        mask = causal & _key_mask(decoder_attention_mask, batch, length)
        hidden = self.decoder(self.shared(decoder_input_ids), mask, encoded,
                              _key_mask(attention_mask, *input_ids.shape), deterministic)
        return self._head(hidden)

    def init_cache(self, encoder_hidden_states, attention_mask, max_length: int):
        """Generation state for :func:`jaxtune.generation.generate`: ``(memory, cache)``.

        ``memory`` (cross-attention keys/values, encoder mask) stays fixed while decoding; ``cache``
        holds every decoder block's self-attention keys/values for ``max_length`` positions (a scanned
        decoder's stacked on axis 1). Every leaf of both has the batch as its leading axis.
        """
        batch, length = encoder_hidden_states.shape[:2]
        memory = self.decoder.init_memory(encoder_hidden_states, _key_mask(attention_mask, batch, length))
        return memory, self.decoder.init_cache(batch, max_length)

    def decode(self, decoder_input_ids, position, memory, cache):
        """Cached decoding of ``decoder_input_ids`` ``(batch, n)`` placed at decoder ``position``.

        Returns ``(logits (batch, n, vocab), new cache)``; run in inference mode (no dropout).
        """
        hidden, cache = self.decoder.decode(self.shared(decoder_input_ids), position, memory, cache)
        return self._head(hidden), cache


# ---------------------------------------------------------------------------------------------
# Loss.

def shift_right(labels, decoder_start_token_id: int, pad_token_id: int):
    """Decoder inputs for teacher forcing: ``[start, labels[:-1]]`` with ``-100`` replaced by pad.

    Example::

        shift_right(jnp.array([[5, 6, 1, -100]]), 0, 0)   # [[0, 5, 6, 1]]
    """
    shifted = jnp.concatenate([jnp.full_like(labels[:, :1], decoder_start_token_id), labels[:, :-1]], axis=1)
    return jnp.where(shifted == -100, pad_token_id, shifted)


def t5_loss(logits, labels, ignore_id: int = -100):
    """Mean token cross-entropy over labels that are not ``ignore_id`` (as transformers' T5 loss;
    0 when every label is ignored).

    Example::

        logits = model.apply(variables, ids, mask, shift_right(labels, 0, 0))
        loss = t5_loss(logits, labels)
    """
    valid = labels != ignore_id
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


# ---------------------------------------------------------------------------------------------
# Layer ids and default rules.

_BLOCK = re.compile(r"(encoder|decoder)/block_(\d+)/.+")
_STACKED = re.compile(r"(encoder|decoder)/(block|relative_attention_bias)/.+")   # a scanned model's


def layer_ids(path: str, num_layers: int, num_decoder_layers: int | None = None) -> int | np.ndarray:
    """Layer id of a T5 parameter path, monotone from input to output:

    ``shared/...`` 0; ``encoder/block_i`` i + 1; ``decoder/block_j`` num_layers + j + 1; the final
    norms of both stacks and ``lm_head`` num_layers + num_decoder_layers + 1. A scanned model's
    stacked ``encoder/block/...`` leaf has the ids 1 .. num_layers, one per block, a stacked
    ``decoder/block/...`` leaf the decoder blocks' ids; a stack's own ``relative_attention_bias``
    has the id of its first block, which owns it unscanned.

    Example::

        layer_ids("encoder/block_1/layer_0/SelfAttention/q/kernel", 6)   # 2
        layer_ids("decoder/block_0/layer_1/EncDecAttention/k/kernel", 6)  # 7
        layer_ids("decoder/block/layer_1/EncDecAttention/k/kernel", 6)    # array([7, 8, ..., 12])
        layer_ids("lm_head/kernel", 6)                                   # 13
    """
    path = path.removeprefix("params/")
    num_decoder_layers = num_layers if num_decoder_layers is None else num_decoder_layers
    if path.startswith("shared/"):
        return 0
    m = _STACKED.fullmatch(path)
    if m:
        first, count = (1, num_layers) if m.group(1) == "encoder" else (num_layers + 1, num_decoder_layers)
        return np.arange(first, first + count) if m.group(2) == "block" else first
    m = _BLOCK.fullmatch(path)
    if m:
        stack, i = m.group(1), int(m.group(2))
        count = num_layers if stack == "encoder" else num_decoder_layers
        if i >= count:
            raise KeyError(f"T5 layer_ids: {path!r} names {stack} block {i} but the {stack} has {count} blocks")
        return i + 1 if stack == "encoder" else num_layers + i + 1
    if re.fullmatch(r"(encoder|decoder)/final_layer_norm/.+|lm_head/.+", path):
        return num_layers + num_decoder_layers + 1
    raise KeyError(f"T5 layer_ids: unknown parameter path {path!r}; expected shared/..., encoder/block_<i>/..., "
                   "decoder/block_<j>/..., {encoder,decoder}/block/... or {encoder,decoder}/relative_attention_bias/... "
                   "(scanned), {encoder,decoder}/final_layer_norm/... or lm_head/... "
                   "(paths of variables['params'] without a leading 'params/')")


def default_rules() -> list[tuple[str, Settings]]:
    """No weight decay on the RMS-norm weights, defaults for everything else (T5 has no biases).

    Example::

        tx = jt.make_optimizer(params, t5.default_rules(), optax.adamw, learning_rate=1e-4)
    """
    return [
        (r".*layer_norm/weight", settings(weight_decay=0.0, name="no_decay")),
        (r".*", settings(name="decay")),
    ]


# ---------------------------------------------------------------------------------------------
# Hugging Face checkpoints.

def _attention_rules(hf: str, flax: str) -> list[NameRule]:
    return [NameRule(f"{hf}.{p}.weight", f"params/{flax}/{p}/kernel", "linear") for p in "qkvo"]


def _stack_rules(stack: str) -> list[NameRule]:
    hf, flax = f"{stack}.block.{{i}}.layer", f"{stack}/block_{{i}}/layer"
    ff = 2 if stack == "decoder" else 1
    rules = [
        *_attention_rules(f"{hf}.0.SelfAttention", f"{flax}_0/SelfAttention"),
        NameRule(f"{hf}.0.SelfAttention.relative_attention_bias.weight",
                 f"params/{flax}_0/SelfAttention/relative_attention_bias/embedding"),
        *[NameRule(f"{hf}.{n}.layer_norm.weight", f"params/{flax}_{n}/layer_norm/weight") for n in range(ff + 1)],
        *[NameRule(f"{hf}.{ff}.DenseReluDense.{w}.weight", f"params/{flax}_{ff}/DenseReluDense/{w}/kernel", "linear")
          for w in ("wi", "wi_0", "wi_1", "wo")],
        NameRule(f"{stack}.final_layer_norm.weight", f"params/{stack}/final_layer_norm/weight"),
    ]
    if stack == "decoder":
        rules += _attention_rules(f"{hf}.1.EncDecAttention", f"{flax}_1/EncDecAttention")
    return rules


NAMES = NameMap([
    NameRule("shared.weight", "params/shared/embedding"),
    *_stack_rules("encoder"),
    *_stack_rules("decoder"),
    NameRule("lm_head.weight", "params/lm_head/kernel", "linear"),
])


def _check_task(task: str | None) -> None:
    if task not in TASKS:
        raise ValueError(f"T5 has no task {task!r}; supported: {list(TASKS)}")


def to_flax(config: T5Config, tensors: Mapping[str, np.ndarray], task: str | None = "text_to_text"):
    """HF tensors -> (nested Flax variables, used HF names).

    ``lm_head.weight`` is used only by an untied ``text_to_text`` model. Copies of the shared
    embedding (``encoder.embed_tokens.weight`` ...) are left unused.
    """
    _check_task(task)
    if task == "text_to_text" and config.tie_word_embeddings and _has_own_lm_head(tensors):
        raise ValueError("T5 checkpoint has an lm_head.weight different from shared.weight but config.json says "
                         "tie_word_embeddings=true (transformers >= 5 saves untied T5 v1.1 / Flan-T5 models "
                         "this way); pass config_for_weights(config, tensors) (from_pretrained does) or set "
                         "\"tie_word_embeddings\": false in config.json to load the separate lm_head")
    tensors = dict(tensors)
    if task != "text_to_text" or config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    variables, used = NAMES.to_flax(tensors)
    if config.scan_layers:
        flat = flatten_paths(variables)
        for stacked, per_layer, count in stacked_layers(config):
            stack = stacked.removesuffix("/block")
            if f"{per_layer.format(i=0)}/{_OWN_BIAS}" in flat:
                flat[f"{stack}/relative_attention_bias/embedding"] = flat.pop(f"{per_layer.format(i=0)}/{_OWN_BIAS}")
            flat = stack_layers(flat, per_layer, stacked, count)
        variables = unflatten_paths(flat)
    return variables, used


_OWN_BIAS = "layer_0/SelfAttention/relative_attention_bias/embedding"   # block 0's, unscanned


def stacked_layers(config: T5Config) -> tuple[tuple[str, str, int], ...]:
    """(stacked path, per-layer path template, layer count) of each stack a scanned model
    (``config.scan_layers``) keeps stacked; () unscanned.

    Example::

        stacked_layers(T5Config(scan_layers=True))[0]   # ("params/encoder/block", "params/encoder/block_{i}", 6)
    """
    if not config.scan_layers:
        return ()
    return (("params/encoder/block", "params/encoder/block_{i}", config.num_layers),
            ("params/decoder/block", "params/decoder/block_{i}", config.num_decoder_layers))


def _has_own_lm_head(tensors: Mapping[str, np.ndarray]) -> bool:
    """Whether the checkpoint has an ``lm_head.weight`` that differs from ``shared.weight``."""
    lm_head, shared = tensors.get("lm_head.weight"), tensors.get("shared.weight")
    return lm_head is not None and shared is not None and not np.array_equal(np.asarray(lm_head), np.asarray(shared))


def config_for_weights(config: T5Config, tensors: Mapping[str, np.ndarray]) -> T5Config:
    """Unties the output layer when the checkpoint has its own ``lm_head.weight`` (different from
    ``shared.weight``) although ``config.json`` says ``tie_word_embeddings: true``, as transformers
    >= 5 saves T5 v1.1 / Flan-T5 models. ``scale_decoder_outputs`` keeps what config.json says.

    Example::

        config = config_for_weights(T5Config.from_hf(hf_config), read_weights(directory))
    """
    if not config.tie_word_embeddings or not _has_own_lm_head(tensors):
        return config
    logger.info("T5 checkpoint: lm_head.weight differs from shared.weight, so the output layer is untied "
                "(config.json says tie_word_embeddings=true, as transformers >= 5 writes it)")
    return dataclasses.replace(config, tie_word_embeddings=False)


def to_hf(config: T5Config, variables: Mapping[str, Any], task: str | None = "text_to_text") -> dict[str, np.ndarray]:
    """Flax variables -> HF tensors as transformers saves ``T5Model`` / ``T5ForConditionalGeneration``;
    a scanned model's stacked blocks are written per block, under the same names."""
    _check_task(task)
    flat = flatten_paths(variables)
    for stack in ("params/encoder", "params/decoder"):
        if any(path.startswith(f"{stack}/block/") for path in flat):
            flat = unstack_layers(flat, f"{stack}/block", f"{stack}/block_{{i}}")
        if f"{stack}/relative_attention_bias/embedding" in flat:
            flat[f"{stack}/block_0/{_OWN_BIAS}"] = flat.pop(f"{stack}/relative_attention_bias/embedding")
    return NAMES.to_hf(unflatten_paths(flat))


def build(config: T5Config, task: str | None = "text_to_text", num_labels: int | None = None,
          dtype=jnp.float32) -> T5Model:
    """The Flax T5 model of ``task`` (None or "text_to_text"); ``num_labels`` must be None.

    Example::

        model = build(config, "text_to_text", dtype=jnp.bfloat16)
    """
    _check_task(task)
    if num_labels is not None:
        raise ValueError(f"T5 {task!r} predicts tokens, it takes no num_labels (got {num_labels})")
    return T5Model(config=config, task=task, dtype=dtype)


def config_to_hf(config: T5Config, task: str | None = "text_to_text", num_labels: int | None = None) -> dict:
    """``config.json`` dict for ``task`` (``architectures`` names the transformers class)."""
    _check_task(task)
    return config.to_hf(task)


def example_inputs(config: T5Config, task: str | None = "text_to_text") -> tuple:
    """Positional inputs for ``model.init``: input ids, attention mask and decoder input ids."""
    ids = jnp.zeros((1, 8), jnp.int32)
    return ids, jnp.ones((1, 8), jnp.int32), jnp.zeros((1, 4), jnp.int32)


FAMILY = ModelFamily(
    name="t5",
    model_types=("t5",),
    tasks=TASKS,
    config_from_hf=T5Config.from_hf,
    config_to_hf=config_to_hf,
    build=build,
    to_flax=to_flax,
    to_hf=to_hf,
    head_paths=(r"params/lm_head/.*",),
    example_inputs=example_inputs,
    config_for_weights=config_for_weights,
    stacked_layers=stacked_layers,
)
