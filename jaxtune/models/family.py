"""What a model family (BERT, T5, ResNet, ...) tells the hub, and the name-map table that converts
Hugging Face tensor names to Flax variable paths and back.

A family module (``jaxtune/models/bert.py`` ...) defines one :class:`ModelFamily` called ``FAMILY``.
The hub (``jaxtune/hub.py``) finds it by the ``model_type`` in ``config.json``; nothing else in the
library needs to know how a family names its tensors.

Example::

    names = NameMap([
        NameRule("embeddings.word_embeddings.weight", "params/embeddings/word_embeddings/embedding"),
        NameRule("encoder.layer.{i}.attention.self.query.weight",
                 "params/encoder/layer_{i}/attention/self/query/kernel", "linear"),
    ])
    flax_tree, used = names.to_flax({"encoder.layer.0.attention.self.query.weight": w})
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxtune.errors import UserError

# How one tensor changes layout between PyTorch / HF and Flax.
#   copy:   same array
#   linear: torch Linear (out, in)        <-> flax Dense (in, out)
#   conv:   torch Conv (out, in, kh, kw)  <-> flax Conv (kh, kw, in, out)   (NCHW weights -> HWIO)
_TO_FLAX: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda a: a,
    "linear": lambda a: np.ascontiguousarray(a.T),
    "conv": lambda a: np.ascontiguousarray(a.transpose(2, 3, 1, 0)),
}
_TO_HF: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda a: a,
    "linear": lambda a: np.ascontiguousarray(a.T),
    "conv": lambda a: np.ascontiguousarray(a.transpose(3, 2, 0, 1)),
}

_FIELD = re.compile(r"\{(\w+)\}")


def _template_regex(template: str) -> re.Pattern:
    """'encoder.layer.{i}.w' -> regex with a named digit group per {field}."""
    parts, last = [], 0
    for m in _FIELD.finditer(template):
        parts.append(re.escape(template[last:m.start()]))
        parts.append(f"(?P<{m.group(1)}>\\d+)")
        last = m.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts))


@dataclasses.dataclass(frozen=True)
class NameRule:
    """One row of a name map: an HF tensor name template, a Flax path template, a layout transform.

    Templates use ``{field}`` for a layer number, e.g. ``encoder.layer.{i}.output.dense.bias`` and
    ``params/encoder/layer_{i}/output/dense/bias``. The Flax path starts with the variable
    collection (``params`` or ``batch_stats``).
    """

    hf: str
    flax: str
    transform: str = "copy"

    def __post_init__(self):
        if self.transform not in _TO_FLAX:
            raise ValueError(f"NameRule {self.hf!r}: unknown transform {self.transform!r}; "
                             f"use one of {sorted(_TO_FLAX)}")


class NameMap:
    """Converts between flat HF ``{name: array}`` dicts and nested Flax variable dicts."""

    def __init__(self, rules: list[NameRule]):
        self.rules = list(rules)
        self._hf = [(_template_regex(r.hf), r) for r in self.rules]
        self._flax = [(_template_regex(r.flax), r) for r in self.rules]

    def to_flax(self, tensors: Mapping[str, np.ndarray]) -> tuple[dict, set[str]]:
        """Returns (nested flax variables, set of HF names used). Names no rule knows are left out."""
        out: dict = {}
        used: set[str] = set()
        for name, array in tensors.items():
            for pattern, rule in self._hf:
                m = pattern.fullmatch(name)
                if m:
                    _set_path(out, rule.flax.format(**m.groupdict()), _TO_FLAX[rule.transform](np.asarray(array)))
                    used.add(name)
                    break
        return out, used

    def to_hf(self, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Flattens nested flax variables to HF names. A leaf that no rule knows is an error."""
        out: dict[str, np.ndarray] = {}
        unknown = []
        for path, array in flatten_paths(variables).items():
            for pattern, rule in self._flax:
                m = pattern.fullmatch(path)
                if m:
                    out[rule.hf.format(**m.groupdict())] = _TO_HF[rule.transform](np.asarray(array))
                    break
            else:
                unknown.append(path)
        if unknown:
            raise KeyError(f"no HF name for {len(unknown)} Flax variable(s): {unknown[:10]}; "
                           "add a NameRule for them to the family's name map")
        return out


