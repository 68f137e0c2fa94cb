"""The jaxtune contestants of a case: the built model, one train step per mode, ahead-of-time
compilation (a thread pool for all but the first) and the timed step loop.

Example::

    model = build_model(case, jnp.float32)
    c = JaxContestant(case, model, "full", make_batch(case, model.config.vocab_size), jnp.float32)
    c.prepare(); c.compile(); seconds = c.run(5)
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxtune as jt
from jaxtune.bench.cases import LAYER_DECAY, LEARNING_RATE, MODES, UNFREEZING_STAGES, WEIGHT_DECAY, Case
from jaxtune.bench.measure import (
    HLO_FLOPS_SOURCE,
    analytic_flops,
    attention_kernel,
    tree_bytes,
    xla_compile_count,
    xla_cost,
    xla_peak_bytes,
)
from jaxtune.hub import from_pretrained
from jaxtune.tasks import get_task


@dataclasses.dataclass
class Model:
    """A built jaxtune model with its variables, loss and default rules."""

    module: Any
    config: Any
    params: Any
    model_state: dict
    loss_fn: Callable
    default_rules: list
    head_regex: str


def _head_regex(case: Case, config: Any) -> str:
    if case.family == "t5":
        # t5-small ties the output projection to the shared input embedding; then the only
        # parameters on top of the decoder are its final RMS-norm weights.
        return r"lm_head/.*" if not config.tie_word_embeddings else r"decoder/final_layer_norm/.*"
    return r"classifier/.*"


def build_model(case: Case, dtype: Any) -> Model:
    """Builds the Flax model of a case (random init, or the pretrained checkpoint) and its loss."""
    module_name = {"bert": "jaxtune.models.bert", "t5": "jaxtune.models.t5", "resnet": "jaxtune.models.resnet"}
    if case.family not in module_name:
        raise ValueError(f"case {case.name}: unknown family {case.family!r}; known: {sorted(module_name)}")
    fam = importlib.import_module(module_name[case.family])
    task_name = {"bert": "sequence_classification", "t5": "text_to_text", "resnet": "image_classification"}[case.family]
    task = get_task(task_name)
    if case.pretrained is not None:
        module, variables = from_pretrained(case.pretrained, task=task.head, num_labels=case.num_labels, dtype=dtype)
    else:
        num_labels = None if case.family == "t5" else case.num_labels
        module = fam.build(case.config, task.head, num_labels, dtype)
        example = _init_inputs(case)
        init_kwargs = {"train": False} if case.family == "resnet" else {}
        variables = jax.jit(lambda key: module.init(key, *example, **init_kwargs))(jax.random.key(0))
    variables = dict(variables)
    params = variables.pop("params")
    return Model(module, module.config, params, variables, task.loss_fn(module), fam.default_rules(),
                 _head_regex(case, module.config))


def _init_inputs(case: Case) -> tuple:
    if case.family == "bert":
        return (jnp.zeros((1, case.shape["seq"]), jnp.int32),)
    if case.family == "t5":
        return (jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32), jnp.zeros((1, 4), jnp.int32))
    return (jnp.zeros((1, case.shape["image"], case.shape["image"], 3), jnp.float32),)


def run_steps(step: Callable, state: Any, batch: Any, steps: int) -> tuple[Any, int]:
    """Runs ``step`` ``steps`` times, blocks on the final state only, and returns it with the number
    of XLA compilations the calls triggered (0 while they reuse an ahead-of-time executable)."""
    compiles_before = xla_compile_count()
    for _ in range(steps):
        state, metrics = step(state, batch)
    compilations = xla_compile_count() - compiles_before
    jax.block_until_ready((state, metrics))
    return state, compilations


class JaxContestant:
    """One jaxtune mode of a case: builds the optimizer and step, compiles, runs timed rounds.

    Setup is split so that only lowering + XLA compilation may run in a thread pool
    (:func:`compile_contestants`): :meth:`prepare` (state, step, device transfer) and :meth:`stats`
    (cost and memory analysis) run on the calling thread in a fixed order.

    Example::

        c = JaxContestant(case, model, "full", batch, jnp.float32)
        c.prepare(); c.compile(); static = c.stats()
        seconds = c.run(5)
    """

    framework = "jaxtune"

    def __init__(self, case: Case, model: Model, mode: str, batch: dict, compute_dtype: Any):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
        self.case, self.model, self.mode, self.variant = case, model, mode, "jit"
        self.host_batch, self.compute_dtype = batch, compute_dtype
        self.stage = 0
        self.stages: list = []
        self.compiled = self.lowered = self.trainable = None
        self.compile_s, self.compile_concurrency, self.recompilations = None, 1, 0
        self.compiler_options: Any = "auto"   # jt.make_train_step's; the GPU AOT check sets its target's

    def prepare(self) -> None:
        """Builds the optimizer, train state and jitted step, and puts the batch on the device."""
        m = self.model
        params = jax.tree_util.tree_map(jnp.array, m.params)    # own copy: the state is donated
        if self.mode == "full":
            tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        elif self.mode == "frozen_backbone":
            rules = [(m.head_regex, jt.settings(name="head")), (r".*", jt.freeze("backbone"))]
            tx = jt.make_optimizer(params, rules, optax.adamw, LEARNING_RATE, weight_decay=WEIGHT_DECAY)
            self.trainable = jt.trainable_mask(params, rules)
        elif self.mode == "llrd_masks":
            tx = jt.make_optimizer(params, m.default_rules, optax.adamw, LEARNING_RATE, weight_decay=WEIGHT_DECAY,
                                   layer_ids=m.module.layer_ids, layer_decay=LAYER_DECAY)
        else:
            tx = jt.make_optimizer(params, m.default_rules, optax.adamw, LEARNING_RATE, weight_decay=WEIGHT_DECAY,
                                   runtime=True)
            ids = {int(m.module.layer_ids(p)) for p in jt.leaf_paths(params)}
            self.stages = jt.unfreezing_stages(params, m.module.layer_ids,
                                               num_stages=min(UNFREEZING_STAGES, len(ids)))
        state = jt.TrainState.create(params, tx, model_state=jax.tree_util.tree_map(jnp.array, m.model_state))
        if self.stages:
            state = state.replace(opt_state=jt.set_trainable(state.opt_state, self.stages[0]))
        self.state = state
        self.step = jt.make_train_step(m.loss_fn, tx, trainable=self.trainable, compute_dtype=self.compute_dtype,
                                       compiler_options=self.compiler_options)
        self.batch = jax.device_put(self.host_batch)

    def compile(self, concurrency: int = 1) -> float:
        """Lowers and compiles the step ahead of time (timed) and returns the seconds; safe to call
        from a worker thread. ``concurrency``: how many compilations share the machine meanwhile
        (recorded as ``compile_concurrency``). Later calls of the jitted step reuse this executable
        (JAX caches the lowering and the compilation)."""
        start = time.perf_counter()
        self.lowered = self.step.lower(self.state, self.batch)
        self.compiled = self.lowered.compile()
        self.compile_s, self.compile_concurrency = time.perf_counter() - start, concurrency
        return self.compile_s

    def stats(self) -> dict:
        """Static stats of the compiled step (FLOPs, memory, sizes); call after :meth:`compile`."""
        if self.compiled is None:
            raise RuntimeError(f"{self.case.name}/{self.mode}: stats() needs compile() first")
        compiled, lowered, params, trainable = self.compiled, self.lowered, self.state.params, self.trainable
        self.compiled = self.lowered = None
        flops, source = xla_cost(lowered), HLO_FLOPS_SOURCE
        leaves = jax.tree_util.tree_leaves(params)
        n_params = int(sum(np.prod(x.shape) for x in leaves))
        if trainable is not None:
            n_trainable = int(sum(np.prod(x.shape) for x, t in zip(leaves, jax.tree_util.tree_leaves(trainable)) if t))
        else:
            n_trainable = n_params
        if flops is None:
            flops = analytic_flops(self.case, self.model.config, params, 0.0 if trainable is not None else 1.0)
            source = "analytic_6N" if flops is not None else "n/a"
        return {"compile_s": self.compile_s, "compile_concurrency": self.compile_concurrency,
                "attention_kernel": attention_kernel(compiled, self.case.family),
                "flops_per_step": flops, "flops_source": source,
                "xla_bytes_accessed": xla_cost(compiled, "bytes accessed"),
                "peak_memory_bytes": xla_peak_bytes(compiled), "memory_source": "xla_memory_analysis",
                "optimizer_state_bytes": tree_bytes(self.state.opt_state), "param_count": n_params,
                "trainable_param_count": n_trainable}

    def run(self, steps: int) -> float:
        """Runs ``steps`` steps (a runtime-mode round first switches the unfreezing stage), blocks
        on the final state only, and returns the elapsed seconds. XLA compilations the step calls
        trigger are added to ``recompilations`` (0 while they reuse the ahead-of-time executable)."""
        start = time.perf_counter()
        state = self.state
        if self.stages:
            self.stage = (self.stage + 1) % len(self.stages)
            state = state.replace(opt_state=jt.set_trainable(state.opt_state, self.stages[self.stage]))
        self.state, compilations = run_steps(self.step, state, self.batch, steps)
        self.recompilations += compilations
        return time.perf_counter() - start

    def compilations(self) -> int:
        """Number of compiled variants of the jitted step."""
        return jt.compile_count(self.step)

    def close(self) -> None:
        self.state = self.batch = self.step = None


def compile_contestants(contestants: Sequence[JaxContestant], workers: int,
                        log: Callable[[str], None] = print) -> None:
    """Compiles the jaxtune contestants of a case: the ``full`` mode (else the first) alone, so its
    ``compile_s`` is an uncontended number, then the others ``workers`` at a time in a thread pool
    (XLA compiles with the GIL released). Each contestant records its ``compile_concurrency``.

    Example::

        for c in contestants:
            c.prepare()
        compile_contestants(contestants, workers=4)
    """
    if workers < 1:
        raise ValueError(f"compile workers must be >= 1, got {workers}")
    if not contestants:
        return
    first = next((c for c in contestants if c.mode == "full"), contestants[0])
    rest = [c for c in contestants if c is not first]
    seconds = first.compile()
    log(f"  compile {first.case.name} jaxtune/{first.mode} alone: {seconds:.1f} s")
    concurrency = min(workers, len(rest))
    if concurrency <= 1:
        for c in rest:
            seconds = c.compile()
            log(f"  compile {c.case.name} jaxtune/{c.mode}: {seconds:.1f} s")
        return
    with concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="xla-compile") as pool:
        seconds = list(pool.map(lambda c: c.compile(concurrency), rest))
    log(f"  compile {first.case.name} " + ", ".join(f"jaxtune/{c.mode} {s:.1f} s" for c, s in zip(rest, seconds))
        + f" ({concurrency} at a time)")


