"""Fine-tuning strategy as data: an ordered table of ``(path regex, Settings)`` rules.

Every parameter leaf has a path string (``encoder/layer_3/attention/query/kernel``, made by
:mod:`jaxtune.tree_paths`). The first rule whose regex ``re.fullmatch``-es the path decides the leaf's
settings. A leaf that no rule matches is an error naming it; so is a rule that matches nothing (it is
usually a typo).

A :func:`lora` rule freezes the kernels it matches and trains low-rank factors beside them
(:mod:`jaxtune.lora`): in a tree that holds the factors (:class:`jaxtune.LoraParams`), a factor leaf
``<kernel path>/lora_a`` (``lora_b``) takes the settings of the ``lora`` rule that matches its kernel
(other rules match the factor's own path, first match wins as usual).

Example::

    import jaxtune as jt
    rules = [
        (r".*attention/self/(query|value)/kernel", jt.lora(rank=8, alpha=16)),
        (r"embeddings/.*", jt.freeze()),
        (r".*(bias|LayerNorm/scale)", jt.settings(weight_decay=0.0)),
        (r".*", jt.settings()),
    ]
    mask = jt.trainable_mask(params, rules)      # bool pytree, same structure as params
    print(jt.summary(params, rules))
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxtune.errors import UserError, check_number
from jaxtune.lora_spec import LoraSpec, check_lora
from jaxtune.tree_paths import (LORA_FACTORS, LORA_TREE_KEYS, leaf_paths, lora_base_path,  # re-exported
                                param_paths, strip_variables, tree_structure)


BATCH_STATS_MODES = (None, "frozen", "train")
"""Values of :attr:`Settings.batch_stats`."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one rule says about the parameters it matches.

    Attributes:
      frozen: the parameters are not trained (no optimizer state, no update).
      lr_mult: learning-rate multiplier of the group.
      weight_decay: ``None`` = the optimizer's default, ``False``/``0.0`` = no decay, ``True`` = the
        default value, a float = that value.
      layer_decay: per-rule layer-wise LR decay factor; ``None`` = the optimizer's ``layer_decay``,
        ``1.0`` = no layer-wise decay for this group.
      name: group name shown in summaries and used to address the group later; defaults to the regex.
      l2_sp: strength of the L2-SP penalty towards the pretrained weights (:func:`jaxtune.l2_sp`);
        ``None`` = the optimizer's ``l2_sp`` (default 0: off), ``0.0`` = off for this group.
      batch_stats: what the batch-norm layers whose ``scale``/``bias`` the rule matches do in a
        training step (:func:`frozen_batch_norm`): ``"frozen"`` = normalise with the running
        statistics and never update them (as in evaluation), ``"train"`` = batch statistics and
        running-average updates (PyTorch's ``model.train()``), ``None`` = follow the group: frozen
        for a frozen group (or one a gradual-unfreezing stage keeps frozen), train otherwise.
      lora: a :class:`LoraSpec` (from :func:`lora`): the matched kernels stay frozen and their LoRA
        factors train with the other settings of the rule.
    """

    frozen: bool = False
    lr_mult: float = 1.0
    weight_decay: float | bool | None = None
    layer_decay: float | None = None
    name: str | None = None
    l2_sp: float | None = None
    batch_stats: str | None = None
    lora: LoraSpec | None = None

    def __post_init__(self):
        validate_settings(self)


class RuleError(UserError):
    """A rule table does not fit a parameter tree (uncovered parameters, unused or bad rules)."""


def validate_settings(s: Any, where: str = "") -> None:
    """Checks the values of one rule: ``Settings`` or a config rule (any object with the same fields).

    The one check behind ``jt.settings``/``jt.freeze`` and the config's ``optim.rules``: ``lr_mult``
    >= 0, ``weight_decay`` a bool or >= 0, ``layer_decay`` in (0, 1], ``l2_sp`` >= 0, all finite;
    ``batch_stats`` one of :data:`BATCH_STATS_MODES`; a frozen rule takes no settings but ``batch_stats`` (they would be dropped silently). ``where`` prefixes the field
    names in messages (``optim.rules[2]``).

    Example::

        validate_settings(Settings(lr_mult=2.0))                       # passes
        validate_settings(config.optim.rules[0], "optim.rules[0]")     # RuleError naming the field
    """
    field = (lambda f: f"{where}.{f}") if where else (lambda f: f)
    if not isinstance(s.frozen, bool):
        raise RuleError(f"{field('frozen')} must be true or false, got {s.frozen!r}")
    if s.frozen:
        given = [f for f, default in (("lr_mult", 1.0), ("weight_decay", None), ("layer_decay", None),
                                      ("l2_sp", None)) if getattr(s, f) != default]
        if given:
            raise RuleError(f"{where or 'a frozen rule'} is frozen but also sets {', '.join(given)}; a frozen "
                            "group is not trained, so these would be ignored. Drop them, or unfreeze the rule")
    check_number(field("lr_mult"), s.lr_mult, low=0.0, error=RuleError)
    if s.weight_decay is not None and not isinstance(s.weight_decay, bool):
        check_number(field("weight_decay"), s.weight_decay, low=0.0, error=RuleError)
    if s.layer_decay is not None:
        check_number(field("layer_decay"), s.layer_decay, low=0.0, high=1.0, low_open=True, error=RuleError)
    if s.l2_sp is not None:
        check_number(field("l2_sp"), s.l2_sp, low=0.0, error=RuleError)
    if s.name is not None and (not isinstance(s.name, str) or not s.name):
        raise RuleError(f"{field('name')} must be a non-empty string or None, got {s.name!r}")
    if getattr(s, "lora", None) is not None:
        if s.frozen:
            raise RuleError(f"{where or 'a rule'} is frozen but also sets lora; a LoRA rule freezes the kernels "
                            "itself and trains their factors. Drop frozen, or drop lora")
        check_lora(s.lora, field("lora"), RuleError)
    if s.batch_stats not in BATCH_STATS_MODES:
        raise RuleError(f"{field('batch_stats')} is {s.batch_stats!r}; choose 'frozen' (batch norm keeps its running "
                        "statistics, as in evaluation), 'train' (batch statistics, running averages updated) or "
                        "None/null (frozen exactly when the group is)")


def lora(rank: int = 8, alpha: float | None = None, dropout: float = 0.0, *, lr_mult: float = 1.0,
         weight_decay: float | bool | None = None, layer_decay: float | None = None, name: str | None = None,
         l2_sp: float | None = None) -> Settings:
    """Settings of a LoRA group: the matched kernels stay frozen and gain trainable low-rank
    factors ``A`` (``in x rank``, random) and ``B`` (``rank x out``, zero), the kernel used being
    ``W + alpha / rank * A @ B`` (``alpha`` defaults to ``2 * rank``; :func:`jaxtune.init_lora`,
    :func:`jaxtune.apply_lora`). The factors train with the other settings given here
    (learning-rate multiplier, weight decay, layer-wise decay by the kernel's layer, L2-SP), and
    show as the group ``name`` in :func:`summary`; the kernels as ``"<name> (base)"``, frozen.
    ``dropout`` (PEFT's ``lora_dropout``) drops the LoRA branch's input in training steps; it
    needs the unmerged form (:class:`jaxtune.LoraForward`: linen Dense / 1x1 Conv calls, not
    stacked layers or ``nnx`` models).

    Example::

        rules = [(r".*attention/self/(query|value)/kernel", jt.lora(rank=8, alpha=16, weight_decay=False)),
                 (r"classifier/.*", jt.settings()), (r".*", jt.freeze())]
    """
    return Settings(frozen=False, lr_mult=lr_mult, weight_decay=weight_decay, layer_decay=layer_decay, name=name,
                    l2_sp=l2_sp, lora=LoraSpec(rank, 2 * rank if alpha is None else alpha, dropout))


def settings(*, lr_mult: float = 1.0, weight_decay: float | bool | None = None,
             layer_decay: float | None = None, name: str | None = None, l2_sp: float | None = None,
             batch_stats: str | None = None) -> Settings:
    """Settings of a trainable group (``batch_stats``: see :class:`Settings`).

    Example::

        (r".*bias", jt.settings(weight_decay=False))
        (r"classifier/.*", jt.settings(lr_mult=10.0, name="head"))
        (r"encoder/.*", jt.settings(l2_sp=0.01))      # keep the backbone near its pretrained weights
        (r".*", jt.settings(batch_stats="frozen"))    # train BN scale/bias, keep the running statistics
    """
    return Settings(frozen=False, lr_mult=lr_mult, weight_decay=weight_decay,
                    layer_decay=layer_decay, name=name, l2_sp=l2_sp, batch_stats=batch_stats)


def freeze(name: str | None = None, *, batch_stats: str | None = None) -> Settings:
    """Settings of a frozen group: no update, no optimizer state. Its batch-norm layers normalise
    with their running statistics and keep them (``batch_stats="train"``: batch statistics and
    running-average updates, as before frozen batch norm existed; see :class:`Settings`).

    Example::

        rules = [(r"embeddings/.*", jt.freeze()), (r".*", jt.settings())]
        rules = [(r"classifier/.*", jt.settings()), (r".*", jt.freeze(batch_stats="train"))]
    """
    return Settings(frozen=True, name=name, batch_stats=batch_stats)


Rule = tuple[str, Settings]


_MAX_NAMED = 10


def _rule_matches(rx: re.Pattern, s: Settings, path: str) -> bool:
    """A LoRA rule matches its kernels and, in a tree with adapters, their factors."""
    base = lora_base_path(path) if s.lora is not None else None
    return bool(rx.fullmatch(base if base is not None else path))


def _check_rules(rules: Sequence[Rule]) -> list[tuple[re.Pattern, Settings]]:
    compiled = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str)
                and isinstance(rule[1], Settings)):
            raise RuleError(f"rule {i} is {rule!r}; a rule is a (regex, jt.settings(...)/jt.freeze()) pair")
        try:
            compiled.append((re.compile(rule[0]), rule[1]))
        except re.error as e:
            raise RuleError(f"rule {i} {rule[0]!r} is not a valid regex: {e}") from None
    return compiled


def match_rules(tree: Any, rules: Sequence[Rule], *, allow_uncovered: bool = False,
                allow_unused: bool = False) -> list[int | None]:
    """Index of the first rule that full-matches each leaf path, in ``jax.tree.leaves`` order.

    Raises :class:`RuleError` naming up to 10 uncovered paths, or the rules that match nothing.
    With ``allow_uncovered=True`` an uncovered leaf gets ``None``.

    Example::

        >>> match_rules({"a": 1, "b": 2}, [("a", freeze()), (".*", settings())])
        [0, 1]
    """
    compiled = _check_rules(rules)
    paths = leaf_paths(tree)
    found: list[int | None] = []
    for path in paths:
        found.append(next((i for i, (rx, s) in enumerate(compiled) if _rule_matches(rx, s, path)), None))
    uncovered = [p for p, i in zip(paths, found) if i is None]
    if uncovered and not allow_uncovered:
        shown = "\n  ".join(uncovered[:_MAX_NAMED])
        more = f"\n  ... and {len(uncovered) - _MAX_NAMED} more" if len(uncovered) > _MAX_NAMED else ""
        raise RuleError(f"{len(uncovered)} parameter(s) match no rule:\n  {shown}{more}",
                        hint="Hint: end the table with a catch-all rule (r'.*', jt.settings()).",
                        config_hint="Hint: end optim.rules with a catch-all rule {pattern: '.*'}.")
    used = set(found)
    unused = [rules[i][0] for i in range(len(rules)) if i not in used]
    if unused and not allow_unused:
        # A rule shadowed by earlier ones matches paths but never wins: name that case separately.
        shadowed = [r for r in unused if any(re.fullmatch(r, p) for p in paths)]
        hint = (f" ({len(shadowed)} of them only match paths an earlier rule already took: {shadowed})"
                if shadowed else "")
        raise RuleError(f"rule(s) {unused} match no parameter{hint}.",
                        hint=f"Check the spelling against jt.leaf_paths(params), e.g. {paths[:3]}; pass "
                             "allow_unused=True to keep them.",
                        config_hint=f"Fix or remove their pattern in optim.rules; parameter paths look like "
                                    f"{paths[:3]} (`jaxtune rules CONFIG` prints the groups).")
    return found


def group_name(rule: Rule) -> str:
    """The group label of a rule: its ``name`` if given, else its regex."""
    return rule[1].name if rule[1].name is not None else rule[0]


def leaf_settings(rule: Rule, path: str) -> Settings:
    """The settings a rule gives the leaf at ``path``: its own, except for a :func:`lora` rule,
    which freezes its kernels (group ``"<name> (base)"``) and trains their factors with its
    settings (group ``<name>``).

    Example::

        >>> leaf_settings(("q/kernel", lora(name="qv")), "q/kernel").frozen
        True
    """
    s = rule[1]
    if s.lora is None:
        return s
    if lora_base_path(path) is None:
        return Settings(frozen=True, name=f"{group_name(rule)} (base)")
    return dataclasses.replace(s, lora=None, name=group_name(rule))


def _leaf_group(rules: Sequence[Rule], i: int | None, path: str) -> str:
    return "(uncovered)" if i is None else group_name((rules[i][0], leaf_settings(rules[i], path)))


def _resolve(tree: Any, rules: Sequence[Rule], **match_kwargs) -> tuple[list[str], list[Settings | None], Any]:
    found = match_rules(tree, rules, **match_kwargs)
    paths = leaf_paths(tree)
    settings_list = [None if i is None else leaf_settings(rules[i], p) for i, p in zip(found, paths)]
    return paths, settings_list, tree_structure(tree)


def label_params(tree: Any, rules: Sequence[Rule], **match_kwargs) -> Any:
    """Pytree of group labels (each rule's ``name``, else its regex), same structure as ``tree``.

    Usable directly as ``param_labels`` of ``optax.partition``.

    Example::

        >>> label_params({"emb": 0., "head": 0.}, [("emb", freeze("backbone")), (".*", settings())])
        {'emb': 'backbone', 'head': '.*'}
    """
    found = match_rules(tree, rules, **match_kwargs)
    labels = [None if i is None else _leaf_group(rules, i, p) for i, p in zip(found, leaf_paths(tree))]
    return jax.tree_util.tree_unflatten(tree_structure(tree), labels)


def trainable_mask(tree: Any, rules: Sequence[Rule], **match_kwargs) -> Any:
    """Bool pytree: True where the matching rule is not frozen. Works with ``optax.masked``, on
    params that are dicts, ``FrozenDict`` objects or an ``nnx.State`` (the mask then fits both the
    state and its ``nnx.as_pure`` arrays, as ``nnx.Optimizer`` passes them: :func:`tree_structure`).

    Example::

        >>> trainable_mask({"emb": 0., "head": 0.}, [("emb", freeze()), (".*", settings())])
        {'emb': False, 'head': True}
    """
    _, found, treedef = _resolve(tree, rules, **match_kwargs)
    return jax.tree_util.tree_unflatten(treedef, [s is not None and not s.frozen for s in found])


def weight_decay_mask(tree: Any, rules: Sequence[Rule], **match_kwargs) -> Any:
    """Bool pytree: True where weight decay applies (trainable and not switched off by the rule).

    Fits ``optax.adamw(..., mask=weight_decay_mask(params, rules))`` in code of your own.

    Example::

        >>> weight_decay_mask({"b": 0., "w": 0.}, [("b", settings(weight_decay=False)), (".*", settings())])
        {'b': False, 'w': True}
    """
    _, found, treedef = _resolve(tree, rules, **match_kwargs)
    return jax.tree_util.tree_unflatten(
        treedef, [s is not None and not s.frozen and s.weight_decay not in (False, 0, 0.0) for s in found])


def _layer_id(layer_ids: Callable[[str], Any], path: str) -> np.ndarray:
    path = lora_base_path(path) or path  # a LoRA factor is in its kernel's layer
    try:
        return np.asarray(layer_ids(path), dtype=np.int64)
    except Exception as e:
        raise RuleError(f"layer_ids({path!r}) failed: {type(e).__name__}: {e}. A layer_ids function maps every "
                        "parameter path to a layer index (embeddings 0, block i -> i+1, head L+1)") from e


def layer_factors(tree: Any, rules: Sequence[Rule], layer_ids: Callable[[str], Any] | None = None,
                  layer_decay: float | None = None, **match_kwargs) -> list[np.ndarray]:
    """Per-leaf learning-rate multipliers (``lr_mult * decay ** (top - layer_id)``), leaves order.

    ``top`` is the largest layer id of the tree (the head, L+1), so the head keeps the full rate.
    ``layer_ids(path)`` returns an int, or a sequence of ints for a stacked (scanned) leaf whose
    leading axis is the layer; its factor then has shape ``(n_layers, 1, ..., 1)``.
    Frozen leaves get the factor they would have once unfrozen (the optimizer zeroes them).
    """
    if layer_decay is not None:
        check_number("layer_decay", layer_decay, low=0.0, high=1.0, low_open=True, error=RuleError)
    paths, found, _ = _resolve(tree, rules, **match_kwargs)
    leaves = jax.tree_util.tree_leaves(tree)
    needs_ids = layer_decay is not None or any(s is not None and s.layer_decay is not None for s in found)
    if needs_ids and layer_ids is None:
        raise RuleError("layer_decay is set but no layer_ids function was given; pass "
                        "layer_ids=model.layer_ids (path -> layer index: embeddings 0, block i -> i+1, head L+1)")
    ids = [_layer_id(layer_ids, p) for p in paths] if layer_ids is not None else [np.asarray(0)] * len(paths)
    top = max(int(i.max()) for i in ids) if ids else 0
    factors = []
    for path, leaf, s, lid in zip(paths, leaves, found, ids):
        if s is None:
            factors.append(np.asarray(0.0, np.float32))
            continue
        decay = s.layer_decay if s.layer_decay is not None else (1.0 if layer_decay is None else layer_decay)
        f = (s.lr_mult * decay ** (top - lid.astype(np.float64))).astype(np.float32)
        if f.ndim:
            shape = np.shape(leaf)
            if f.ndim != 1 or not shape or shape[0] != f.shape[0]:
                raise RuleError(f"layer_ids({path!r}) gave {f.shape[0] if f.ndim == 1 else f.shape} ids but "
                                f"the leaf has shape {shape}; a stacked leaf needs one id per entry of its "
                                "leading (layer) axis")
            f = f.reshape((-1,) + (1,) * (len(shape) - 1))
        factors.append(f)
    return factors


def _leaf_freezes_stats(s: Settings | None, trains: bool) -> bool:
    if s is None:
        return False
    if s.batch_stats is not None:
        return s.batch_stats == "frozen"
    return not trains


def _batch_norm_modes(variables: Any, rules: Sequence[Rule], trainable: Any = None,
                      **match_kwargs) -> dict[str, tuple[bool, set[int]]]:
    """``{batch-norm module path: (statistics frozen, indices of the rules matching its params)}``."""
    if "batch_stats" not in variables:
        return {}
    params = variables["params"]
    paths, found = leaf_paths(params), match_rules(params, rules, **match_kwargs)
    if trainable is None:
        trains = [i is not None and not rules[i][1].frozen for i in found]
    else:
        flags = jax.tree_util.tree_leaves(trainable)
        if len(flags) != len(paths):
            raise RuleError(f"trainable mask has {len(flags)} leaves but the parameters have {len(paths)}; build "
                            "it from the same params (jt.trainable_mask / jt.unfreezing_stages)")
        trains = [bool(np.any(f)) for f in flags]
    votes: dict[str, list[tuple[int | None, bool]]] = {}
    for path, i, t in zip(paths, found, trains):
        votes.setdefault(path.rpartition("/")[0], []).append((i, t))
    layers = list(dict.fromkeys(p.rpartition("/")[0] for p in leaf_paths(variables["batch_stats"])))
    if layers and not any(layer in votes for layer in layers):
        raise RuleError(f"no batch-norm layer of batch_stats (e.g. {layers[0]!r}) has parameters at the same path in "
                        f"params (e.g. {paths[:2]}); pass the whole variables dict of one model "
                        "({'params': ..., 'batch_stats': ...})")
    modes = {}
    for layer in layers:
        layer_votes = votes.get(layer, [])
        frozen = bool(layer_votes) and all(_leaf_freezes_stats(None if i is None else rules[i][1], t)
                                           for i, t in layer_votes)
        modes[layer] = (frozen, {i for i, _ in layer_votes if i is not None})
    return modes


def frozen_batch_norm(variables: Any, rules: Sequence[Rule], *, trainable: Any = None,
                      **match_kwargs) -> frozenset[str]:
    """Module paths of the batch-norm layers whose statistics stay frozen in training.

    A batch-norm layer is the parent path of leaves of ``variables["batch_stats"]`` (``.../bn/mean``,
    ``.../bn/var``); its parameters (``.../bn/scale``, ``.../bn/bias``) are matched against
    ``rules``. Its statistics are frozen when every one of its parameters says so: a rule with
    ``batch_stats="frozen"``, or a frozen group without ``batch_stats`` (``batch_stats="train"``
    keeps batch statistics). ``trainable`` (a bool tree over the params, e.g. a stage of
    :func:`jaxtune.unfreezing_stages`) replaces the rules' ``frozen`` for that decision. Variables
    without ``batch_stats`` give the empty set.

    The CNNs (ResNet, MobileNetV2, EfficientNet-Lite, VGG-BN) take the set as ``frozen_bn``: those
    layers normalise with the running statistics even with ``train=True`` and never update them,
    which is what :func:`jaxtune.finetune` does. In code of your own::

        model, variables = jt.from_pretrained(path, task="image_classification", num_labels=10)
        rules = [(r"classifier/.*", jt.settings()), (r".*", jt.freeze())]
        model = model.clone(frozen_bn=jt.frozen_batch_norm(variables, rules))
        loss_fn = jaxtune.tasks.get_task("image_classification").loss_fn(model)   # for jt.make_train_step
    """
    return frozenset(layer for layer, (frozen, _) in _batch_norm_modes(variables, rules, trainable,
                                                                        **match_kwargs).items() if frozen)


def l2_sp_strength(s: Settings, default: float = 0.0) -> float:
    """The L2-SP strength of a group while it trains: its rule's ``l2_sp``, else ``default``."""
    return float(default if s.l2_sp is None else s.l2_sp)


def _batch_norm_cells(tree: Any, batch_stats: Any, rules: Sequence[Rule], **match_kwargs) -> tuple[dict, str]:
    """Per group, how many of its batch-norm layers keep frozen / train statistics; and a total line."""
    modes = _batch_norm_modes({"params": tree, "batch_stats": batch_stats}, rules, **match_kwargs)
    if not modes:
        return {}, ""
    counts: dict[str, list[int]] = {}
    for frozen, indices in modes.values():
        for key in {group_name(rules[i]) for i in indices}:
            counts.setdefault(key, [0, 0])[0 if frozen else 1] += 1
    cells = {key: ", ".join(f"{n} {word}" for n, word in zip(c, ("frozen", "train")) if n) for key, c in counts.items()}
    n_frozen = sum(frozen for frozen, _ in modes.values())
    total = (f"batch norm: {len(modes)} layers, {n_frozen} frozen (running statistics, no update), "
             f"{len(modes) - n_frozen} train (batch statistics)")
    return cells, total


def _lora_cell(rule: Rule, path: str) -> str:
    """The "lora" column of :func:`summary`: rank and alpha of a LoRA group's factors."""
    spec = rule[1].lora
    if spec is None:
        return "-"
    return f"r={spec.rank} alpha={spec.alpha:g}" + (" (base)" if lora_base_path(path) is None else "")


def summary(tree: Any, rules: Sequence[Rule], layer_ids: Callable[[str], Any] | None = None,
            layer_decay: float | None = None, *, l2_sp: float = 0.0, batch_stats: Any = None,
            **match_kwargs) -> str:
    """A text table of the strategy: group, #tensors, #params, lr multiplier(s), weight decay, frozen
    (and the L2-SP strength, when a group has one; ``l2_sp`` is the optimizer's default). Groups
    come in the order of their rules (first match wins, so the table reads like the rule table).

    With ``layer_ids``/``layer_decay`` the lr column shows the range of layer-wise multipliers.
    With ``batch_stats`` (the model's ``variables["batch_stats"]``) a "batch norm" column counts the
    group's batch-norm layers with frozen / training statistics (:func:`frozen_batch_norm`), and a
    last line totals them. With :func:`lora` rules a "lora" column shows rank and alpha: the
    factors (in a :class:`jaxtune.LoraParams` tree) are the group's trainable parameters, the
    kernels a frozen ``"<name> (base)"`` group.

    Example::

        print(jt.summary(params, rules, layer_ids=model.layer_ids, layer_decay=0.9))
        print(jt.summary(variables["params"], rules, batch_stats=variables["batch_stats"]))
    """
    found = match_rules(tree, rules, **match_kwargs)
    factors = layer_factors(tree, rules, layer_ids, layer_decay, **match_kwargs)
    leaves = jax.tree_util.tree_leaves(tree)
    rows: dict[str, dict] = {}
    # Groups in rule order (a name shared by several rules at its first rule), uncovered leaves last.
    rows_in_rule_order = sorted(zip(found, leaf_paths(tree), leaves, factors),
                                key=lambda t: len(rules) if t[0] is None else t[0])
    for i, path, leaf, factor in rows_in_rule_order:
        row = rows.setdefault(_leaf_group(rules, i, path), {
            "tensors": 0, "params": 0, "mults": [], "settings": None if i is None else leaf_settings(rules[i], path),
            "lora": _lora_cell(rules[i], path) if i is not None else "-"})
        row["tensors"] += 1
        row["params"] += int(np.prod(np.shape(leaf)))
        row["mults"].append(np.asarray(factor).ravel())
    header = ("group", "tensors", "params", "lr mult", "weight decay", "frozen")
    strengths = {key: 0.0 if r["settings"] is None or r["settings"].frozen else l2_sp_strength(r["settings"], l2_sp)
                 for key, r in rows.items()}
    with_l2_sp = any(strengths.values())
    if with_l2_sp:
        header += ("l2-sp",)
    bn_cells, bn_total = _batch_norm_cells(tree, batch_stats, rules, **match_kwargs) if batch_stats is not None else ({}, "")
    if bn_total:
        header += ("batch norm",)
    with_lora = any(r["lora"] != "-" for r in rows.values())
    if with_lora:
        header += ("lora",)
    lines = []
    for key, row in rows.items():
        s: Settings | None = row["settings"]
        mults = np.concatenate(row["mults"])
        lo, hi = float(mults.min()), float(mults.max())
        lr = f"{lo:.3g}" if np.isclose(lo, hi) else f"{lo:.3g}..{hi:.3g}"
        wd = "-" if s is None else ("default" if s.weight_decay is None or s.weight_decay is True
                                    else ("off" if s.weight_decay in (False, 0, 0.0) else f"{float(s.weight_decay):g}"))
        frozen = "-" if s is None else ("yes" if s.frozen else "no")
        if s is not None and s.frozen:
            lr, wd = "-", "-"
        line = (key, str(row["tensors"]), f"{row['params']:,}", lr, wd, frozen)
        if with_l2_sp:
            line += (f"{strengths[key]:g}" if strengths[key] else "-",)
        if bn_total:
            line += (bn_cells.get(key, "-"),)
        if with_lora:
            line += (row["lora"],)
        lines.append(line)
    total = sum(r["params"] for r in rows.values())
    trainable = sum(r["params"] for r in rows.values() if r["settings"] is not None and not r["settings"].frozen)
    widths = [max(len(h), *(len(l[c]) for l in lines)) for c, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt(header), fmt(["-" * w for w in widths]), *(fmt(l) for l in lines),
           f"trainable {trainable:,} of {total:,} parameters ({100.0 * trainable / max(total, 1):.1f}%)"]
    return "\n".join(out + [bn_total] if bn_total else out)