def flatten_paths(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': x}} -> {'a/b': x} for nested mappings (dicts, FrozenDicts)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_paths(value, path))
        else:
            flat[path] = value
    return flat


_NUMBERED = re.compile(r"(?:^|_)\d+$")


def _numbered_prefixes(path: str) -> list[str]:
    """'a/layer_3/b/sub_0/w' -> ['a/layer_3', 'a/layer_3/b/sub_0']: the prefixes ending in a numbered part."""
    parts = path.split("/")
    return ["/".join(parts[:i + 1]) for i, part in enumerate(parts[:-1]) if _NUMBERED.search(part)]


def _absent_layers(paths: Any, present: Any) -> list[str]:
    """The outermost numbered prefixes of ``paths`` with none of ``present`` under them."""
    covered = {prefix for path in present for prefix in _numbered_prefixes(path)}
    absent = set()
    for path in paths:
        prefix = next((q for q in _numbered_prefixes(path) if q not in covered), None)
        if prefix is not None:
            absent.add(prefix)
    return sorted(absent, key=lambda q: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", q)])


def layer_mismatch(model_paths: Any, checkpoint_paths: Any) -> tuple[list[str], list[str]]:
    """Numbered layers (``.../layer_7``, ``.../block_3``) that only one side has: whole layers the
    checkpoint lacks, and whole layers the model lacks (a layer count that differs).

    Example::

        >>> layer_mismatch(["enc/layer_0/w", "enc/layer_1/w"], ["enc/layer_0/w", "enc/layer_2/w"])
        (['enc/layer_1'], ['enc/layer_2'])
    """
    model_paths, checkpoint_paths = list(model_paths), list(checkpoint_paths)
    return _absent_layers(model_paths, checkpoint_paths), _absent_layers(checkpoint_paths, model_paths)


def unflatten_paths(flat: Mapping[str, Any]) -> dict:
    """{'a/b': x} -> {'a': {'b': x}} (inverse of :func:`flatten_paths`)."""
    tree: dict = {}
    for path, value in flat.items():
        _set_path(tree, path, value)
    return tree


def _set_path(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


LABELLED_TASKS = ("sequence_classification", "token_classification", "image_classification")
"""Tasks whose head has one output per label: ``config.json`` names them in ``id2label``/``label2id``."""


def with_label_names(hf_config: Mapping[str, Any], labels: Sequence[Any], task: str | None) -> dict:
    """``hf_config`` with ``id2label``/``label2id`` naming the head's outputs ``labels`` (in order).

    The head size is ``len(hf_config["id2label"])``, else ``hf_config["num_labels"]``; ``labels`` must
    name each output once.

    Example::

        with_label_names({"num_labels": 2}, ["neg", "pos"], "image_classification")
        # {"num_labels": 2, "id2label": {"0": "neg", "1": "pos"}, "label2id": {"neg": 0, "pos": 1}}
    """
    if task not in LABELLED_TASKS:
        raise UserError(f"labels= names the outputs of a classification head, and task {task!r} has none.",
                        hint=f"Pass labels only for the tasks {list(LABELLED_TASKS)}.")
    names = [str(label) for label in labels]
    size = len(hf_config["id2label"]) if "id2label" in hf_config else hf_config.get("num_labels")
    if size is not None and len(names) != size:
        raise UserError(f"{len(names)} label names {names[:5]}{' ...' if len(names) > 5 else ''} for a head of "
                        f"{size} outputs.", hint="Pass one name per output, in output order (e.g. the data's "
                        "label names, padded to num_labels).")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(f"label names must be distinct (label2id maps each to one output); repeated: {duplicates}")
    return {**hf_config, "id2label": {str(i): name for i, name in enumerate(names)},
            "label2id": {name: i for i, name in enumerate(names)}}


def export_labels(label_names: Sequence[Any], num_labels: int | None, task: str | None) -> tuple[str, ...] | None:
    """The names a run's export gives its head outputs: the data's label names, padded with
    ``LABEL_<i>`` up to ``num_labels`` (a head wider than the data); None when ``task`` has no label
    head or the data names no labels.

    Example::

        export_labels(("neg", "pos"), 3, "sequence_classification")   # ("neg", "pos", "LABEL_2")
    """
    if task not in LABELLED_TASKS or not label_names:
        return None
    size = len(label_names) if num_labels is None else int(num_labels)
    return tuple(str(name) for name in label_names) + tuple(f"LABEL_{i}" for i in range(len(label_names), size))


class UnknownConfigField(UserError):
    """An override names a field that the family's config does not have (:func:`with_config_overrides`)."""


def with_config_overrides(config: Any, overrides: Mapping[str, Any], source: str = "from_pretrained") -> Any:
    """``config`` (a family's frozen dataclass) with the fields ``overrides`` names replaced, e.g.
    jaxtune's own ``scan_layers`` / ``remat`` / ``attention_implementation``; an unknown field or a
    value the config refuses is a :class:`UserError` naming it.

    Example::

        with_config_overrides(BertConfig(), {"scan_layers": True}).scan_layers   # True
    """
    if not overrides:
        return config
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UnknownConfigField(f"{source} got {', '.join(f'{k}={overrides[k]!r}' for k in unknown)}, which "
                        f"{'is' if len(unknown) == 1 else 'are'} not a field of {type(config).__name__}",
                        hint=f"Hint: the fields it takes are {sorted(fields)}.")
    try:
        return dataclasses.replace(config, **overrides)
    except (ValueError, TypeError) as e:
        raise UserError(f"{source}: {e}") from None


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """Everything the hub needs to load, build and save one family of checkpoints.

    Attributes:
      name: family name, e.g. "bert".
      model_types: HF ``config.json`` ``model_type`` values this family reads.
      tasks: task names the family supports (None = bare backbone).
      config_from_hf: config.json dict -> the family's config object.
      config_to_hf: (config, task, num_labels) -> config.json dict that transformers can load
        (with ``architectures`` naming the matching transformers class).
      build: (config, task, num_labels, dtype) -> flax linen Module.
      to_flax: (config, tensors, task) -> (nested variables, set of used HF names).
      to_hf: (config, variables, task) -> {HF name: numpy array}.
      head_paths: regexes (re.fullmatch on 'collection/a/b' paths) of the task-head variables that
        are re-initialised, not refused, when the checkpoint has none or a different label count.
      example_inputs: (config, task) -> tuple of positional arrays to ``model.init`` with.
      config_for_weights: optional (config, tensors) -> config, for what ``config.json`` gets
        wrong and the weights show (T5: an untied ``lm_head`` saved with
        ``tie_word_embeddings: true``); runs before the model is built.
      stacked_layers: optional config -> ``((stacked path, per-layer template, count), ...)``, the
        layer stacks a scanned model (``scan_layers``) keeps as one tree with a leading layer axis,
        e.g. ``("params/bert/encoder/layer", "params/bert/encoder/layer_{i}", 12)``; () unscanned.
        What converts per-layer files (PEFT adapters) to and from the stacked layout reads it.
      torch_state_dict: for families whose ecosystem is PyTorch, not transformers (the torchvision
        CNNs): the file name under which ``save_pretrained`` also writes the tensors as a ``.pth``
        state dict that ``torch.load(path, weights_only=True)`` reads; ``config_to_hf`` must then
        write a ``model_type`` that transformers does not know, so that it refuses the directory.
    """

    name: str
    model_types: tuple[str, ...]
    tasks: tuple[str | None, ...]
    config_from_hf: Callable[[dict], Any]
    config_to_hf: Callable[[Any, str | None, int | None], dict]
    build: Callable[..., Any]
    to_flax: Callable[[Any, Mapping[str, np.ndarray], str | None], tuple[dict, set[str]]]
    to_hf: Callable[[Any, Mapping[str, Any], str | None], dict[str, np.ndarray]]
    head_paths: tuple[str, ...]
    example_inputs: Callable[[Any, str | None], tuple]
    config_for_weights: Callable[[Any, Mapping[str, np.ndarray]], Any] | None = None
    torch_state_dict: str | None = None
    stacked_layers: Callable[[Any], tuple[tuple[str, str, int], ...]] | None = None
