"""Step-throughput benchmarks: jaxtune fine-tuning steps against their PyTorch peers.

One process, one run: for every *case* (a model at fixed shapes) the harness builds a jaxtune train
step per *mode* and, where PyTorch is available, the PyTorch peers of the same model, shapes and
optimizer (AdamW), then times them in interleaved rounds (every contestant runs a round in turn, so
a noisy shared machine slows them alike).

Modes (all with AdamW, lr 2e-5, weight decay 0.01):

* ``full``: full fine-tuning with plain ``optax.adamw``;
* ``frozen_backbone``: structural mode, head only: ``make_train_step(trainable=mask)`` with a rule
  table that freezes everything but the head (no backward into the backbone, no optimizer state);
* ``llrd_masks``: the family's ``default_rules()`` (weight-decay masks) with layer-wise LR decay 0.9
  through ``model.layer_ids``;
* ``runtime_unfreeze``: gradual unfreezing in runtime mode (``make_optimizer(runtime=True)``): the
  stage switches with :func:`jaxtune.set_trainable` at the start of every timed round; the number
  of extra compilations is recorded (it must be 0).

Every record reports examples/s, the median step time, achieved TFLOP/s and MFU against a matmul
peak measured on the same device (bf16 on GPU, f32 on CPU), FLOPs per step (XLA cost analysis of
the compiled step, else an analytic 6·N·tokens estimate), compile time, peak memory, optimizer-state
bytes and the number of compilations. Outputs: JSON lines, a markdown table, a PNG bar chart and a
section of ``benchmarks/RESULTS.md``.

Suites: ``gpu`` (the default; BERT-base, T5-small, ResNet-50 at the issue's shapes), ``cpu`` (the
real all-MiniLM-L6-v2 against PyTorch CPU) and ``smoke`` (tiny configs, seconds).

Example::

    python benchmarks/step_throughput.py --smoke --out /tmp/bench
    jaxtune bench --cpu
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import functools
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxtune as jt
from jaxtune.hub import from_pretrained, minilm_path
from jaxtune.models.bert import BertConfig
from jaxtune.models.resnet import ResNetConfig, resnet_config
from jaxtune.models.t5 import T5Config
from jaxtune.profiling import profile_step
from jaxtune.runlog import pyplot, save_figure
from jaxtune.tasks import get_task
from jaxtune.train import default_compute_dtype

MODES = ("full", "frozen_backbone", "llrd_masks", "runtime_unfreeze")
# N members in one vmapped step against N sequential runs (jaxtune.bench_members); cases with members=N.
MEMBER_MODES = ("members", "sequential")
ALL_MODES = MODES + MEMBER_MODES
SUITES = ("gpu", "cpu", "smoke")
LEARNING_RATE = 2e-5
WEIGHT_DECAY = 0.01
LAYER_DECAY = 0.9
UNFREEZING_STAGES = 4
PROFILE_TOP_OPS = 20
FAILURE_TRACEBACK_FRAMES = 12     # innermost frames of a failed case's traceback in the log

# XLA flags for the GPU suite, each with the reason it is there. Flags already present in XLA_FLAGS
# win; XLA exits on an unknown flag, so every entry is checked to parse with the pinned jaxlib.
GPU_XLA_FLAGS: dict[str, tuple[str, str]] = {
    "xla_gpu_enable_latency_hiding_scheduler": (
        "true", "schedule asynchronous copies/collectives to overlap with compute (NVIDIA's default)"),
    "xla_gpu_enable_command_buffer": (
        "FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL",
        "record fusions and library calls into CUDA graphs: fewer kernel launches per step"),
}
# The smoke suite checks the harness, not speed: LLVM's optimisation passes are skipped to cut the
# CPU compile time of its tiny steps about 3x.
SMOKE_XLA_FLAGS: dict[str, tuple[str, str]] = {
    "xla_backend_optimization_level": ("0", "no LLVM optimisation passes: 3x faster CPU compiles"),
}
# --profile-steps on the CPU suites: XLA:CPU emits a trace event per op only with this flag.
CPU_PROFILE_XLA_FLAGS: dict[str, tuple[str, str]] = {
    "xla_cpu_enable_xprof_traceme": ("true", "trace events per XLA:CPU op, for --profile-steps"),
}
# Environment for the GPU suite: JAX must share the device with PyTorch in the same process.
GPU_ENV: dict[str, tuple[str, str]] = {
    "XLA_PYTHON_CLIENT_PREALLOCATE": (
        "false", "grow JAX's pool on demand so the PyTorch peers in the same process get memory"),
    "XLA_PYTHON_CLIENT_MEM_FRACTION": ("0.7", "cap JAX's pool at 70% of the device; PyTorch gets the rest"),
}


# --------------------------------------------------------------------------------------------- cases
@dataclasses.dataclass(frozen=True)
class Case:
    """One model at fixed shapes.

    Attributes:
      name: short id used in tables and ``--cases`` (e.g. ``bert-base-s128-bs32``).
      family: ``"bert"``, ``"t5"`` or ``"resnet"``.
      config: the jaxtune config of the family (random weights) — or None with ``pretrained``.
      batch_size: examples per step.
      shape: ``{"seq": S}`` (BERT), ``{"src": S, "tgt": T}`` (T5) or ``{"image": H}`` (ResNet).
      num_labels: classifier size (BERT/ResNet).
      pretrained: checkpoint directory to load instead of random weights.
      peers: PyTorch variants to run beside it (``"eager"``, ``"compile"``).
      modes: the jaxtune modes to run (a subset of :data:`ALL_MODES`).
      members: N of the member modes (:data:`MEMBER_MODES`; 0 for a case without them).
      est_compile_s: conservative seconds of one jaxtune compilation on the suite's device (the unit
        of :func:`estimate_case_s`).
      est_step_s: conservative seconds of one step of the case's slowest contestant.
    """

    name: str
    family: str
    config: Any
    batch_size: int
    shape: dict
    num_labels: int | None = None
    pretrained: str | None = None
    peers: tuple[str, ...] = ("eager",)
    modes: tuple[str, ...] = MODES
    est_compile_s: float = 5.0
    est_step_s: float = 0.05
    members: int = 0

    @property
    def shape_str(self) -> str:
        return "x".join(f"{k}{v}" for k, v in self.shape.items())


def _bert_config(**overrides):
    return BertConfig(**overrides)


def _minilm_config(**overrides):
    """all-MiniLM-L6-v2's shapes: 6 layers, hidden 384, 12 heads, intermediate 1536."""
    return BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                      **overrides)


def _t5_config(**overrides):
    return T5Config(**overrides)


def _resnet_config(depth: int | None = None, **fields):
    return resnet_config(depth, num_labels=1000) if depth else ResNetConfig(**fields)


# The smoke suite runs every mode (members: 2) on BERT only: it checks the harness, in about a minute.
SMOKE_MODES = ("full", "frozen_backbone")


