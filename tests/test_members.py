"""Members: N variants stacked on a leading axis, trained by one vmapped step; runtime strategy arrays."""
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from tests._tiny import TinyNet, init_params, layer_ids, make_batch

REPO = Path(__file__).resolve().parents[1]
F32 = jnp.float32
TOL = 1e-5          # fp32 on CPU: a member against its separate run, max abs difference
STEPS = 4
SCHED = jt.warmup_cosine(3e-2, 2, 10)


def dropout_loss(params, batch, *, rng, model_state):
    """The tiny net with dropout on its logits: the RNG key (the seed) changes the result."""
    logits = TinyNet().apply({"params": params}, batch["ids"]).astype(F32)
    logits = jnp.where(jax.random.bernoulli(rng, 0.8, logits.shape), logits / 0.8, 0.0)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    return loss, ({"accuracy": (logits.argmax(-1) == batch["labels"]).mean()}, model_state)


def _rules(frozen_backbone=False):
    head = [(r"head/.*", jt.settings(l2_sp=0.0))]
    if frozen_backbone:
        return head + [(r".*", jt.freeze())]
    return head + [(r".*(bias|LayerNorm/scale)", jt.settings(weight_decay=False)), (r".*", jt.settings())]


def _params(seed):
    """The same 'pretrained' backbone for every member, a head initialised from ``seed``."""
    return dict(init_params(0), head=init_params(seed)["head"])


def _batches(seed):
    return [make_batch(8, seed=1000 * seed + t) for t in range(STEPS)]


DEFAULTS = dict(seed=0, layer_decay=None, frozen_backbone=False, l2_sp=0.0, weight_decay=0.01, decoupled=False)


@functools.cache
def _separate_step(frozen_backbone, layer_decay, weight_decay, l2_sp, decoupled):
    """A static-mode optimizer built with these settings and its own jitted step (seeds share it)."""
    tx = jt.make_optimizer(_params(0), _rules(frozen_backbone), optax.adamw, SCHED, layer_ids=layer_ids,
                           layer_decay=layer_decay, weight_decay=weight_decay, l2_sp=l2_sp, l2_sp_decoupled=decoupled)
    return tx, jt.make_train_step(dropout_loss, tx, compute_dtype=F32)


def _separate_run(member):
    """A member's own run with its settings."""
    m = {**DEFAULTS, **member}
    params = _params(m["seed"])
    tx, step = _separate_step(m["frozen_backbone"], m["layer_decay"], m["weight_decay"], m["l2_sp"], m["decoupled"])
    state = jt.TrainState.create(params, tx, rng=m["seed"])
    for batch in _batches(m["seed"]):
        state, _ = step(state, batch)
    return state


def _runtime_tx(decoupled=False):
    """The one optimizer of all members: runtime mode, every backbone leaf anchored."""
    return jt.make_optimizer(_params(0), _rules(), optax.adamw, SCHED, weight_decay=0.01, l2_sp=1.0,
                             l2_sp_decoupled=decoupled, runtime=True)


def _member_state(tx, member):
    """A member's state: the shared optimizer, its settings written into the state's arrays."""
    m = {**DEFAULTS, **member}
    params = _params(m["seed"])
    full = _rules()
    opt_state = tx.init(params)
    opt_state = jt.set_lr_multipliers(opt_state, jt.lr_multipliers(params, full, layer_ids, m["layer_decay"]))
    opt_state = jt.set_trainable(opt_state, jt.trainable_mask(params, _rules(m["frozen_backbone"])))
    decayed = jt.weight_decay_mask(params, full)
    opt_state = jt.set_weight_decay(opt_state, jax.tree.map(lambda d: m["weight_decay"] if d else 0.0, decayed))
    strengths = {k: jax.tree.map(lambda _: 0.0 if k == "head" else m["l2_sp"], v) for k, v in params.items()}
    opt_state = jt.set_l2_sp(opt_state, strengths)
    return jt.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, model_state={},
                         rng=jax.random.key(m["seed"]))


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


