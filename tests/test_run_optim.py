"""The optimizer a run's optim section builds (jaxtune.run_optim), shared by the runner and the members."""
from __future__ import annotations

import doctest

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
import jaxtune.run_optim
from jaxtune.config import OptimConfig
from jaxtune.errors import UserError
from jaxtune.run_optim import learning_rate_schedule, optax_constructor, run_optimizer, uses_layer_decay

PARAMS = {"head": {"kernel": jnp.ones((2,), jnp.float32)}, "body": {"kernel": jnp.ones((2,), jnp.float32)}}
RULES = [(r"body/.*", jt.freeze("body")), (r".*", jt.settings(name="rest"))]


def test_docstring_examples():
    assert doctest.testmod(jaxtune.run_optim).attempted >= 3 and doctest.testmod(jaxtune.run_optim).failed == 0


def test_ema_averages_only_the_leaves_the_rules_train():
    # float32, sgd at lr 1, constant schedule: two steps move head 1 -> 0 -> -1; the EMA (decay 0.5)
    # starts at the first step's weights (0) and keeps 0.5 * 0 + 0.5 * -1 after the second.
    optim = OptimConfig(optimizer="sgd", learning_rate=1.0, schedule="constant", weight_decay=0.0,
                        weight_average="ema", weight_average_decay=0.5)
    tx = run_optimizer(optim, PARAMS, RULES, total_steps=4)
    params, state = PARAMS, tx.init(PARAMS)
    for _ in range(2):
        updates, state = tx.update({"head": {"kernel": jnp.ones(2)}, "body": {"kernel": jnp.ones(2)}}, state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params["head"]["kernel"], -1.0, atol=1e-7)
    np.testing.assert_allclose(params["body"]["kernel"], 1.0, atol=0)          # frozen: never moves
    averaged = jt.averaged_params(params, state)
    np.testing.assert_allclose(averaged["head"]["kernel"], -0.5, atol=1e-6)
    np.testing.assert_allclose(averaged["body"]["kernel"], 1.0, atol=0)


def test_without_weight_average_the_optimizer_is_the_rule_table_alone():
    optim = OptimConfig(optimizer="sgd", learning_rate=0.5, schedule="constant", weight_decay=0.0)
    tx = run_optimizer(optim, PARAMS, RULES, total_steps=4)
    state = tx.init(PARAMS)
    updates, _ = tx.update({"head": {"kernel": jnp.ones(2)}, "body": {"kernel": jnp.ones(2)}}, state, PARAMS)
    np.testing.assert_allclose(updates["head"]["kernel"], -0.5, atol=1e-7)
    np.testing.assert_allclose(updates["body"]["kernel"], 0.0, atol=0)
    with pytest.raises(ValueError, match="no averaged weights|average"):
        jt.averaged_params(PARAMS, state)


def test_schedules_warm_up_over_their_fraction_of_the_steps():
    linear = learning_rate_schedule(OptimConfig(learning_rate=1e-3, schedule="warmup_linear", warmup_fraction=0.5), 10)
    assert float(linear(0)) == 0.0 and float(linear(10)) == pytest.approx(0.0, abs=1e-9)
    assert float(linear(5)) == pytest.approx(1e-3, rel=1e-6)
    assert learning_rate_schedule(OptimConfig(learning_rate=2e-3, schedule="constant"), 10) == 2e-3
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        learning_rate_schedule(OptimConfig(schedule="step"), 10)


def test_an_unknown_optimizer_is_named_with_examples():
    with pytest.raises(UserError, match=r"optim.optimizer 'adamx' is not an optax optimizer \(e.g. adamw"):
        optax_constructor("adamx")


def test_layer_ids_are_needed_when_the_optimizer_or_a_rule_decays_by_layer():
    assert not uses_layer_decay(OptimConfig(), RULES)
    assert uses_layer_decay(OptimConfig(layer_decay=0.8), RULES)
    assert uses_layer_decay(OptimConfig(), [(r".*", jt.settings(layer_decay=0.9))])