def suite_cases(suite: str) -> list[Case]:
    """The cases of a suite (``gpu``, ``cpu`` or ``smoke``).

    BERT cases of the GPU suite use ``attention_probs_dropout_prob=0`` on both sides, so both can
    train on fused attention kernels; hidden dropout stays 0.1.

    Example::

        >>> [c.name for c in suite_cases("smoke")]
        ['bert-tiny-s16-bs4', 't5-tiny-s16-t8-bs4', 'resnet-tiny-i32-bs4']
    """
    if suite == "gpu":
        # Ordered so that a run cut short by --time-budget-s has the targets' cases first: the
        # torch.compile and compile-time targets (BERT bs 128), T5-small, ResNet-50, then the rest.
        # Estimates: rough H100 guesses, on the safe side (see estimate_case_s).
        bert_base = _bert_config(attention_probs_dropout_prob=0.0)
        bert_peers = ("eager", "compile")
        return [
            Case("bert-base-s128-bs128", "bert", bert_base, 128, {"seq": 128}, 2, peers=bert_peers,
                 est_compile_s=30, est_step_s=0.12),
            Case("t5-small-s256-t64-bs64", "t5", _t5_config(), 64, {"src": 256, "tgt": 64},
                 est_compile_s=30, est_step_s=0.08),
            Case("resnet50-i224-bs256", "resnet", _resnet_config(50), 256, {"image": 224}, 1000,
                 est_compile_s=45, est_step_s=0.3),
            Case("bert-base-s128-bs32", "bert", bert_base, 32, {"seq": 128}, 2, peers=bert_peers,
                 est_compile_s=30, est_step_s=0.05),
            Case("bert-base-s512-bs32", "bert", bert_base, 32, {"seq": 512}, 2, peers=bert_peers,
                 est_compile_s=30, est_step_s=0.15),
            # Members: 8 variants in one vmapped step against 8 sequential runs (random weights).
            Case("minilm-l6-s128-bs32-n8", "bert", _minilm_config(attention_probs_dropout_prob=0.0), 32,
                 {"seq": 128}, 2, peers=(), modes=MEMBER_MODES, members=8, est_compile_s=15, est_step_s=0.15),
            Case("bert-base-s128-bs32-n8", "bert", bert_base, 32, {"seq": 128}, 2, peers=(), modes=MEMBER_MODES,
                 members=8, est_compile_s=40, est_step_s=0.4),
        ]
    if suite == "cpu":
        return [Case("minilm-l6-s64-bs16", "bert", None, 16, {"seq": 64}, 2, pretrained=str(minilm_path()),
                     modes=ALL_MODES, members=4, est_compile_s=20, est_step_s=2.0)]
    if suite == "smoke":
        tiny_bert = _bert_config(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=37, max_position_embeddings=64)
        tiny_t5 = _t5_config(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=2,
                             num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16)
        tiny_resnet = _resnet_config(embedding_size=8, hidden_sizes=(16, 32), depths=(1, 1), num_labels=10)
        return [
            Case("bert-tiny-s16-bs4", "bert", tiny_bert, 4, {"seq": 16}, 2, modes=ALL_MODES, members=2),
            Case("t5-tiny-s16-t8-bs4", "t5", tiny_t5, 4, {"src": 16, "tgt": 8}, peers=(), modes=SMOKE_MODES),
            Case("resnet-tiny-i32-bs4", "resnet", tiny_resnet, 4, {"image": 32}, 10, peers=(), modes=SMOKE_MODES),
        ]
    raise ValueError(f"unknown suite {suite!r}; choose one of {SUITES}")


