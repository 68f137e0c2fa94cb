"""The optimizer a run's ``optim`` section builds: the optax constructor it names, its learning-rate
schedule over the run's steps, the rule table compiled by :func:`jaxtune.make_optimizer`, and the
weight averaging (EMA / uniform) chained after it. The runner (:func:`jaxtune.experiment.build`) and
the vmapped members (:mod:`jaxtune.member_runs`) both build theirs here::

    tx = run_optimizer(cfg.optim, params, rules, total_steps=1000, layer_ids=model.layer_ids)
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import optax

from jaxtune.config import OptimConfig
from jaxtune.errors import UserError
from jaxtune.forgetting import average_weights
from jaxtune.optim import make_optimizer, warmup_cosine, warmup_linear
from jaxtune.rules import Rule, trainable_mask


def uses_layer_decay(optim: OptimConfig, rules: Sequence[Rule]) -> bool:
    """Whether the optimizer or a rule sets a layer-wise decay (so that layer ids are needed)."""
    return optim.layer_decay is not None or any(s.layer_decay is not None for _, s in rules)


def optax_constructor(name: str) -> Callable[..., optax.GradientTransformation]:
    """The optax optimizer ``optim.optimizer`` names.

    Example::

        >>> optax_constructor("adamw") is optax.adamw
        True
    """
    if not hasattr(optax, name):
        raise UserError(f"optim.optimizer {name!r} is not an optax optimizer (e.g. adamw, adam, sgd, lion)")
    return getattr(optax, name)


def learning_rate_schedule(optim: OptimConfig, total_steps: int) -> float | optax.Schedule:
    """``optim.learning_rate`` under ``optim.schedule`` over ``total_steps``, warming up for
    ``optim.warmup_fraction`` of them (a constant schedule is the float itself).

    Example::

        >>> from jaxtune.config import OptimConfig
        >>> round(float(learning_rate_schedule(OptimConfig(learning_rate=1e-3, warmup_fraction=0.5), 10)(5)), 6)
        0.001
    """
    warmup = int(round(optim.warmup_fraction * total_steps))
    if optim.schedule == "constant":
        return optim.learning_rate
    if optim.schedule == "warmup_linear":
        return warmup_linear(optim.learning_rate, warmup, total_steps)
    if optim.schedule == "warmup_cosine":
        return warmup_cosine(optim.learning_rate, warmup, total_steps)
    raise ValueError(f"unknown schedule {optim.schedule!r}; use constant, warmup_linear or warmup_cosine")


def run_optimizer(optim: OptimConfig, params: Any, rules: Sequence[Rule], total_steps: int, *,
                  layer_ids: Any = None, runtime: bool = False, layer_decay: float | None = None,
                  l2_sp: float = 0.0) -> optax.GradientTransformation:
    """The run's optimizer: ``rules`` compiled over ``params`` (:func:`jaxtune.make_optimizer` with
    ``optim``'s constructor, schedule, weight decay and L2-SP coupling), then, with
    ``optim.weight_average``, averaging of every leaf the rules let train at some stage (rule-frozen
    leaves never move). ``layer_decay`` and ``l2_sp`` are passed apart: vmapped members keep theirs in
    the optimizer state instead.

    Example::

        tx = run_optimizer(cfg.optim, params, rules, setup.total_steps, layer_decay=cfg.optim.layer_decay)
    """
    tx = make_optimizer(params, rules, optax_constructor(optim.optimizer), learning_rate_schedule(optim, total_steps),
                        layer_ids=layer_ids, layer_decay=layer_decay, runtime=runtime,
                        weight_decay=optim.weight_decay, l2_sp=l2_sp, l2_sp_decoupled=optim.l2_sp_decoupled)
    averaging = weight_averaging(optim, total_steps, trainable_mask(params, rules))
    return tx if averaging is None else optax.chain(tx, averaging)


def weight_averaging(optim: OptimConfig, total_steps: int, mask: Any) -> optax.GradientTransformation | None:
    """The ``optim.weight_average`` transform (EMA with ``weight_average_decay``, or uniform) over the
    leaves ``mask`` flags, from ``weight_average_start`` of ``total_steps``; None without averaging.

    Example::

        averaging = weight_averaging(cfg.optim, 1000, jt.trainable_mask(params, rules))
    """
    if optim.weight_average is None:
        return None
    decay = optim.weight_average_decay if optim.weight_average == "ema" else None
    return average_weights(decay, start_step=int(optim.weight_average_start * total_steps), mask=mask)
