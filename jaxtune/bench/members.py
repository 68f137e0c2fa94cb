"""Benchmark contestants of members (:mod:`jaxtune.members`): N variants in one compiled step
against N sequential runs, for the step-throughput harness (:mod:`jaxtune.bench.harness`).

Two modes of a case with ``members=N``, both AdamW in runtime mode (the members' strategy differs
in layer decay and weight decay, which costs nothing extra):

* ``members``: the N members stacked (:func:`jaxtune.stack_members`), one ``jax.vmap``-ped step
  (:func:`jaxtune.make_member_step`), each member on its own copy of the batch; one compilation.
* ``sequential``: what N separate runs do: the single-member step, N steps per member-step
  (examples/s is directly comparable); every run compiles its own step, so ``compile_s`` is N times
  the one measured compilation (``compile_s_per_run``), and its peak memory and optimizer state are
  one run's (runs one after another).

Both records carry ``members`` (N) and ``examples_per_step`` (N x batch size); the harness adds
the targets "members throughput / sequential", "members compile / sequential compiles" and
"members peak memory / one run's".

Example::

    records = run_case(dataclasses.replace(suite_cases("smoke")[0], members=2, modes=MEMBER_MODES),
                       Options(modes=MEMBER_MODES, peers=False), peak_flops=1e11)
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxtune as jt
from jaxtune.bench.cases import LEARNING_RATE, MEMBER_MODES, WEIGHT_DECAY, Case
from jaxtune.bench.contestants import Model, run_steps
from jaxtune.bench.measure import HLO_FLOPS_SOURCE, attention_kernel, tree_bytes, xla_cost, xla_peak_bytes

MEMBER_LAYER_DECAYS = (1.0, 0.9, 0.8, 0.7)          # member i gets decay [i % 4]
MEMBER_WEIGHT_DECAYS = (0.0, 0.01, 0.03, 0.1)       # member i gets weight decay [i // 4 % 4]


def member_states(model: Model, tx: optax.GradientTransformation, n: int) -> list[jt.TrainState]:
    """N train states of one runtime-mode optimizer, each with its own layer decay, weight decay
    and dropout seed (own copies of the parameters: the states are donated).

    Example::

        states = member_states(model, tx, 4)
    """
    params = model.params
    out = []
    for i in range(n):
        own = jax.tree_util.tree_map(jnp.array, params)
        state = jt.TrainState.create(own, tx, model_state=jax.tree_util.tree_map(jnp.array, model.model_state), rng=i)
        decay = MEMBER_LAYER_DECAYS[i % len(MEMBER_LAYER_DECAYS)]
        wd = MEMBER_WEIGHT_DECAYS[(i // len(MEMBER_LAYER_DECAYS)) % len(MEMBER_WEIGHT_DECAYS)]
        opt_state = jt.set_lr_multipliers(state.opt_state, jt.lr_multipliers(
            params, model.default_rules, model.module.layer_ids, decay))
        opt_state = jt.set_weight_decay(opt_state, jax.tree_util.tree_map(
            lambda d: wd if d else 0.0, jt.weight_decay_mask(params, model.default_rules)))
        out.append(state.replace(opt_state=opt_state))
    return out


class MemberContestant:
    """The ``members`` or ``sequential`` mode of a case with ``case.members`` = N (same interface
    as :class:`jaxtune.bench.contestants.JaxContestant`: prepare, compile, stats, run, compilations, close).

    Example::

        c = MemberContestant(case, model, "members", batch, jnp.float32)
        c.prepare(); c.compile(); static = c.stats(); seconds = c.run(3)
    """

    framework = "jaxtune"

    def __init__(self, case: Case, model: Model, mode: str, batch: dict, compute_dtype: Any):
        if mode not in MEMBER_MODES:
            raise ValueError(f"unknown member mode {mode!r}; choose from {MEMBER_MODES}")
        if case.members < 2:
            raise ValueError(f"case {case.name}: mode {mode!r} needs members >= 2 in the case, got {case.members}")
        self.case, self.model, self.mode, self.variant = case, model, mode, "jit"
        self.host_batch, self.compute_dtype = batch, compute_dtype
        self.n = case.members
        self.examples_per_step = self.n * case.batch_size
        self.compiled = self.lowered = None
        self.compile_s, self.compile_concurrency, self.recompilations = None, 1, 0
        self.compiler_options: Any = "auto"   # as JaxContestant's

    def prepare(self) -> None:
        """Builds the runtime-mode optimizer, the member (or single) state and step, puts the batch on device."""
        m = self.model
        tx = jt.make_optimizer(m.params, m.default_rules, optax.adamw, LEARNING_RATE,
                               weight_decay=WEIGHT_DECAY, runtime=True)
        states = member_states(m, tx, self.n if self.mode == "members" else 1)
        if self.mode == "members":
            self.state = jt.stack_members(states)
            self.step = jt.make_member_step(m.loss_fn, tx, members=self.n, per_member_batch=True,
                                            compute_dtype=self.compute_dtype, compiler_options=self.compiler_options)
            self.batch = jax.device_put({k: np.stack([v] * self.n) for k, v in self.host_batch.items()})
        else:
            self.state = states[0]
            self.step = jt.make_train_step(m.loss_fn, tx, compute_dtype=self.compute_dtype,
                                           compiler_options=self.compiler_options)
            self.batch = jax.device_put(self.host_batch)

    def compile(self, concurrency: int = 1) -> float:
        """Compiles the step ahead of time (timed); ``sequential`` counts one compilation per run."""
        start = time.perf_counter()
        self.lowered = self.step.lower(self.state, self.batch)
        self.compiled = self.lowered.compile()
        seconds = time.perf_counter() - start
        self.compile_s_per_run = seconds
        self.compile_s = seconds if self.mode == "members" else self.n * seconds
        self.compile_concurrency = concurrency
        return self.compile_s

    def stats(self) -> dict:
        """Static stats of the compiled step; FLOPs per N-member step for both modes."""
        if self.compiled is None:
            raise RuntimeError(f"{self.case.name}/{self.mode}: stats() needs compile() first")
        compiled, lowered, self.compiled, self.lowered = self.compiled, self.lowered, None, None
        flops = xla_cost(lowered)
        repeats = 1 if self.mode == "members" else self.n
        n_params = int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(self.model.params)))
        return {"compile_s": self.compile_s, "compile_s_per_run": self.compile_s_per_run,
                "compile_concurrency": self.compile_concurrency,
                "attention_kernel": attention_kernel(compiled, self.case.family),
                "flops_per_step": flops * repeats if flops else None,
                "flops_source": HLO_FLOPS_SOURCE if flops else "n/a",
                "xla_bytes_accessed": xla_cost(compiled, "bytes accessed"),
                "peak_memory_bytes": xla_peak_bytes(compiled), "memory_source": "xla_memory_analysis",
                "optimizer_state_bytes": tree_bytes(self.state.opt_state), "param_count": n_params,
                "trainable_param_count": n_params, "members": self.n, "examples_per_step": self.examples_per_step}

    def run(self, steps: int) -> float:
        """``steps`` N-member steps (``sequential``: N single steps each), blocks, returns seconds."""
        start = time.perf_counter()
        calls = steps * (1 if self.mode == "members" else self.n)
        self.state, compilations = run_steps(self.step, self.state, self.batch, calls)
        self.recompilations += compilations
        return time.perf_counter() - start

    def compilations(self) -> int:
        """Number of compiled variants of the jitted step."""
        return jt.compile_count(self.step)

    def close(self) -> None:
        self.state = self.batch = self.step = None


def member_targets(records: list[dict], case: str, find, add) -> None:
    """Adds the members-vs-sequential targets of ``case`` through the harness's ``add``."""
    members, sequential = find(records, case, mode="members"), find(records, case, mode="sequential")
    if not (members and sequential):
        return
    n = members["members"]
    add(f"members x{n}: throughput / {n} sequential runs (x)", case,
        members["examples_per_s"] / sequential["examples_per_s"], 1.0)
    add(f"members x{n}: compile s / {n} sequential runs' compiles", case,
        members["compile_s"] / sequential["compile_s"], 0.5, False)
    if members["peak_memory_bytes"] and sequential["peak_memory_bytes"]:
        add(f"members x{n}: peak memory / one run's (x)", case,
            members["peak_memory_bytes"] / sequential["peak_memory_bytes"], float(n), False)