def make_batch(case: Case, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random host batch of a case (NumPy; token ids avoid the special ids below 2 / 1000).

    Example::

        >>> sorted(make_batch(suite_cases("smoke")[0], 99))
        ['attention_mask', 'input_ids', 'labels', 'token_type_ids']
    """
    rng = np.random.default_rng(seed)
    b = case.batch_size
    if case.family == "bert":
        s = case.shape["seq"]
        low = 1000 if vocab_size > 2000 else 1
        return {"input_ids": rng.integers(low, vocab_size, (b, s)).astype(np.int32),
                "attention_mask": np.ones((b, s), np.int32), "token_type_ids": np.zeros((b, s), np.int32),
                "labels": rng.integers(0, case.num_labels, (b,)).astype(np.int32)}
    if case.family == "t5":
        src, tgt = case.shape["src"], case.shape["tgt"]
        return {"input_ids": rng.integers(2, vocab_size, (b, src)).astype(np.int32),
                "attention_mask": np.ones((b, src), np.int32),
                "labels": rng.integers(2, vocab_size, (b, tgt)).astype(np.int32)}
    if case.family == "resnet":
        h = case.shape["image"]
        return {"images": rng.standard_normal((b, h, h, 3), np.float32),
                "labels": rng.integers(0, case.num_labels, (b,)).astype(np.int32)}
    raise ValueError(f"case {case.name}: unknown family {case.family!r}")


# --------------------------------------------------------------------------------------------- measurements
def median_step_time(round_times: Sequence[float], steps_per_round: int) -> float:
    """Median seconds per step over timed rounds of ``steps_per_round`` steps each.

    Example::

        >>> median_step_time([1.0, 3.0, 2.0], 2)
        1.0
    """
    if not round_times or steps_per_round < 1:
        raise ValueError(f"need timed rounds and steps_per_round >= 1, got {len(round_times)} rounds, "
                         f"steps_per_round={steps_per_round}")
    return statistics.median(round_times) / steps_per_round


def matmul_peak_flops(n: int | None = None, repeats: int = 5) -> tuple[float, str]:
    """Measured matmul peak of the default JAX device, in FLOP/s, and the dtype it used.

    bf16 ``n x n`` matmuls on GPU/TPU (default n=8192), f32 on CPU (default n=1024); best of
    ``repeats`` timings of 4 back-to-back products.

    Example::

        peak, dtype = matmul_peak_flops()    # e.g. (7.1e14, "bfloat16") on an H100
    """
    accelerator = jax.default_backend() != "cpu"
    dtype = jnp.bfloat16 if accelerator else jnp.float32
    n = n or (8192 if accelerator else 1024)
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)

    @jax.jit
    def chain(a, b):
        for _ in range(4):
            a = (a @ b) * jnp.asarray(1e-2, dtype)
        return a

    jax.block_until_ready(chain(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(chain(a, b))
        best = min(best, time.perf_counter() - start)
    return 4 * 2 * n ** 3 / best, jnp.dtype(dtype).name


# jax.monitoring emits this event once per XLA backend compilation (jax/_src/dispatch.py).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class _CompileCounter:
    """Counts XLA backend compilations of this process, from any thread."""

    def __init__(self):
        self.count = 0
        self._lock = threading.Lock()
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration_secs: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            with self._lock:
                self.count += 1


@functools.cache
def _compile_counter() -> _CompileCounter:
    return _CompileCounter()


def xla_compile_count() -> int:
    """XLA backend compilations run in this process since the first call (which starts counting).

    Example::

        before = xla_compile_count(); step(state, batch); recompiled = xla_compile_count() - before
    """
    return _compile_counter().count


# Custom-call targets of cuDNN's fused attention in XLA:GPU (forward and backward).
CUDNN_ATTENTION_TARGET = "__cudnn$fmha"


def attention_kernel(compiled: Any, family: str) -> str | None:
    """Which attention kernel a compiled transformer step runs: ``"cudnn"`` when XLA calls cuDNN's
    fused attention, else ``"xla"``; ``None`` for families without attention (ResNet).

    Example::

        attention_kernel(step.lower(state, batch).compile(), "bert")    # "xla" on CPU
    """
    if family not in ("bert", "t5"):
        return None
    return "cudnn" if CUDNN_ATTENTION_TARGET in compiled.as_text() else "xla"


def tree_bytes(tree: Any) -> int:
    """Total bytes of the array leaves of a pytree.

    Example::

        >>> tree_bytes({"a": np.zeros(3, np.float32), "b": (np.zeros(2, np.int8),)})
        14
    """
    return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree)
                   if hasattr(x, "dtype") and hasattr(x, "shape")))


def xla_cost(compiled: Any, key: str = "flops") -> float | None:
    """``flops`` (or ``bytes accessed``) of a compiled XLA executable from its cost analysis; None
    where the backend has none.

    Example::

        flops = xla_cost(jax.jit(f).lower(x).compile())
    """
    try:
        cost = compiled.cost_analysis()
    except (NotImplementedError, RuntimeError):    # some backends implement no cost analysis
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    value = (cost or {}).get(key)
    return float(value) if value and value > 0 else None


def xla_peak_bytes(compiled: Any) -> int | None:
    """Peak device memory of one call of a compiled executable, from XLA's buffer assignment:
    arguments + temporaries + outputs not aliased to (donated) arguments."""
    try:
        m = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        return None
    if m is None:
        return None
    peak = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
    computed = m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return max(peak, int(computed)) or None


def analytic_flops(case: Case, config: Any, params: Any, trainable_fraction: float = 1.0) -> float | None:
    """6·N·tokens (+ attention) FLOPs of a transformer step (forward 2·N·tokens, backward 4·N·tokens);
    N excludes embedding tables. A head-only step has a forward and a negligible backward
    (``trainable_fraction=0`` -> 2·N·tokens). None for convolutional nets."""
    sizes = {p: int(np.prod(x.shape)) for p, x in zip(jt.leaf_paths(params), jax.tree_util.tree_leaves(params))}
    factor = 2.0 + 4.0 * trainable_fraction
    b = case.batch_size
    if case.family == "bert":
        s = case.shape["seq"]
        n = sum(v for p, v in sizes.items() if "embeddings" not in p)
        attention = 2 * 2 * config.num_hidden_layers * s * s * config.hidden_size
        return factor * b * (n * s + attention)
    if case.family == "t5":
        src, tgt = case.shape["src"], case.shape["tgt"]
        enc = sum(v for p, v in sizes.items() if p.startswith("encoder/"))
        dec = sum(v for p, v in sizes.items() if p.startswith("decoder/"))
        head = config.vocab_size * config.d_model          # output projection (tied or lm_head)
        inner = config.num_heads * config.d_kv
        attention = 2 * 2 * inner * (config.num_layers * src * src
                                     + config.num_decoder_layers * (tgt * tgt + tgt * src))
        return factor * b * (enc * src + (dec + head) * tgt + attention)
    return None


# --------------------------------------------------------------------------------------------- jaxtune contestants
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
        self.compiled = self.trainable = None
        self.compile_s, self.compile_concurrency, self.recompilations = None, 1, 0

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
        self.step = jt.make_train_step(m.loss_fn, tx, trainable=self.trainable, compute_dtype=self.compute_dtype)
        self.batch = jax.device_put(self.host_batch)

    def compile(self, concurrency: int = 1) -> float:
        """Lowers and compiles the step ahead of time (timed) and returns the seconds; safe to call
        from a worker thread. ``concurrency``: how many compilations share the machine meanwhile
        (recorded as ``compile_concurrency``). Later calls of the jitted step reuse this executable
        (JAX caches the lowering and the compilation)."""
        start = time.perf_counter()
        self.compiled = self.step.lower(self.state, self.batch).compile()
        self.compile_s, self.compile_concurrency = time.perf_counter() - start, concurrency
        return self.compile_s

    def stats(self) -> dict:
        """Static stats of the compiled step (FLOPs, memory, sizes); call after :meth:`compile`."""
        if self.compiled is None:
            raise RuntimeError(f"{self.case.name}/{self.mode}: stats() needs compile() first")
        compiled, params, trainable = self.compiled, self.state.params, self.trainable
        self.compiled = None
        flops, source = xla_cost(compiled), "xla_cost_analysis"
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
        return int(self.step._cache_size())

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


# --------------------------------------------------------------------------------------------- runner
@dataclasses.dataclass
class Options:
    """Timing protocol of a run; ``compile_workers``: jaxtune compilations of a case at a time;
    ``profile_steps``: steps of each case's ``full`` mode to profile after the timing (0: none)."""

    warmup: int = 3
    rounds: int = 10
    steps_per_round: int = 5
    peers: bool = True
    modes: tuple[str, ...] = MODES
    compile_workers: int = 1
    profile_steps: int = 0      # > 0: profile that many steps of each case's `full` mode (after timing)


# The gpu protocol is sized to fit one 10-minute device command (see estimate_case_s); cpu compiles
# one step at a time so its compile_s stays comparable with the committed results; smoke (timings
# that mean nothing) compiles two at a time, one per core of a 2-core machine, to stay under a minute.
SUITE_OPTIONS = {
    "gpu": Options(warmup=3, rounds=6, steps_per_round=5, compile_workers=4),
    "cpu": Options(warmup=2, rounds=8, steps_per_round=2),
    "smoke": Options(warmup=1, rounds=2, steps_per_round=2, compile_workers=2),
}


# Units of the cost model of estimate_case_s, in seconds of one jaxtune compilation alone.
CONCURRENT_COMPILE_COST = 1.5    # a wave of up to compile_workers concurrent compilations
TORCH_COMPILE_COST = 2.0         # a torch.compile peer's first step
EAGER_PEER_COST = 0.5            # an eager peer's setup (model build, FLOP count, first step)
MIN_BUDGET_SCALE = 0.5           # TimeBudget never shrinks an estimate below half


def estimate_case_s(case: Case, options: Options, with_peers: bool = True) -> float:
    """Conservative wall seconds of one case under ``options``, from the case's ``est_compile_s`` (C)
    and ``est_step_s``: model build C; the first compilation C; the other modes C each, or 1.5·C per
    wave of up to ``compile_workers`` concurrent ones; PyTorch peers C/2 (eager) or 2·C
    (torch.compile); and every contestant's warm-up, timed and first steps.

    Example::

        >>> estimate_case_s(suite_cases("smoke")[1], Options(warmup=1, rounds=2, steps_per_round=2))
        15.6
    """
    modes = [m for m in options.modes if m in case.modes]
    peers = case.peers if with_peers else ()
    c = case.est_compile_s
    rest = max(len(modes) - 1, 0)
    if options.compile_workers > 1 and rest > 1:
        compile_s = c + math.ceil(rest / options.compile_workers) * CONCURRENT_COMPILE_COST * c
    else:
        compile_s = c * len(modes)
    peer_s = sum(TORCH_COMPILE_COST * c if variant == "compile" else EAGER_PEER_COST * c for variant in peers)
    steps = options.warmup + options.rounds * options.steps_per_round + 1
    return round(c + compile_s + peer_s + (len(modes) + len(peers)) * steps * case.est_step_s, 3)


class TimeBudget:
    """Wall-clock budget of a run (``--time-budget-s``): whether the next case still fits.

    The estimate of the next case is scaled by the largest actual/estimated ratio of the cases
    finished so far (never below 0.5), so a slower machine than the cost model assumes starts less.
    ``limit_s=None``: no budget, every case fits.

    Example::

        >>> clock = iter([0.0, 10.0, 70.0]).__next__         # start, then one reading per fits()
        >>> budget = TimeBudget(100.0, clock=clock)
        >>> budget.fits(50.0)                                 # 10 s elapsed + 50 s <= 100 s
        True
        >>> budget.finished(estimate_s=50.0, took_s=60.0)     # 20% slower than estimated
        >>> budget.estimate(20.0), budget.fits(20.0)          # 70 s elapsed + 24 s <= 100 s
        (24.0, True)
    """

    def __init__(self, limit_s: float | None, clock: Callable[[], float] = time.perf_counter):
        if limit_s is not None and limit_s <= 0:
            raise ValueError(f"time budget must be > 0 seconds, got {limit_s}")
        self.limit_s, self.clock = limit_s, clock
        self.start = clock()
        self.scale = 1.0
        self._ratios: list[float] = []

    def elapsed(self) -> float:
        return self.clock() - self.start

    def estimate(self, estimate_s: float) -> float:
        return estimate_s * self.scale

    def fits(self, estimate_s: float) -> bool:
        return self.limit_s is None or self.elapsed() + self.estimate(estimate_s) <= self.limit_s

    def finished(self, estimate_s: float, took_s: float) -> None:
        self._ratios.append(took_s / estimate_s)
        self.scale = max(MIN_BUDGET_SCALE, max(self._ratios))


def _load_torch_peers(path: Path | None = None):
    """The PyTorch peer module (benchmarks/torch_peers.py of the repository), or (None, reason)."""
    path = path or Path(__file__).resolve().parents[1] / "benchmarks" / "torch_peers.py"
    if importlib.util.find_spec("torch") is None:
        return None, "PyTorch is not installed"
    if importlib.util.find_spec("transformers") is None:
        return None, "transformers is not installed"
    if not path.is_file():
        return None, f"{path} not found (run from a source checkout)"
    spec = importlib.util.spec_from_file_location("jaxtune_bench_torch_peers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, ""


def _profile_full_mode(contestants: Sequence[JaxContestant], steps: int, log: Callable[[str], None]) -> str | None:
    """The op table (:func:`jaxtune.profiling.profile_step`) of ``steps`` steps of the ``full``
    contestant, logged; None when not asked for or when the profiler fails (the run goes on)."""
    full = next((c for c in contestants if c.mode == "full"), None)
    if steps <= 0 or full is None:
        return None
    try:
        full.state, ops = profile_step(full.step, full.state, full.batch, steps=steps)
    except Exception as err:     # a profiler problem must not cost the measurements of the run
        log(f"  profile {full.case.name} jaxtune/full failed: {type(err).__name__}: {err}")
        return None
    table = f"# {full.case.name} jaxtune/full\n{ops.table(top=PROFILE_TOP_OPS)}"
    log(table)
    return table


def jax_contestant(case: Case, model: Model, mode: str, batch: dict, compute_dtype: Any):
    """The jaxtune contestant of a mode: :class:`JaxContestant`, or for :data:`MEMBER_MODES`
    :class:`jaxtune.bench_members.MemberContestant`."""
    if mode in MEMBER_MODES:
        from jaxtune.bench_members import MemberContestant  # it builds on this module
        return MemberContestant(case, model, mode, batch, compute_dtype)
    return JaxContestant(case, model, mode, batch, compute_dtype)


def run_case(case: Case, options: Options, *, peak_flops: float, peers_module: Any = None,
             peer_device: str | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Builds every contestant of ``case``, times them in interleaved rounds, returns one record each.

    Example::

        records = run_case(suite_cases("smoke")[0], SUITE_OPTIONS["smoke"], peak_flops=1e11)
    """
    compute_dtype = default_compute_dtype()
    model = build_model(case, compute_dtype)
    vocab = getattr(model.config, "vocab_size", 0)
    batch = make_batch(case, vocab)
    modes = [m for m in options.modes if m in case.modes]
    jax_contestants = [jax_contestant(case, model, mode, batch, compute_dtype) for mode in modes]
    peers = []
    if peers_module is not None and peer_device is not None:
        peers = [peers_module.TorchPeer(case, model.config, batch, variant, peer_device) for variant in case.peers]
    for c in jax_contestants:
        c.prepare()
    compiles_before = xla_compile_count()
    compile_contestants(jax_contestants, options.compile_workers, log)
    # A jax that emits no backend-compile events cannot tell whether later calls recompiled.
    counts_compiles = xla_compile_count() > compiles_before
    static = [c.stats() for c in jax_contestants]
    for c in peers:
        log(f"  setup {case.name} {c.framework}/{c.mode}/{c.variant}")
        static.append({**c.setup(), "compile_concurrency": 1})
    contestants = [*jax_contestants, *peers]
    for c in contestants:
        c.run(options.warmup)
    warm_compiles = [c.compilations() for c in contestants]
    times: list[list[float]] = [[] for _ in contestants]
    for _ in range(options.rounds):
        for i, c in enumerate(contestants):
            times[i].append(c.run(options.steps_per_round))
    profile = _profile_full_mode(jax_contestants, options.profile_steps, log)
    records = []
    for c, s, t, warm in zip(contestants, static, times, warm_compiles):
        step_s = median_step_time(t, options.steps_per_round)
        flops = s["flops_per_step"]
        compiles = c.compilations()
        jaxtune = c.framework == "jaxtune"
        records.append({
            "kind": "case", "case": case.name, "family": case.family, "framework": c.framework,
            "mode": c.mode, "variant": c.variant, "batch_size": case.batch_size, "shape": case.shape_str,
            "compute_dtype": jnp.dtype(compute_dtype).name if jaxtune else c.dtype_name,
            "examples_per_s": getattr(c, "examples_per_step", case.batch_size) / step_s, "step_time_s": step_s,
            "step_time_min_s": min(t) / options.steps_per_round,
            "tflops_per_s": flops / step_s / 1e12 if flops else None,
            "mfu": flops / step_s / peak_flops if flops else None,
            "rounds": len(t), "steps_per_round": options.steps_per_round, **s,
            "compilations": compiles, "extra_compilations": compiles - warm,
            "recompilations": c.recompilations if jaxtune and counts_compiles else None,
            **({"profile": profile} if profile and jaxtune and c.mode == "full" else {}),
        })
        c.close()
    del model
    jax.clear_caches()
    return records


def environment(peak_flops: float, peak_dtype: str, suite: str, peer_device: str | None,
                peer_reason: str, dropped_xla_flags: Sequence[str] = ()) -> dict:
    """Device, versions, flags (and those dropped as unknown to this jaxlib) and date of a run."""
    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "torch", "transformers"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    device = jax.devices()[0]
    return {
        "kind": "env", "suite": suite, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backend": jax.default_backend(), "device": device.device_kind, "device_count": jax.device_count(),
        "host": platform.node(), "cpu_count": os.cpu_count(), "load_avg": list(os.getloadavg()),
        "python": platform.python_version(), "versions": versions,
        "matmul_peak_tflops": peak_flops / 1e12, "matmul_peak_dtype": peak_dtype,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "xla_flags_dropped": list(dropped_xla_flags),
        "threads": len(os.sched_getaffinity(0)),
        "peer_device": peer_device, "peers_skipped_reason": peer_reason,
    }


# --------------------------------------------------------------------------------------------- reporting
def _fmt(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def mib(x: int | None) -> str:
    """Bytes as MiB with one decimal for tables (``n/a`` for None); ``mib(3 * 2**20) == "3.0"``."""
    return "n/a" if x is None else f"{x / 2 ** 20:.1f}"


def _compile_cell(r: dict) -> str:
    concurrency = r["compile_concurrency"]
    return _fmt(r["compile_s"], ".1f") + (f" (×{concurrency})" if concurrency > 1 else "")


def _recompiled(r: dict) -> str:
    return f", {r['recompilations']} recompiled" if r["recompilations"] else ""


def _attention_note(record: dict) -> str:
    return " (cuDNN attention)" if record.get("attention_kernel") == "cudnn" else ""


def markdown_table(records: Sequence[dict]) -> str:
    """Markdown table of case records (one row each).

    Example::

        print(markdown_table([r for r in records if r["kind"] == "case"]))
    """
    head = ("| case | framework | mode | examples/s | step ms (median) | best round ms | TFLOP/s | MFU "
            "| GFLOP/step (source) | compile s (×concurrent) | peak mem MiB | opt-state MiB | compiles (extra) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        gflop = "n/a" if r["flops_per_step"] is None else f"{r['flops_per_step'] / 1e9:.1f} ({r['flops_source']})"
        lines.append(
            f"| {r['case']} | {r['framework']} {r['variant']}{_attention_note(r)} | {r['mode']} | {r['examples_per_s']:.1f} "
            f"| {r['step_time_s'] * 1e3:.1f} | {r['step_time_min_s'] * 1e3:.1f} | {_fmt(r['tflops_per_s'], '.3f')} | {_fmt(r['mfu'], '.1%')} | {gflop} "
            f"| {_compile_cell(r)} | {mib(r['peak_memory_bytes'])} | {mib(r['optimizer_state_bytes'])} "
            f"| {r['compilations']} ({r['extra_compilations']}{_recompiled(r)}) |")
    return "\n".join(lines)


def _find(records, case, framework="jaxtune", mode="full", variant=None):
    for r in records:
        if (r["case"] == case and r["framework"] == framework and r["mode"] == mode
                and (variant is None or r["variant"] == variant)):
            return r
    return None


def check_targets(records: Sequence[dict], suite: str) -> list[dict]:
    """The issue's targets evaluated on a run's records: ``{"target", "case", "value", "threshold", "ok"}``.

    ``value`` is a ratio (>= threshold passes) except for overheads, memory fractions, compile
    seconds and extra compilations (<= threshold passes). Ratios use median step times; the cpu
    suite also compares the fastest rounds. Targets whose records are missing are left out.

    Example::

        for t in check_targets(records, "cpu"):
            print(t["target"], t["value"], "ok" if t["ok"] else "MISSED")
    """
    from jaxtune.bench_members import member_targets  # it builds on this module
    out = []

    def add(target, case, value, threshold, higher_is_better=True):
        if value is None:
            return
        ok = value >= threshold if higher_is_better else value <= threshold
        out.append({"target": target, "case": case, "value": value, "threshold": threshold, "ok": bool(ok)})

    cases = sorted({r["case"] for r in records})
    for case in cases:
        full = _find(records, case)
        frozen = _find(records, case, mode="frozen_backbone")
        llrd = _find(records, case, mode="llrd_masks")
        runtime = _find(records, case, mode="runtime_unfreeze")
        if full and frozen:
            add("frozen-backbone speed-up over full (x)", case, full["step_time_s"] / frozen["step_time_s"], 2.5)
            if suite == "gpu" and full["peak_memory_bytes"] and frozen["peak_memory_bytes"]:
                add("frozen-backbone peak memory / full", case,
                    frozen["peak_memory_bytes"] / full["peak_memory_bytes"], 0.40, False)
        if full and llrd:
            add("LLRD + masks overhead over AdamW", case, llrd["step_time_s"] / full["step_time_s"] - 1.0,
                0.02 if suite == "gpu" else 0.03, False)
        if runtime:
            add("runtime unfreezing extra compilations", case, runtime["extra_compilations"], 0, False)
        eager = _find(records, case, "pytorch", variant="eager")
        compiled = _find(records, case, "pytorch", variant="compile")
        if full and suite == "cpu" and eager:
            add("jaxtune / PyTorch eager (x)", case, full["examples_per_s"] / eager["examples_per_s"], 1.0)
            # On a shared machine the fastest round is the closest to an idle one.
            add("jaxtune / PyTorch eager, best rounds (x)", case,
                eager["step_time_min_s"] / full["step_time_min_s"], 1.0)
        member_targets(records, case, _find, add)
        if full and suite == "gpu":
            if case == "bert-base-s128-bs128" and compiled:
                add("jaxtune / torch.compile (x)", case, full["examples_per_s"] / compiled["examples_per_s"], 1.25)
            if case.startswith("resnet50") and eager:
                add("jaxtune / PyTorch eager (x)", case, full["examples_per_s"] / eager["examples_per_s"], 1.2)
            if case.startswith("t5-small") and eager:
                add("jaxtune / PyTorch eager (x)", case, full["examples_per_s"] / eager["examples_per_s"], 2.0)
            if case.startswith("bert-base"):
                add("BERT-base step compile (s)", case, full["compile_s"], 20.0, False)
    return out


def targets_table(targets: Sequence[dict]) -> str:
    lines = ["| target | case | value | threshold | met |", "|---|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {t['case']} | {t['value']:.3f} | {t['threshold']} | "
                     f"{'yes' if t['ok'] else '**no**'} |")
    return "\n".join(lines)


def environment_markdown(env: dict) -> str:
    v = env["versions"]
    return (f"- date (UTC): {env['date']}\n- device: {env['device']} ({env['backend']}, {env['device_count']} device(s), "
            f"{env['cpu_count']} CPU cores, {env['threads']} used, load average at start {', '.join(f'{x:.2f}' for x in env['load_avg'])})\n"
            f"- measured matmul peak: {env['matmul_peak_tflops']:.3f} TFLOP/s ({env['matmul_peak_dtype']})\n"
            f"- versions: " + ", ".join(f"{k} {v[k]}" for k in v) + "\n"
            f"- XLA_FLAGS: `{env['xla_flags'] or '(none)'}`\n"
            + (f"- XLA flags dropped (this jaxlib rejects them): `{' '.join(env['xla_flags_dropped'])}`\n"
               if env.get("xla_flags_dropped") else "")
            + (f"- attention (BERT/T5): `{env['attention']}`"
               + (f"; {env['attention_note']}" if env.get("attention_note") else "") + "\n"
               if "attention" in env else "")
            + f"- PyTorch peers: {env['peer_device'] or 'skipped: ' + env['peers_skipped_reason']}\n")


def plot(records: Sequence[dict], path: Path, title: str) -> None:
    """Bar chart of examples/s, one panel per case (each on its own scale)."""
    plt = pyplot()
    cases = list(dict.fromkeys(r["case"] for r in records))
    fig, axes = plt.subplots(len(cases), 1, figsize=(7, 1.0 + 1.6 * len(cases)), squeeze=False)
    for ax, case in zip(axes[:, 0], cases):
        rows = [r for r in records if r["case"] == case]
        labels = [f"{r['framework']} {r['variant']} {r['mode']}" if r["framework"] != "jaxtune" else r["mode"]
                  for r in rows]
        colors = ["tab:blue" if r["framework"] == "jaxtune" else "tab:orange" for r in rows]
        ax.barh(labels, [r["examples_per_s"] for r in rows], color=colors)
        ax.invert_yaxis()
        ax.set_title(case, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("examples / s (blue: jaxtune, orange: PyTorch)")
    save_figure(fig, path, title=title, dpi=80, title_size=10)


def update_results_md(path: Path, suite: str, body: str) -> None:
    """Replaces (or appends) the ``suite`` section of RESULTS.md, between marker comments."""
    begin, end = f"<!-- results:{suite}:begin -->", f"<!-- results:{suite}:end -->"
    text = path.read_text() if path.is_file() else "# Step-throughput results\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def section_body(records: Sequence[dict], env: dict, suite: str, name: str, note: str = "") -> str:
    """Markdown of a run: environment, ``note`` (e.g. cases not run), table and targets.

    Example::

        Path("gpu.md").write_text(section_body(records, env, "gpu", "gpu"))
    """
    targets = check_targets(records, suite)
    smoke = "\nTiny configs: the timings check the harness and mean nothing.\n" if suite == "smoke" else ""
    note = f"\n{note.strip()}\n" if note else ""
    return (f"## Suite `{suite}` (`{name}`)\n\n{environment_markdown(env)}{smoke}{note}\n{markdown_table(records)}\n\n"
            f"### Targets\n\n{targets_table(targets) if targets else '(none applicable)'}\n")


def _write_jsonl(path: Path, rows: Sequence[dict], mode: str = "w") -> None:
    with path.open(mode) as f:
        for r in rows:
            f.write(json.dumps(r, default=float) + "\n")


def _write_partial_markdown(records: Sequence[dict], env: dict, out: Path, suite: str, name: str,
                            pending: Sequence[str]) -> None:
    note = f"**Partial run**: not run yet: {', '.join(pending)}." if pending else ""
    (out / f"{name}.md").write_text(section_body(records, env, suite, name, note))


def start_outputs(env: dict, out: Path, suite: str, name: str, pending: Sequence[str]) -> Path:
    """Starts the outputs of a run: ``<name>.jsonl`` with the environment record (each case is
    appended by :func:`append_case_outputs`) and ``<name>.md`` listing the ``pending`` cases.
    Returns the JSON lines' path.

    Example::

        jsonl = start_outputs(env, Path("/tmp/bench"), "gpu", "gpu", [c.name for c in cases])
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.jsonl"
    _write_jsonl(path, [env])
    _write_partial_markdown([], env, out, suite, name, pending)
    return path


def append_case_outputs(case_records: Sequence[dict], records: Sequence[dict], env: dict, out: Path, suite: str,
                        name: str, pending: Sequence[str]) -> None:
    """Appends a finished case's records to ``<name>.jsonl`` and rewrites ``<name>.md`` with every
    record so far, listing the ``pending`` cases: a run killed later still leaves these on disk.

    Example::

        append_case_outputs(case_records, records, env, out, "gpu", "gpu", pending=["resnet50-i224-bs256"])
    """
    _write_jsonl(out / f"{name}.jsonl", case_records, mode="a")
    _write_partial_markdown(records, env, out, suite, name, pending)


def write_outputs(records: list[dict], env: dict, out: Path, suite: str, results_md: Path | None,
                  make_plot: bool = True, name: str | None = None, note: str = "") -> dict[str, Path]:
    """JSON lines, markdown, PNG (and the RESULTS.md section) of a run, named ``name`` (default: the
    suite); ``note``: markdown added below the environment (e.g. cases skipped). Returns the paths
    written; no PNG without records."""
    name = name or suite
    out.mkdir(parents=True, exist_ok=True)
    paths = {"jsonl": out / f"{name}.jsonl", "markdown": out / f"{name}.md"}
    _write_jsonl(paths["jsonl"], [env, *records])
    body = section_body(records, env, suite, name, note)
    paths["markdown"].write_text(body)
    make_plot = make_plot and bool(records)
    if make_plot:
        paths["png"] = out / f"{name}.png"
        plot(records, paths["png"], f"jaxtune step throughput: {name} on {env['device']}")
    if results_md is not None:
        update_results_md(results_md, name, body + (f"\n![{name}](results/{name}.png)\n" if make_plot else ""))
        paths["results_md"] = results_md
    return paths


# --------------------------------------------------------------------------------------------- entry point
XLA_FLAG_PROBE = "import jax; jax.devices()"     # initialising a backend parses XLA_FLAGS


def _probe_xla_flags(flags: str) -> bool:
    """Whether a fresh Python starts a JAX backend with ``XLA_FLAGS=flags`` (XLA aborts the process
    on a flag or flag value it does not know)."""
    try:
        proc = subprocess.run([sys.executable, "-c", XLA_FLAG_PROBE], env={**os.environ, "XLA_FLAGS": flags},
                              capture_output=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        return True      # XLA rejects flags at once; a hang is another problem the run itself meets
    return proc.returncode == 0


def _join_flags(*flags: str) -> str:
    return " ".join(f for f in flags if f)


def accepted_xla_flags(base: str, candidates: Sequence[str],
                       probe: Callable[[str], bool] | None = None) -> tuple[list[str], list[str]]:
    """Splits ``candidates`` into the XLA flags the installed jaxlib accepts on top of ``base`` (the
    XLA_FLAGS already set) and those it rejects. One probe when all are fine, else one per flag.

    ``probe(flags) -> bool`` defaults to starting JAX in a subprocess with ``XLA_FLAGS=flags``.

    Example::

        >>> accepted_xla_flags("", ["--xla_a=1", "--xla_b=2"], probe=lambda flags: "xla_b" not in flags)
        (['--xla_a=1'], ['--xla_b=2'])
    """
    probe = probe or _probe_xla_flags
    if not candidates or probe(_join_flags(base, *candidates)):
        return list(candidates), []
    kept = [flag for flag in candidates if probe(_join_flags(base, flag))]
    if not kept and not probe(base):
        raise SystemExit(f"XLA_FLAGS={base!r} from the environment is rejected by this jaxlib "
                         f"({XLA_FLAG_PROBE!r} fails); fix or unset it")
    return kept, [flag for flag in candidates if flag not in kept]


def apply_environment(suite: str, threads: int | None, profile: bool = False) -> list[str]:
    """Flags and environment of a suite; must run before JAX initialises its backend. For the gpu
    suite, flags the installed jaxlib rejects are dropped (and returned). ``profile`` on the CPU
    suites adds the flag without which XLA:CPU traces no ops."""
    flags, env = {"gpu": (GPU_XLA_FLAGS, GPU_ENV), "smoke": (SMOKE_XLA_FLAGS, {})}.get(suite, ({}, {}))
    if profile and suite != "gpu":
        flags = {**flags, **CPU_PROFILE_XLA_FLAGS}
    for name, (value, _) in env.items():
        os.environ.setdefault(name, value)
    present = os.environ.get("XLA_FLAGS", "")
    extra = [f"--{k}={v}" for k, (v, _) in flags.items() if f"--{k}=" not in present]
    dropped = []
    if suite == "gpu":
        extra, dropped = accepted_xla_flags(present, extra)
        if dropped:
            print(f"dropped XLA flags this jaxlib rejects: {' '.join(dropped)}", file=sys.stderr, flush=True)
    os.environ["XLA_FLAGS"] = _join_flags(present, *extra)
    if threads is not None:
        # XLA sizes its CPU thread pool from the affinity mask and the PyTorch peers take one thread
        # per core of the same mask (torch_peers.configure): both use exactly `threads` cores.
        cores = sorted(os.sched_getaffinity(0))
        if not 1 <= threads <= len(cores):
            raise SystemExit(f"--threads {threads}: this process may use {len(cores)} core(s)")
        os.sched_setaffinity(0, cores[:threads])
    return dropped


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    parse.__name__ = kind.__name__       # argparse names the type in its error message
    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jaxtune bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--suite", choices=SUITES, default="gpu", help="which cases (default: gpu)")
    group.add_argument("--smoke", dest="suite", action="store_const", const="smoke", help="tiny configs on CPU")
    group.add_argument("--cpu", dest="suite", action="store_const", const="cpu",
                       help="real all-MiniLM-L6-v2 (bs 16, seq 64) against PyTorch CPU")
    p.add_argument("--name", default=None,
                   help="stem of the output files and RESULTS.md section (default: the suite name)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: benchmarks/results)")
    p.add_argument("--results-md", type=Path, default=None,
                   help="RESULTS.md whose suite section is replaced (default: benchmarks/RESULTS.md for "
                        "the gpu/cpu suites, none for smoke); 'none' to skip")
    p.add_argument("--cases", default=None, help="comma-separated case names (default: all of the suite)")
    p.add_argument("--modes", default=",".join(ALL_MODES), help=f"comma-separated subset of {','.join(ALL_MODES)}")
    p.add_argument("--no-peers", action="store_true", help="skip the PyTorch peers")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG chart")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per contestant")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per contestant")
    p.add_argument("--steps-per-round", type=int, default=None, help="steps per timed round")
    p.add_argument("--compile-workers", type=_positive(int), default=None,
                   help="jaxtune compilations of a case at a time after the full mode's (default: 4 for gpu, "
                        "1 for cpu and smoke)")
    p.add_argument("--attention", choices=("auto", "xla", "cudnn"), default=None,
                   help="attention_implementation of the BERT/T5 cases (default: the models' 'auto')")
    p.add_argument("--profile-steps", type=int, default=None,
                   help="after timing, profile this many steps of each case's full mode and log the busiest ops "
                        "(also stored as the record's 'profile'); default 0")
    p.add_argument("--time-budget-s", type=_positive(float), default=None,
                   help="skip the remaining cases once elapsed time + a case's estimate would exceed this")
    p.add_argument("--threads", type=int, default=None,
                   help="pin the process to this many cores (XLA's pool and PyTorch's threads follow)")
    p.add_argument("--allow-cpu", action="store_true", help="run the gpu suite even without a GPU")
    return p.parse_args(argv)


def _options(args: argparse.Namespace, modes: tuple[str, ...]) -> Options:
    base = SUITE_OPTIONS[args.suite]
    given = {k: getattr(args, k) for k in ("warmup", "rounds", "steps_per_round", "compile_workers", "profile_steps")}
    return dataclasses.replace(base, peers=not args.no_peers, modes=modes,
                               **{k: v for k, v in given.items() if v is not None})


def _print_record(r: dict) -> None:
    print(f"  {r['framework']:8s} {r['variant']:8s} {r['mode']:17s} {r['examples_per_s']:9.1f} ex/s "
          f"{r['step_time_s'] * 1e3:8.1f} ms  compile {_compile_cell(r)} s  "
          f"compiles {r['compilations']} (+{r['extra_compilations']}{_recompiled(r)})", flush=True)


def _run_cases(cases: Sequence[Case], options: Options, budget: TimeBudget, estimates: dict[str, float], *,
               env: dict, out: Path, name: str, peak: float, peers: Any,
               peer_device: str | None) -> tuple[list[dict], str, list[str]]:
    """Runs the cases that fit the budget, writing each to the outputs as it finishes. A case that
    raises is logged with its traceback and listed as failed; the run goes on with the next case.
    Returns the records, a markdown note on the cases skipped or failed, and the failed names."""
    records, notes, failed = [], [], []
    for i, case in enumerate(cases):
        expected = budget.estimate(estimates[case.name])
        if not budget.fits(estimates[case.name]):
            skipped = ", ".join(c.name for c in cases[i:])
            why = (f"time budget {budget.limit_s:g} s: {budget.elapsed():.0f} s elapsed + ~{expected:.0f} s "
                   f"estimated for {case.name}")
            notes.append(f"**Not run** ({why}): {skipped}.")
            print(f"skipping {len(cases) - i} case(s) ({why}): {skipped}", flush=True)
            break
        print(f"case {case.name} (estimated {expected:.0f} s)", flush=True)
        case_start = budget.elapsed()
        try:
            case_records = run_case(case, options, peak_flops=peak, peers_module=peers, peer_device=peer_device,
                                    log=lambda s: print(s, flush=True))
        except Exception as err:      # one broken case must not cost the others of a one-shot run
            print(f"case {case.name} FAILED after {budget.elapsed() - case_start:.0f} s:\n"
                  f"{traceback.format_exc(limit=-FAILURE_TRACEBACK_FRAMES)}", flush=True)
            failed.append(case.name)
            notes.append(f"**Failed**: {case.name} ({_first_line(err)}).")
            del err
            gc.collect()
            jax.clear_caches()
            continue
        for r in case_records:
            _print_record(r)
        records += case_records
        took = budget.elapsed() - case_start
        budget.finished(estimates[case.name], took)
        append_case_outputs(case_records, records, env, out, env["suite"], name, [c.name for c in cases[i + 1:]])
        print(f"case {case.name} done in {took:.0f} s (estimated {expected:.0f} s); elapsed {budget.elapsed():.0f} s",
              flush=True)
    return records, "\n\n".join(notes), failed


def _first_line(err: BaseException, limit: int = 300) -> str:
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0][:limit]}" if lines else type(err).__name__


def cudnn_attention_preflight() -> str:
    """Why cuDNN attention cannot train here, or '' when it can: a tiny bf16 BERT step built with
    ``attention_implementation="cudnn"`` must compile to a cuDNN attention call and give a finite
    loss. Seconds on a GPU; the gpu suite runs it so that a cuDNN problem costs one check rather
    than every BERT/T5 case.

    Example::

        problem = cudnn_attention_preflight()      # "" on a working NVIDIA GPU
    """
    try:
        case = with_attention(suite_cases("smoke")[0], "cudnn")
        model = build_model(case, jnp.bfloat16)
        step = JaxContestant(case, model, "full", make_batch(case, model.config.vocab_size), jnp.bfloat16)
        step.prepare()
        step.compile()
        if attention_kernel(step.compiled, case.family) != "cudnn":
            return "the compiled step calls no cuDNN attention"
        _, metrics = step.compiled(step.state, step.batch)
        if not all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree_util.tree_leaves(metrics)):
            return "the step's metrics are not finite"
    except Exception as err:      # any failure means: do not rely on cuDNN attention in this run
        return _first_line(err)
    return ""


