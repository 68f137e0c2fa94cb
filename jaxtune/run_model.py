"""The model side of a run: a checkpoint or shipped alias loaded (pretrained or freshly initialised),
its rule table (the config's ``optim.rules`` or the family's defaults), LoRA adapters added where a
rule asks for them, and batch-norm layers of frozen groups kept frozen. :func:`jaxtune.finetune`
builds every run through these; each is usable alone.

Example::

    model, variables = load_model("minilm", "sequence_classification", 3, "float32")
    rules = build_rules(jt.load_config("experiments/configs/tweets_minilm.yaml").optim, model)
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import jax
import jax.numpy as jnp

from jaxtune.config import OptimConfig
from jaxtune.errors import UserError
from jaxtune.lora import LoraParams, init_lora
from jaxtune.lora_spec import check_lora
from jaxtune.models.family import UnknownConfigField
from jaxtune.rules import Rule, Settings
from jaxtune.run_data import _model_dir
from jaxtune.seeds import seed_stream


# Shipped CNN aliases: (module, pretrained loader, architecture builder, config class).
_CNN_ALIASES = {
    "mobilenet_v2_imagenet": ("jaxtune.models.mobilenet", "mobilenet_v2_imagenet", "mobilenet_v2", "MobileNetV2Config"),
    "efficientnet_lite0_imagenet": ("jaxtune.models.efficientnet", "efficientnet_lite0_imagenet", "efficientnet_lite",
                                    "EfficientNetLiteConfig"),
}


def load_model(path: str, task: str, num_labels: int, dtype: str, *, init: str = "pretrained",
               rng: jax.Array | None = None, scan_layers: bool = False, remat: str = "none"):
    """``from_pretrained`` for a checkpoint directory / hub name, or one of the shipped aliases:
    ``minilm`` (all-MiniLM-L6-v2), ``mobilenet_v2_imagenet``, ``efficientnet_lite0_imagenet``.

    ``init="random"`` builds the same architecture with every weight freshly initialised from
    ``rng`` (a from-scratch baseline); with ``"pretrained"``, ``rng`` initialises a new head only.
    ``scan_layers`` / ``remat`` (``model.scan_layers`` / ``model.remat``): the BERT / T5 config
    fields of that name; a family without them refuses values other than the defaults.

    Example::

        model, variables = load_model("mobilenet_v2_imagenet", "image_classification", 10, "float32",
                                      init="random", rng=jt.seed_stream(0, "init"))
        model, variables = load_model("minilm", "sequence_classification", 3, "float32", scan_layers=True)
    """
    from jaxtune.hub import from_pretrained, random_variables

    if init not in ("pretrained", "random"):
        raise ValueError(f"model.init must be 'pretrained' or 'random', got {init!r}")
    rng = jax.random.key(0) if rng is None else rng
    overrides = {key: value for key, value, default in (("scan_layers", scan_layers, False), ("remat", remat, "none"))
                 if value != default}
    if path in _CNN_ALIASES and overrides:
        key, value = next(iter(overrides.items()))
        raise UserError(f"model.{key}={value!r}, but {path} is a CNN, which has no transformer layers to scan or "
                        "rematerialise", hint="Hint: model.scan_layers and model.remat are for BERT and T5 "
                                               "checkpoints; leave them at false / 'none'.")
    if path in _CNN_ALIASES:
        module_name, loader, builder, config_cls = _CNN_ALIASES[path]
        module = importlib.import_module(module_name)
        if init == "pretrained":
            return getattr(module, loader)(num_labels=num_labels, dtype=jnp.dtype(dtype), rng=rng)
        from jaxtune.models._cnn import example_images

        config = dataclasses.replace(getattr(module, config_cls)(), num_labels=int(num_labels))
        model = getattr(module, builder)(config, dtype=jnp.dtype(dtype))
        return model, random_variables(model, example_images(), rng, path)[0]
    try:
        return from_pretrained(_model_dir(path), task=task, num_labels=num_labels, dtype=jnp.dtype(dtype), rng=rng,
                               init=init, **overrides)
    except UnknownConfigField as e:
        raise UserError(f"model.{' / model.'.join(overrides)}: {e.message}", hint="Hint: model.scan_layers and "
                        "model.remat are for BERT and T5 checkpoints; leave them at false / 'none' for other "
                        "families.") from None


def _family_module(model):
    module = importlib.import_module(type(model).__module__)
    if not hasattr(module, "default_rules"):
        raise UserError(f"{type(model).__module__} has no default_rules(); give optim.rules in the config")
    return module


def build_rules(optim: OptimConfig, model) -> list[Rule]:
    """The config's rule table (``optim.rules`` as ``(pattern, jt.Settings)`` pairs), or the model's
    default rules (``model.default_rules()``) when it has none.

    Example::

        cfg = jt.load_config("experiments/configs/tweets_minilm.yaml")
        rules = jt.build_rules(cfg.optim, model)
        print(jt.summary(variables["params"], rules))
    """
    if optim.rules is None:
        return list(_family_module(model).default_rules())
    return [(r.pattern, Settings(frozen=r.frozen, lr_mult=r.lr_mult, weight_decay=r.weight_decay,
                                 layer_decay=r.layer_decay, name=r.name, l2_sp=r.l2_sp, batch_stats=r.batch_stats,
                                 lora=None if r.lora is None else check_lora(r.lora)))
            for r in optim.rules]


def with_adapters(params: Any, rules: list[Rule], layer_ids: Any, seed: int) -> Any:
    """``params``, or ``jt.LoraParams(params, adapters)`` with fresh factors (seed stream ``"lora"``)
    when a rule of ``rules`` is a :func:`jaxtune.lora` rule: the tree the runner trains."""
    if all(s.lora is None for _, s in rules):
        return params
    return LoraParams(params, init_lora(params, rules, seed_stream(seed, "lora"), layer_ids=layer_ids))


def with_frozen_bn(model, frozen: frozenset[str]):
    """``model`` whose batch-norm layers in ``frozen`` (:func:`jaxtune.frozen_batch_norm`) keep their
    running statistics in training; ``model`` itself when the set is empty."""
    if not frozen:
        return model
    if not hasattr(model, "frozen_bn"):
        raise UserError(f"{type(model).__name__} has batch_stats but no frozen_bn attribute, so the {len(frozen)} "
                        f"batch-norm layer(s) of frozen groups (e.g. {sorted(frozen)[0]!r}) cannot keep their "
                        "statistics; give those rules batch_stats: train to train them as before")
    return model.clone(frozen_bn=frozen)