CASES = {
    "3 seeds (head init, dropout, data order)": [dict(seed=0), dict(seed=1), dict(seed=2)],
    "2 layer decays": [dict(layer_decay=0.9), dict(layer_decay=0.5)],
    "frozen vs unfrozen backbone": [dict(frozen_backbone=True), dict(frozen_backbone=False)],
    "2 L2-SP strengths": [dict(l2_sp=0.1), dict(l2_sp=3.0)],
    "2 decoupled L2-SP strengths": [dict(l2_sp=0.1, decoupled=True), dict(l2_sp=3.0, decoupled=True)],
    "2 weight decays, seeds and layer decays too": [dict(weight_decay=0.0, seed=3, layer_decay=0.8),
                                                    dict(weight_decay=0.3, seed=4, l2_sp=0.3)],
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_member_equals_its_separate_run(case):
    members = CASES[case]
    decoupled = any(m.get("decoupled") for m in members)
    tx = _runtime_tx(decoupled)
    state = jt.stack_members([_member_state(tx, m) for m in members])
    step = jt.make_train_step(dropout_loss, tx, members=len(members), per_member_batch=True, compute_dtype=F32)
    member_batches = [_batches(m.get("seed", 0)) for m in members]
    for t in range(STEPS):
        batch = jax.tree.map(lambda *xs: np.stack(xs), *[b[t] for b in member_batches])
        state, metrics = step(state, batch)
    assert step._cache_size() == 1                               # one compile for all members
    assert metrics["loss"].shape == (len(members),)
    assert int(state.step[0]) == STEPS
    for i, m in enumerate(members):
        alone = _separate_run(m)
        mine = jt.unstack_members(state, i)
        assert _max_diff(mine.params, alone.params) <= TOL, (case, i)
        assert _max_diff(mine.params, _params(m.get("seed", 0))) > 1e-3      # it did train
        if m.get("frozen_backbone"):
            for k in mine.params:
                if k != "head":
                    assert _max_diff(mine.params[k], _params(0)[k]) == 0.0, k


def test_a_member_unfrozen_mid_run_equals_its_staged_separate_run():
    """Stage-fresh statistics in runtime mode: member 0 trains only its head for K steps (its backbone,
    weight decay 0.3 and L2-SP 0.5 included, must not move), then everything, as a fresh AdamW would
    from step K: it equals a static-mode StagedTrainStep run. Member 1 trains everything throughout."""
    k = 2
    members = [dict(seed=1, weight_decay=0.3, l2_sp=0.5), dict(seed=2, weight_decay=0.0)]
    tx = _runtime_tx()
    state = jt.stack_members([_member_state(tx, m) for m in members])
    step = jt.make_train_step(dropout_loss, tx, members=2, per_member_batch=True, compute_dtype=F32)
    head_only, everything = jt.trainable_mask(_params(0), _rules(True)), jt.trainable_mask(_params(0), _rules())
    member_batches = [_batches(m["seed"]) for m in members]
    for t in range(STEPS):
        if t == k:
            backbone = {n: v for n, v in jt.unstack_members(state, 0).params.items() if n != "head"}
            assert _max_diff(backbone, {n: _params(0)[n] for n in backbone}) == 0.0
        mask = jax.tree.map(lambda h, e: np.array([h if t < k else e, e]), head_only, everything)
        state = state.replace(opt_state=jt.set_trainable(state.opt_state, mask))
        state, _ = step(state, jax.tree.map(lambda *xs: np.stack(xs), *[b[t] for b in member_batches]))
    assert step._cache_size() == 1
    static_tx, _ = _separate_step(False, None, 0.3, 0.5, False)
    staged = jt.StagedTrainStep(dropout_loss, static_tx, compute_dtype=F32)
    alone = jt.TrainState.create(_params(1), static_tx, rng=1)
    for t, batch in enumerate(member_batches[0]):
        alone, _ = staged(alone, batch, head_only if t < k else everything)
    assert _max_diff(jt.unstack_members(state, 0).params, alone.params) <= TOL
    assert _max_diff(jt.unstack_members(state, 1).params, _separate_run(members[1]).params) <= TOL


def test_runtime_weight_decay_is_adamw_decoupled_decay_with_the_schedule():
    params = init_params()
    grads = [jax.tree.map(lambda x, i=i: jnp.sin(x * (i + 1.0)), params) for i in range(8)]
    for optimizer, reference in ((optax.adamw, optax.adamw(SCHED, weight_decay=0.1)),
                                 (optax.sgd, optax.chain(optax.add_decayed_weights(0.1), optax.sgd(SCHED)))):
        tx = jt.make_optimizer(params, [(r".*", jt.settings())], optimizer, SCHED, weight_decay=0.1, runtime=True)
        def run(opt, p):
            s = opt.init(p)
            for g in grads:
                u, s = opt.update(g, s, p)
                p = optax.apply_updates(p, u)
            return p

        a, b = jax.jit(lambda p: run(tx, p))(params), jax.jit(lambda p: run(reference, p))(params)
        assert _max_diff(a, b) <= 1e-6, optimizer
        assert _max_diff(a, params) > 1e-3


def test_setters_change_values_without_recompiling_and_reject_what_the_state_cannot_hold():
    params = init_params()
    tx = jt.make_optimizer(params, [(r"head/.*", jt.settings(l2_sp=0.0)), (r".*", jt.settings())], optax.adamw,
                           1e-2, weight_decay=0.01, l2_sp=0.5, runtime=True)
    state = jt.TrainState.create(params, tx)
    step = jt.make_train_step(dropout_loss, tx, compute_dtype=F32)
    state, _ = step(state, make_batch())
    state = state.replace(opt_state=jt.set_weight_decay(state.opt_state, jax.tree.map(lambda _: 0.2, params)))
    state = state.replace(opt_state=jt.set_l2_sp(state.opt_state, {k: jax.tree.map(lambda _: 0.0 if k == "head" else 2.0, v)
                                                                   for k, v in params.items()}))
    state, _ = step(state, make_batch())
    assert step._cache_size() == 1
    with pytest.raises(ValueError, match="head/bias has no anchor"):
        jt.set_l2_sp(state.opt_state, jax.tree.map(lambda _: 1.0, params))
    with pytest.raises(ValueError, match="leaves but the parameters have"):
        jt.set_weight_decay(state.opt_state, {"head": 0.1})
    static = jt.make_optimizer(params, [(r".*", jt.settings())], optax.adamw, 1e-2)
    with pytest.raises(ValueError, match="runtime=True"):
        jt.set_weight_decay(static.init(params), jax.tree.map(lambda _: 0.1, params))
    with pytest.raises(ValueError, match="no runtime L2-SP"):
        jt.set_l2_sp(static.init(params), jax.tree.map(lambda _: 0.1, params))


def test_shared_frozen_backbone_is_stored_once_and_equals_separate_structural_runs():
    rules = _rules(frozen_backbone=True)
    mask = jt.trainable_mask(_params(0), rules)
    share = jax.tree.map(lambda t: not t, mask)
    tx = jt.make_optimizer(_params(0), rules, optax.adamw, SCHED, weight_decay=0.01)
    seeds = (1, 2, 3)
    states = [jt.TrainState.create(_params(s), tx, rng=s) for s in seeds]
    state = jt.stack_members(states, share=share)
    assert state.params["layer_0"]["dense"]["kernel"].shape[0] == 1          # stored once
    assert state.params["head"]["kernel"].shape[0] == len(seeds)             # per member
    step = jt.make_member_step(dropout_loss, tx, members=len(seeds), trainable=mask, compute_dtype=F32)
    single = jt.make_train_step(dropout_loss, tx, trainable=mask, compute_dtype=F32)
    batches = _batches(0)
    for batch in batches:
        state, metrics = step(state, batch)                                  # one batch for all members
    assert metrics["accuracy"].shape == (len(seeds),)
    assert state.params["layer_0"]["dense"]["kernel"].shape[0] == 1
    for i, s in enumerate(seeds):
        alone = jt.TrainState.create(_params(s), tx, rng=s)
        for batch in batches:
            alone, _ = single(alone, batch)
        assert _max_diff(jt.unstack_members(state, i).params, alone.params) <= TOL
    trains_everything = jt.make_member_step(dropout_loss, tx, members=len(seeds), compute_dtype=F32)
    with pytest.raises(ValueError, match="shared by all members are trained"):
        trains_everything(state, batches[0])


def test_member_errors_name_the_problem():
    tx = jt.make_optimizer(_params(0), _rules(), optax.adamw, 1e-2, runtime=True)
    other = jt.make_optimizer(_params(0), _rules(), optax.adamw, 1e-2, runtime=True, l2_sp=0.1)
    a, b = jt.TrainState.create(_params(0), tx), jt.TrainState.create(_params(1), other)
    with pytest.raises(ValueError, match="member 1's opt_state has another structure"):
        jt.stack_members([a, b])
    with pytest.raises(ValueError, match="parameter head/kernel is shared"):
        jt.stack_members([a, jt.TrainState.create(_params(1), tx)], share=jax.tree.map(lambda _: True, _params(0)))
    state = jt.stack_members([a, jt.TrainState.create(_params(1), tx)])
    assert jt.num_members(state) == 2
    # A setter on the stacked state takes one value per member (or one for all).
    per_member = jt.set_weight_decay(state.opt_state, jax.tree.map(lambda _: np.array([0.0, 0.1]), _params(0)))
    decay = optax.tree.get_all_with_path(per_member, "weight_decay")[0][1]
    np.testing.assert_array_equal(decay["head"]["kernel"], np.float32([0.0, 0.1]))
    with pytest.raises(IndexError, match="member 2 of a state with 2 members"):
        jt.unstack_members(state, 2)
    step = jt.make_member_step(dropout_loss, tx, members=2, per_member_batch=True, compute_dtype=F32)
    with pytest.raises(ValueError, match="batch field ids has shape"):
        step(state, make_batch(8))
    with pytest.raises(ValueError, match="built for members=3"):
        jt.make_member_step(dropout_loss, tx, members=3, compute_dtype=F32)(state, make_batch(8))
    with pytest.raises(ValueError, match="per_member_batch=True needs members=N"):
        jt.make_train_step(dropout_loss, tx, per_member_batch=True)


def test_member_benchmark_modes_produce_their_fields(tmp_path):
    """--smoke size: the harness's members-vs-sequential contestants on the tiny BERT, in a fresh
    process with the smoke suite's fast-compile XLA flag (timings mean nothing)."""
    from jaxtune import bench

    argv = [sys.executable, "-m", "jaxtune.bench", "--smoke", "--cases", "bert-tiny-s16-bs4", "--modes",
            "members,sequential", "--no-peers", "--no-plot", "--results-md", "none", "--out", str(tmp_path),
            "--warmup", "1", "--rounds", "1", "--steps-per-round", "1"]
    proc = subprocess.run(argv, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "smoke.jsonl").read_text().splitlines()][1:]
    by_mode = {r["mode"]: r for r in records}
    assert set(by_mode) == {"members", "sequential"}
    for r in records:
        assert r["members"] == 2 and r["examples_per_step"] == 2 * r["batch_size"]
        assert r["examples_per_s"] > 0 and r["compile_s"] > 0 and r["peak_memory_bytes"] > 0
        assert r["extra_compilations"] == 0 and r["compilations"] == 1 and r["recompilations"] == 0
    seq = by_mode["sequential"]
    assert seq["compile_s"] == pytest.approx(2 * seq["compile_s_per_run"])
    # The stacked optimizer state holds both members' state: twice one run's.
    assert by_mode["members"]["optimizer_state_bytes"] == 2 * seq["optimizer_state_bytes"]
    targets = {t["target"] for t in bench.check_targets(records, "cpu")}
    assert {"members x2: throughput / 2 sequential runs (x)", "members x2: compile s / 2 sequential runs' compiles",
            "members x2: peak memory / one run's (x)"} <= targets
    assert "| members |" in (tmp_path / "smoke.md").read_text()