def choose_attention(requested: str | None, suite: str,
                     preflight: Callable[[], str] = cudnn_attention_preflight) -> tuple[str | None, str]:
    """The attention implementation for a run's BERT/T5 cases, and a note when it differs from the
    request: on the gpu suite with ``auto`` (or nothing) requested, a failed
    :func:`cudnn_attention_preflight` switches them to XLA attention.

    Example::

        >>> choose_attention(None, "gpu", preflight=lambda: "cuDNN is not detected")
        ('xla', 'cuDNN attention failed its preflight (cuDNN is not detected); the BERT/T5 cases use XLA attention.')
    """
    if suite != "gpu" or requested not in (None, "auto"):
        return requested, ""
    problem = preflight()
    if not problem:
        return requested, ""
    return "xla", f"cuDNN attention failed its preflight ({problem}); the BERT/T5 cases use XLA attention."


def with_attention(case: Case, implementation: str | None) -> Case:
    """``case`` with its transformer config's ``attention_implementation`` set (``None``: as is).

    Example::

        >>> with_attention(suite_cases("smoke")[0], "xla").config.attention_implementation
        'xla'
    """
    if implementation is None or case.config is None or not hasattr(case.config, "attention_implementation"):
        return case
    return dataclasses.replace(case, config=dataclasses.replace(case.config, attention_implementation=implementation))


