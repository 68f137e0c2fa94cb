"""Stop on bad numbers (issue #13): the step's non-finite flag, the runner's batched check, the
last finite checkpoint, NaN validation metrics, and data the model cannot represent."""
import itertools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from jaxtune import cli, experiment
from jaxtune.experiment import build, finetune, prepare_data
from jaxtune.models import bert
from jaxtune.nonfinite import ALL_FINITE, FLAG, NONFINITE_GRAD_NORM, NONFINITE_LOSS
from tests._tiny import init_params, loss_fn, make_batch

F32 = jnp.float32
PATHS = jt.leaf_paths(init_params())
TARGET = "layer_1/dense/kernel"  # a leaf in the middle of the tree: index 10 of 15


def _nan_grad_at(path, poison):
    """Adds 0 * sum(sqrt(w * 0 + 1 - poison)) to the loss: the loss stays finite, but with poison = 1
    the gradient of ``path`` is 0 * inf = NaN (and only that leaf's)."""
    def poisoned(params, batch, *, rng, model_state):
        loss, aux = loss_fn(params, batch, rng=rng, model_state=model_state)
        w = params
        for key in path.split("/"):
            w = w[key]
        return loss + 0.0 * jnp.sum(jnp.sqrt(w * 0.0 + 1.0 - poison)), aux
    return poisoned


def _step_flag(loss, tx=None, trainable=None, state_fn=None):
    params = init_params()
    tx = tx or optax.sgd(0.1)
    state = jt.TrainState.create(params, tx)
    if state_fn is not None:
        state = state_fn(state)
    state, metrics = jt.make_train_step(loss, tx, trainable=trainable, compute_dtype=F32)(state, make_batch())
    return state, metrics


def test_flag_is_minus_one_when_finite_and_a_device_int():
    _, metrics = _step_flag(loss_fn)
    assert isinstance(metrics[FLAG], jax.Array) and metrics[FLAG].dtype == jnp.int32 and metrics[FLAG].shape == ()
    assert int(metrics[FLAG]) == ALL_FINITE


def test_flag_names_the_leaf_with_a_nan_gradient():
    state, metrics = _step_flag(_nan_grad_at(TARGET, 1.0))
    assert np.isfinite(float(metrics["loss"])) and not np.isfinite(float(metrics["grad_norm"]))
    assert PATHS[int(metrics[FLAG])] == TARGET
    # Control: the same loss without poison is finite everywhere.
    assert int(_step_flag(_nan_grad_at(TARGET, 0.0))[1][FLAG]) == ALL_FINITE


def test_flag_codes_for_loss_and_gradient_norm():
    def nan_loss(params, batch, *, rng, model_state):  # a NaN constant: its gradient is 0, grads stay finite
        loss, aux = loss_fn(params, batch, rng=rng, model_state=model_state)
        return loss + jnp.float32(jnp.nan), aux
    assert int(_step_flag(nan_loss)[1][FLAG]) == NONFINITE_LOSS

    def huge(params, batch, *, rng, model_state):  # gradients of 1e30 are finite, their squared norm is not
        loss, aux = loss_fn(params, batch, rng=rng, model_state=model_state)
        return loss + 1e30 * params["head"]["bias"].sum() - jax.lax.stop_gradient(1e30 * params["head"]["bias"].sum()), aux
    state, metrics = _step_flag(huge, tx=optax.sgd(1e-40))
    assert np.isinf(float(metrics["grad_norm"])) and int(metrics[FLAG]) == NONFINITE_GRAD_NORM


def test_flag_names_a_leaf_whose_update_overflows():
    # Finite gradients (the loss scaled by 1e4) times a learning rate of 1e38: updated weights overflow to inf.
    def scaled(params, batch, *, rng, model_state):
        loss, aux = loss_fn(params, batch, rng=rng, model_state=model_state)
        return 1e4 * loss, aux
    state, metrics = _step_flag(scaled, tx=optax.sgd(1e38))
    assert np.isfinite(float(metrics["grad_norm"]))
    index = int(metrics[FLAG])
    assert index >= 0 and not np.isfinite(np.asarray(jax.tree.leaves(state.params)[index])).all()
    finite_before = [np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params)[:index]]
    assert all(finite_before)  # it is the first such leaf


