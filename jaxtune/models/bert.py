"""BERT encoders (BERT, MiniLM, ...) in Flax linen with the Hugging Face task heads.

Parameter paths follow the Hugging Face layout, so the name map to ``transformers`` checkpoints is
one short table (:data:`NAMES`)::

    bert/embeddings/word_embeddings/embedding
    bert/encoder/layer_0/attention/self/query/kernel
    bert/pooler/dense/kernel
    classifier/kernel          (sequence / token classification)
    qa_outputs/kernel          (span question answering)
    cls/predictions/...        (masked-LM head; the decoder is tied to the word embeddings)

With ``BertConfig(scan_layers=True)`` the encoder's layers are one tree ``bert/encoder/layer/...``
whose leaves have a leading layer axis, run as one scan (compiled once, not once per layer);
``from_pretrained`` / ``save_pretrained`` convert to and from the per-layer checkpoint names, and
:func:`layer_ids` gives such a leaf one id per layer. The building blocks are in
:mod:`jaxtune.models.bert_layers`.

Every model is called as ``model.apply(variables, input_ids, attention_mask=None,
token_type_ids=None, deterministic=True)``; dropout needs an rng named ``"dropout"`` when
``deterministic=False``. Outputs:

* :class:`BertModel` (task ``None``): a :class:`BertOutput` ``(last_hidden_state, pooler_output)``.
* :class:`BertForSequenceClassification`, :class:`BertForTokenClassification`,
  :class:`BertForMaskedLM`: logits ``(batch, num_labels)``, ``(batch, seq, num_labels)``,
  ``(batch, seq, vocab_size)``.
* :class:`BertForQuestionAnswering`: ``(start_logits, end_logits)``, each ``(batch, seq)``.

Example::

    import jaxtune
    model, variables = jaxtune.hub.from_pretrained(jaxtune.hub.minilm_path())
    out = model.apply(variables, input_ids, attention_mask)
    sentence_embeddings = mean_pool(out.last_hidden_state, attention_mask)
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.models.attention import check_implementation
from jaxtune.models.bert_layers import (ACTIVATIONS, BertAddNorm, BertAttention, BertEmbeddings,  # noqa: F401
                                        BertEncoder, BertIntermediate, BertLayer, BertLMPredictionHead, BertMLMHead,
                                        BertPooler, BertPredictionTransform, BertSelfAttention)
from jaxtune.models.bert_layers import dense as _dense
from jaxtune.models.family import ModelFamily, NameMap, NameRule, flatten_paths, unflatten_paths
from jaxtune.models.layer_scan import check_remat, check_unroll
from jaxtune.models.stacking import stack_layers, unstack_layers
from jaxtune.rules import Settings, settings

# task name -> transformers class written to config.json "architectures".
ARCHITECTURES: dict[str | None, str] = {
    None: "BertModel",
    "sequence_classification": "BertForSequenceClassification",
    "token_classification": "BertForTokenClassification",
    "question_answering": "BertForQuestionAnswering",
    "masked_lm": "BertForMaskedLM",
}
TASKS: tuple[str | None, ...] = tuple(ARCHITECTURES)
_JAXTUNE_FIELDS = ("attention_implementation", "scan_layers", "scan_unroll", "remat")   # never read from / written to config.json


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder; field names and defaults are those of HF ``BertConfig``.

    Example::

        config = BertConfig.from_hf(json.load(open("config.json")))
        tiny = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=37)
        scanned = dataclasses.replace(config, scan_layers=True, remat="full")   # or from_pretrained(..., scan_layers=True)

    jaxtune's own fields (never in ``config.json``): ``attention_implementation``; ``scan_layers``
    (the layers stacked on a leading axis under ``bert/encoder/layer`` and run as one scan: the
    step compiles one layer, not L); ``scan_unroll`` (layers per loop iteration; L unrolls it);
    ``remat`` (``"none"``, ``"full"``, ``"dots_saveable"``: activations recomputed in the backward
    pass instead of stored, unrolled or scanned).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    tie_word_embeddings: bool = True
    labels: tuple[str, ...] = ("LABEL_0", "LABEL_1")   # label names by id (HF id2label)
    problem_type: str | None = None   # HF: "regression" (one output, MSE), "single_label_classification", ...
    # jaxtune's own, not config.json fields (_JAXTUNE_FIELDS). attention_implementation: "auto" (cuDNN
    # on NVIDIA GPUs where it can run, else XLA), "xla" or "cudnn"; see jaxtune.models.attention.
    # scan_layers: the encoder's layers stacked and run as one scan; scan_unroll: layers per loop
    # iteration (num_hidden_layers: no loop, for XLA's cost analysis). remat: "none", "full" or
    # "dots_saveable", what each layer recomputes in the backward pass (jaxtune.models.layer_scan).
    attention_implementation: str = "auto"
    scan_layers: bool = False
    scan_unroll: int = 1
    remat: str = "none"

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"BertConfig.hidden_act={self.hidden_act!r} is not supported; "
                             f"use one of {sorted(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig.hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        check_implementation(self.attention_implementation, "BertConfig.attention_implementation")
        check_remat(self.remat, "BertConfig.remat")
        check_unroll(self.scan_unroll, "BertConfig.scan_unroll")
        if not isinstance(self.scan_layers, bool):
            raise ValueError(f"BertConfig.scan_layers must be true or false, got {self.scan_layers!r}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    def with_num_labels(self, num_labels: int) -> "BertConfig":
        """The same config with ``num_labels`` labels (generic names if the count changes)."""
        if num_labels == self.num_labels:
            return self
        return dataclasses.replace(self, labels=tuple(f"LABEL_{i}" for i in range(num_labels)))

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> "BertConfig":
        """Reads a HF ``config.json`` dict; refuses features this implementation does not have."""
        position_type = hf.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"position_embedding_type={position_type!r} is not supported; "
                             "jaxtune's BERT has absolute position embeddings only")
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ValueError("BERT decoders (is_decoder / add_cross_attention) are not supported; "
                             "jaxtune's BERT is a bidirectional encoder")
        names = {f.name for f in dataclasses.fields(cls)} - {"labels", *_JAXTUNE_FIELDS}
        kwargs = {k: hf[k] for k in names if hf.get(k) is not None}
        if hf.get("id2label"):
            id2label = {int(k): v for k, v in hf["id2label"].items()}
            kwargs["labels"] = tuple(id2label[i] for i in sorted(id2label))
        elif hf.get("num_labels"):
            kwargs["labels"] = tuple(f"LABEL_{i}" for i in range(int(hf["num_labels"])))
        return cls(**kwargs)

    def to_hf(self, task: str | None = None) -> dict[str, Any]:
        """A ``config.json`` dict that ``transformers.AutoModelFor...`` loads for ``task``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("labels", *_JAXTUNE_FIELDS)
               and not (f.name == "problem_type" and self.problem_type is None)}
        out["id2label"] = {str(i): label for i, label in self.id2label.items()}
        out["label2id"] = {label: i for i, label in self.id2label.items()}
        out.update(model_type="bert", architectures=[ARCHITECTURES[task]],
                   position_embedding_type="absolute")
        return out