def main(argv: Sequence[str] | None = None) -> int:
    """``jaxtune bench``: runs a suite and writes its results. Returns the exit status.

    Each finished case is appended to ``<name>.jsonl`` (and ``<name>.md`` rewritten) at once, so a
    run killed at a time limit keeps its finished cases; with ``--time-budget-s`` the cases that
    would not fit are skipped and listed as such.

    Example::

        jaxtune.bench.main(["--smoke", "--out", "/tmp/bench", "--results-md", "none"])
    """
    args = parse_args(argv)
    budget = TimeBudget(args.time_budget_s)
    repo = Path(__file__).resolve().parents[1]
    # before the first JAX computation initialises the backend
    dropped = apply_environment(args.suite, args.threads, profile=bool(args.profile_steps))
    if args.suite == "gpu" and jax.default_backend() != "gpu" and not args.allow_cpu:
        print(f"the gpu suite needs a GPU (JAX backend is {jax.default_backend()!r}); run --cpu or --smoke, "
              "or pass --allow-cpu", file=sys.stderr)
        return 2
    modes = tuple(m for m in args.modes.split(",") if m)
    unknown = [m for m in modes if m not in ALL_MODES]
    if unknown:
        print(f"unknown mode(s) {unknown}; choose from {ALL_MODES}", file=sys.stderr)
        return 2
    options = _options(args, modes)
    cases = suite_cases(args.suite)
    if args.cases:
        wanted = args.cases.split(",")
        missing = [w for w in wanted if w not in {c.name for c in cases}]
        if missing:
            print(f"unknown case(s) {missing} in suite {args.suite}; available: {[c.name for c in cases]}",
                  file=sys.stderr)
            return 2
        cases = [c for c in cases if c.name in wanted]
    attention, attention_note = choose_attention(args.attention, args.suite)
    if attention_note:
        print(attention_note, file=sys.stderr, flush=True)
    cases = [with_attention(c, attention) for c in cases]

    peers, reason, peer_device = None, "disabled with --no-peers", None
    if options.peers:
        peers, reason = _load_torch_peers()
        if peers is not None:
            peer_device, reason = peers.peer_device(jax.default_backend())
    peak, peak_dtype = matmul_peak_flops()
    if peers is not None and peer_device is not None:
        peers.configure(peer_device)
    env = {**environment(peak, peak_dtype, args.suite, peer_device, reason, dropped),
           "attention": attention or "auto", "attention_note": attention_note}
    name = args.name or args.suite
    out = args.out or repo / "benchmarks" / "results"
    start_outputs(env, out, args.suite, name, [c.name for c in cases])
    with_peers = peer_device is not None
    estimates = {c.name: estimate_case_s(c, options, with_peers) for c in cases}
    print(f"suite {args.suite} on {env['device']}: matmul peak {peak / 1e12:.3f} TFLOP/s ({peak_dtype}); "
          f"peers: {peer_device or reason}", flush=True)
    print(f"plan: {len(cases)} case(s), estimated {sum(estimates.values()):.0f} s (conservative) with warmup "
          f"{options.warmup}, {options.rounds} rounds x {options.steps_per_round} steps, "
          f"{options.compile_workers} compile worker(s); time budget "
          f"{'none' if budget.limit_s is None else f'{budget.limit_s:g} s'}; {budget.elapsed():.0f} s elapsed",
          flush=True)
    records, note, failed = _run_cases(cases, options, budget, estimates, env=env, out=out, name=name, peak=peak,
                                       peers=peers, peer_device=peer_device)
    if args.results_md is not None:
        results_md = None if str(args.results_md) == "none" else args.results_md
    else:
        results_md = None if args.suite == "smoke" else repo / "benchmarks" / "RESULTS.md"
    paths = write_outputs(records, env, out, args.suite, results_md, make_plot=not args.no_plot, name=name,
                          note=note)
    print(targets_table(check_targets(records, args.suite)))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if failed:
        print(f"{len(failed)} case(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