def test_structurally_frozen_leaf_is_not_differentiated_but_runtime_frozen_is_checked():
    poisoned = _nan_grad_at(TARGET, 1.0)
    frozen_rules = [(r"layer_1/dense/.*", jt.freeze()), (r".*", jt.settings())]
    mask = jt.trainable_mask(init_params(), frozen_rules)
    # Structural mode: no gradient is taken w.r.t. the frozen leaf, so its NaN never exists.
    assert int(_step_flag(poisoned, trainable=mask)[1][FLAG]) == ALL_FINITE
    # Runtime mode: the leaf is frozen by a 0 multiplier in the optimizer state; its NaN gradient
    # still poisons the update (NaN * 0 = NaN), so the flag must name it.
    tx = jt.make_optimizer(init_params(), [(r".*", jt.settings())], optax.sgd, 0.1, runtime=True)
    state, metrics = _step_flag(poisoned, tx=tx,
                                state_fn=lambda s: s.replace(opt_state=jt.set_trainable(s.opt_state, mask)))
    assert PATHS[int(metrics[FLAG])] == TARGET
    assert not np.isfinite(np.asarray(state.params["layer_1"]["dense"]["kernel"])).all()


class Watched:
    """A metric value that records when the host reads it (any conversion or jax.device_get)."""

    def __init__(self, value, reads, clock, step):
        self.value, self.reads, self.clock, self.step = value, reads, clock, step

    def _read(self):
        self.reads.append((self.clock[0], self.step))
        return np.asarray(self.value)

    def copy_to_host_async(self):
        pass

    def __array__(self, dtype=None, copy=None):
        return self._read() if dtype is None else self._read().astype(dtype)

    def __float__(self):
        return float(self._read())

    def __int__(self):
        return int(self._read())

    __index__ = __int__

    def __bool__(self):
        return bool(self._read())

    def item(self):
        return self._read().item()


def test_guard_raises_at_the_first_bad_step_with_one_read_per_check():
    reads, clock = [], [0]
    guard = jt.NonFiniteGuard(PATHS)
    flags = {1: -1, 2: -1, 3: 10, 4: 0}
    for step, flag in flags.items():
        clock[0] = step
        guard.record(step, {k: Watched(v, reads, clock, step) for k, v in
                            {"loss": np.float32(1.0), "grad_norm": np.float32(np.nan if flag >= 0 else 2.0),
                             FLAG: np.int32(flag)}.items()})
    assert reads == []  # recording reads nothing
    with pytest.raises(jt.NonFiniteError, match=f"'{TARGET}' at step 3") as info:
        guard.check(last_checkpoint=2)
    assert (info.value.step, info.value.path, info.value.last_checkpoint) == (3, TARGET, 2)
    assert "step 2) is the last finite one" in str(info.value)
    assert {c for c, _ in reads} == {4}  # everything was read at the one check
    # Stacked members: the flag has a leading axis; the bad member is named.
    guard.record(7, {FLAG: jnp.array([-1, NONFINITE_LOSS]), "loss": jnp.array([0.5, jnp.nan]),
                     "grad_norm": jnp.array([1.0, 1.0])})
    with pytest.raises(jt.NonFiniteError, match=r"non-finite loss at step 7 \(member 1\)") as info:
        guard.check()
    assert info.value.metric == "loss" and info.value.path is None
    assert guard.check({"loss": jnp.float32(0.25), FLAG: jnp.int32(-1)}) == {"loss": 0.25}


def test_check_finite_metrics_names_the_metric():
    jt.nonfinite.check_finite_metrics({"val_loss": 0.1, "val_accuracy": 1.0}, step=3)
    with pytest.raises(jt.NonFiniteError, match="validation metric 'val_macro_f1' is nan at step 3") as info:
        jt.nonfinite.check_finite_metrics({"val_loss": 0.1, "val_macro_f1": float("nan")}, step=3)
    assert info.value.metric == "val_macro_f1"