class BertOutput(NamedTuple):
    """Output of the bare :class:`BertModel`."""

    last_hidden_state: jax.Array  # (batch, seq, hidden)
    pooler_output: jax.Array      # (batch, hidden): tanh(dense(hidden state of the first token))


def mean_pool(last_hidden_state: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean of the token vectors where ``attention_mask`` is 1 (sentence-transformers pooling).

    Example::

        out = model.apply(variables, input_ids, attention_mask)
        emb = mean_pool(out.last_hidden_state, attention_mask)     # (batch, hidden)
    """
    mask = attention_mask[..., None].astype(last_hidden_state.dtype)
    total = jnp.sum(last_hidden_state * mask, axis=-2)
    return total / jnp.maximum(jnp.sum(mask, axis=-2), 1e-9)



class BertBackbone(nn.Module):
    """Embeddings, encoder and (optionally) pooler: the module named ``bert`` in every model."""

    config: BertConfig
    dtype: Any = jnp.float32
    add_pooling_layer: bool = True
    frozen_layers: int = 0

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids, deterministic: bool):
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.bool_)
        if token_type_ids is None:
            token_type_ids = jnp.zeros(input_ids.shape, jnp.int32)
        mask = attention_mask.astype(jnp.bool_)[:, None, None, :]   # (batch, 1, 1, key)
        x = BertEmbeddings(self.config, self.dtype, name="embeddings")(
            input_ids, token_type_ids, deterministic)
        x = BertEncoder(self.config, self.dtype, self.frozen_layers, name="encoder")(x, mask, deterministic)
        pooled = BertPooler(self.config, self.dtype, name="pooler")(x) if self.add_pooling_layer else None
        return x, pooled


class _BertTaskModel(nn.Module):
    """Fields and helpers shared by the top-level BERT models.

    ``frozen_layers`` (a scanned model's, ``config.scan_layers``): the bottom k encoder layers run
    under ``stop_gradient`` in a scan of their own, so that a training step computes no weight
    gradient for them (:func:`jaxtune.with_frozen_layers` sets it from a trainable mask).
    """

    config: BertConfig
    dtype: Any = jnp.float32
    frozen_layers: int = 0

    def layer_ids(self, path: str) -> int | np.ndarray:
        """Layer id of a parameter path (see :func:`layer_ids`), for layer-wise LR decay."""
        return layer_ids(path, self.config.num_hidden_layers)

    def _backbone(self, add_pooling_layer: bool) -> BertBackbone:
        return BertBackbone(self.config, self.dtype, add_pooling_layer, self.frozen_layers, name="bert")

    def default_rules(self) -> list:
        """The family's default rule table (the module's :func:`default_rules`), e.g.
        ``jt.make_optimizer(params, model.default_rules(), layer_ids=model.layer_ids, layer_decay=0.8)``."""
        return default_rules()

    def _dropout(self, x, deterministic: bool):
        cfg = self.config
        rate = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
        return nn.Dropout(rate)(x, deterministic=deterministic)


class BertModel(_BertTaskModel):
    """The bare encoder with pooler (HF ``BertModel``); returns a :class:`BertOutput`.

    Example::

        model = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=37))
        variables = model.init(jax.random.key(0), jnp.ones((2, 8), jnp.int32))
        out = model.apply(variables, input_ids, attention_mask)   # out.last_hidden_state
    """

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True):
        """Runs the encoder; returns :class:`BertOutput` ``(last_hidden_state (batch, seq, hidden),
        pooler_output (batch, hidden))``.

        Args:
          input_ids: ``(batch, seq)`` int token ids (from the model's tokenizer).
          attention_mask: ``(batch, seq)``, 1 for real tokens, 0 for padding (default: all 1).
          token_type_ids: ``(batch, seq)`` segment ids, 0 = first sentence, 1 = second (default: all 0).
          deterministic: False turns dropout on (training; pass ``rngs={"dropout": key}`` to ``apply``).
        """
        hidden, pooled = self._backbone(True)(
            input_ids, attention_mask, token_type_ids, deterministic)
        return BertOutput(hidden, pooled)


class BertForSequenceClassification(_BertTaskModel):
    """Pooled output -> dropout -> ``classifier``; logits (batch, num_labels).

    Sentence pairs: pass ``token_type_ids`` (0 for the first sentence, 1 for the second).
    """

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True):
        """Logits ``(batch, num_labels)``; arguments as :meth:`BertModel.__call__`."""
        _, pooled = self._backbone(True)(
            input_ids, attention_mask, token_type_ids, deterministic)
        pooled = self._dropout(pooled, deterministic)
        return _dense(self.config, self.config.num_labels, self.dtype, "classifier")(pooled)


class BertForTokenClassification(_BertTaskModel):
    """Hidden states -> dropout -> ``classifier``; logits (batch, seq, num_labels)."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True):
        """Logits ``(batch, seq, num_labels)``; arguments as :meth:`BertModel.__call__`."""
        hidden, _ = self._backbone(False)(
            input_ids, attention_mask, token_type_ids, deterministic)
        hidden = self._dropout(hidden, deterministic)
        return _dense(self.config, self.config.num_labels, self.dtype, "classifier")(hidden)


class BertForQuestionAnswering(_BertTaskModel):
    """Hidden states -> ``qa_outputs`` (2 units); returns ``(start_logits, end_logits)``, each
    (batch, seq)."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True):
        """``(start_logits, end_logits)``, each ``(batch, seq)``; arguments as :meth:`BertModel.__call__`."""
        hidden, _ = self._backbone(False)(
            input_ids, attention_mask, token_type_ids, deterministic)
        logits = _dense(self.config, 2, self.dtype, "qa_outputs")(hidden)
        return logits[..., 0], logits[..., 1]



class BertForMaskedLM(_BertTaskModel):
    """Hidden states -> masked-LM head; logits (batch, seq, vocab_size)."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True):
        """Logits ``(batch, seq, vocab_size)``; arguments as :meth:`BertModel.__call__`."""
        backbone = self._backbone(False)
        hidden, _ = backbone(input_ids, attention_mask, token_type_ids, deterministic)
        embedding = backbone.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
        return BertMLMHead(self.config, self.dtype, name="cls")(hidden, embedding)


MODELS: dict[str | None, type[_BertTaskModel]] = {
    None: BertModel,
    "sequence_classification": BertForSequenceClassification,
    "token_classification": BertForTokenClassification,
    "question_answering": BertForQuestionAnswering,
    "masked_lm": BertForMaskedLM,
}


# ---------------------------------------------------------------------------------------------
# Layer ids and default rules.

_LAYER = re.compile(r"bert/encoder/layer_(\d+)/.+")
_STACKED = re.compile(r"bert/encoder/layer/.+")
_EMBEDDINGS = re.compile(r"bert/embeddings/.+")
_TOP = re.compile(r"(bert/pooler|classifier|qa_outputs|cls)/.+")


def layer_ids(path: str, num_layers: int) -> int | np.ndarray:
    """Layer id of a BERT parameter path: embeddings 0, ``layer_i`` -> i + 1, pooler and heads L + 1;
    a stacked leaf of a scanned model (``bert/encoder/layer/...``) has the ids 1 .. L, one per layer.

    Example::

        layer_ids("bert/encoder/layer_3/attention/self/query/kernel", 12)   # 4
        layer_ids("bert/encoder/layer/attention/self/query/kernel", 12)     # array([1, 2, ..., 12])
        layer_ids("classifier/kernel", 12)                                  # 13
    """
    if _EMBEDDINGS.fullmatch(path):
        return 0
    if _STACKED.fullmatch(path):
        return np.arange(1, num_layers + 1)
    m = _LAYER.fullmatch(path)
    if m:
        i = int(m.group(1))
        if i >= num_layers:
            raise KeyError(f"BERT layer_ids: {path!r} names layer {i} but the model has "
                           f"{num_layers} layers")
        return i + 1
    if _TOP.fullmatch(path):
        return num_layers + 1
    raise KeyError(f"BERT layer_ids: unknown parameter path {path!r}; expected bert/embeddings/..., "
                   "bert/encoder/layer_<i>/..., bert/encoder/layer/... (scanned), bert/pooler/..., classifier/..., "
                   "qa_outputs/... or "
                   "cls/... (paths of variables['params'] without a leading 'params/')")


def default_rules() -> list[tuple[str, Settings]]:
    """No weight decay on biases and LayerNorm scales, defaults for everything else.

    Example::

        tx = jt.make_optimizer(params, bert.default_rules(), optax.adamw, learning_rate=2e-5)
    """
    return [
        (r".*/(bias|LayerNorm/scale)", settings(weight_decay=0.0, name="no_decay")),
        (r".*", settings(name="decay")),
    ]


# ---------------------------------------------------------------------------------------------
# Hugging Face checkpoints.

def _module_rules(hf: str, flax: str, kind: str) -> list[NameRule]:
    flax = f"params/{flax}"
    if kind == "dense":
        return [NameRule(f"{hf}.weight", f"{flax}/kernel", "linear"), NameRule(f"{hf}.bias", f"{flax}/bias")]
    if kind == "norm":   # old checkpoints (original BERT) name LayerNorm weights gamma / beta
        return [NameRule(f"{hf}.weight", f"{flax}/scale"), NameRule(f"{hf}.bias", f"{flax}/bias"),
                NameRule(f"{hf}.gamma", f"{flax}/scale"), NameRule(f"{hf}.beta", f"{flax}/bias")]
    return [NameRule(f"{hf}.weight", f"{flax}/embedding")]


_LAYER_HF, _LAYER_FLAX = "bert.encoder.layer.{i}", "bert/encoder/layer_{i}"
_STACKED_FLAX = "params/bert/encoder/layer"   # the layers of a scanned model (scan_layers=True)
_MODULES = [
    ("bert.embeddings.word_embeddings", "bert/embeddings/word_embeddings", "embed"),
    ("bert.embeddings.position_embeddings", "bert/embeddings/position_embeddings", "embed"),
    ("bert.embeddings.token_type_embeddings", "bert/embeddings/token_type_embeddings", "embed"),
    ("bert.embeddings.LayerNorm", "bert/embeddings/LayerNorm", "norm"),
    *[(f"{_LAYER_HF}.attention.self.{n}", f"{_LAYER_FLAX}/attention/self/{n}", "dense")
      for n in ("query", "key", "value")],
    (f"{_LAYER_HF}.attention.output.dense", f"{_LAYER_FLAX}/attention/output/dense", "dense"),
    (f"{_LAYER_HF}.attention.output.LayerNorm", f"{_LAYER_FLAX}/attention/output/LayerNorm", "norm"),
    (f"{_LAYER_HF}.intermediate.dense", f"{_LAYER_FLAX}/intermediate/dense", "dense"),
    (f"{_LAYER_HF}.output.dense", f"{_LAYER_FLAX}/output/dense", "dense"),
    (f"{_LAYER_HF}.output.LayerNorm", f"{_LAYER_FLAX}/output/LayerNorm", "norm"),
    ("bert.pooler.dense", "bert/pooler/dense", "dense"),
    ("classifier", "classifier", "dense"),
    ("qa_outputs", "qa_outputs", "dense"),
    ("cls.predictions.transform.dense", "cls/predictions/transform/dense", "dense"),
    ("cls.predictions.transform.LayerNorm", "cls/predictions/transform/LayerNorm", "norm"),
]
NAMES = NameMap([
    *[rule for module in _MODULES for rule in _module_rules(*module)],
    NameRule("cls.predictions.bias", "params/cls/predictions/bias"),
    # Older checkpoints also store the decoder's bias, which is the same tensor.
    NameRule("cls.predictions.decoder.bias", "params/cls/predictions/bias"),
])

_BACKBONE_PREFIXES = ("embeddings.", "encoder.", "pooler.")


def _with_prefix(name: str) -> str:
    """Bare ``BertModel`` checkpoints (e.g. all-MiniLM-L6-v2) have no ``bert.`` prefix."""
    return f"bert.{name}" if name.startswith(_BACKBONE_PREFIXES) else name


def to_flax(config: BertConfig, tensors: Mapping[str, np.ndarray], task: str | None = None):
    """HF tensors (with or without the ``bert.`` prefix) -> (nested Flax variables, used HF names);
    the layers stacked for a scanned model (``config.scan_layers``)."""
    renamed = {_with_prefix(name): name for name in tensors}
    variables, used = NAMES.to_flax({new: tensors[old] for new, old in renamed.items()})
    if config.scan_layers:
        variables = unflatten_paths(stack_layers(flatten_paths(variables), f"params/{_LAYER_FLAX}", _STACKED_FLAX,
                                                 config.num_hidden_layers))
    return variables, {renamed[name] for name in used}


def stacked_layers(config: BertConfig) -> tuple[tuple[str, str, int], ...]:
    """(stacked path, per-layer path template, layer count) of the encoder a scanned model
    (``config.scan_layers``) keeps stacked; () unscanned.

    Example::

        stacked_layers(BertConfig(scan_layers=True))   # (("params/bert/encoder/layer", "params/bert/encoder/layer_{i}", 12),)
    """
    return ((_STACKED_FLAX, f"params/{_LAYER_FLAX}", config.num_hidden_layers),) if config.scan_layers else ()


def to_hf(config: BertConfig, variables: Mapping[str, Any], task: str | None = None) -> dict[str, np.ndarray]:
    """Flax variables -> HF tensors named as transformers saves the model of ``task``.

    The bare model (task ``None``) is saved without the ``bert.`` prefix, like ``BertModel``; the
    tied masked-LM decoder is not written (transformers ties it on load). The stacked layers of a
    scanned model are written per layer, under the same names.
    """
    flat = flatten_paths(variables)
    if any(path.startswith(_STACKED_FLAX + "/") for path in flat):
        variables = unflatten_paths(unstack_layers(flat, _STACKED_FLAX, f"params/{_LAYER_FLAX}"))
    tensors = NAMES.to_hf(variables)
    if task is None:
        tensors = {name.removeprefix("bert."): array for name, array in tensors.items()}
    return tensors


def _check_task(task: str | None) -> None:
    if task not in MODELS:
        raise ValueError(f"BERT has no task {task!r}; supported: {list(MODELS)}")


def _config_for(config: BertConfig, task: str | None, num_labels: int | None) -> BertConfig:
    _check_task(task)
    if task == "question_answering":
        if num_labels not in (None, 2):
            raise ValueError(f"question_answering predicts start and end logits: num_labels must be "
                             f"2 (or None), got {num_labels}")
        return config.with_num_labels(2)
    return config.with_num_labels(num_labels) if num_labels else config


def build(config: BertConfig, task: str | None = None, num_labels: int | None = None,
          dtype=jnp.float32) -> _BertTaskModel:
    """The Flax model of ``task`` (see :data:`MODELS`) with ``num_labels`` outputs where it has labels.

    Example::

        model = build(config, "sequence_classification", num_labels=3, dtype=jnp.bfloat16)
    """
    config = _config_for(config, task, num_labels)
    if task == "masked_lm" and not config.tie_word_embeddings:
        raise ValueError("masked_lm with tie_word_embeddings=False (an untied decoder) is not "
                         "supported; jaxtune's BERT decoder is tied to the word embeddings")
    return MODELS[task](config=config, dtype=dtype)


def config_to_hf(config: BertConfig, task: str | None = None, num_labels: int | None = None) -> dict:
    """``config.json`` dict for ``task`` (``architectures`` names the transformers class)."""
    return _config_for(config, task, num_labels).to_hf(task)


def example_inputs(config: BertConfig, task: str | None = None) -> tuple:
    """Positional inputs for ``model.init``: one short batch of token ids."""
    return (jnp.zeros((1, min(8, config.max_position_embeddings)), jnp.int32),)


FAMILY = ModelFamily(
    name="bert",
    model_types=("bert",),
    tasks=TASKS,
    config_from_hf=BertConfig.from_hf,
    config_to_hf=config_to_hf,
    build=build,
    to_flax=to_flax,
    to_hf=to_hf,
    head_paths=(r"params/classifier/.*", r"params/qa_outputs/.*", r"params/cls/.*",
                r"params/bert/pooler/.*"),
    example_inputs=example_inputs,
    stacked_layers=stacked_layers,
)
