"""Measurements of compiled steps: step times, the matmul peak, XLA's FLOP and memory analyses,
the compilation counter and the attention kernel a step calls.

Example::

    >>> median_step_time([1.0, 3.0, 2.0], 2)
    1.0
"""
from __future__ import annotations

import functools
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxtune as jt
from jaxtune.bench.cases import Case


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


def median_call_seconds(call: Callable[[], Any], rounds: int) -> float:
    """Median wall-clock seconds of ``call()`` over ``rounds`` timed calls after one untimed warm-up
    call (compilation, caches). ``call`` must block until its work is done (``block_until_ready``).

    Example::

        seconds = median_call_seconds(lambda: step(x).block_until_ready(), rounds=10)
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    call()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


# A jaxtune step's FLOPs: XLA's cost analysis of the lowered, not yet optimised program. After
# XLA:GPU's passes, matrix products run as library calls and Triton fusions that the compiled
# program's analysis partly misses (one H200, BERT-base bs 128: 3.1 TFLOP/step counted there against
# 8.6 by PyTorch's counter and about 8.9 by 6·N·tokens); before them every dot is a plain HLO dot.
HLO_FLOPS_SOURCE = "xla_hlo_cost_analysis"


def xla_cost(program: Any, key: str = "flops") -> float | None:
    """``flops`` (or ``bytes accessed``) of a lowered or compiled XLA program from its cost
    analysis; None where the backend has none. Count FLOPs on the lowered program
    (:data:`HLO_FLOPS_SOURCE`), bytes on the compiled one.

    Example::

        lowered = jax.jit(f).lower(x)
        flops, bytes_accessed = xla_cost(lowered), xla_cost(lowered.compile(), "bytes accessed")
    """
    try:
        cost = program.cost_analysis()
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


