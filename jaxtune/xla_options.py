"""Per-step XLA compiler options (the memory-optimised scheduler for jaxtune's steps on CPU) and
the GPU lowering of JAX's threefry random bits (:func:`use_gpu_threefry_kernel`).

XLA:CPU allocates one temporary buffer per execution of a program and frees it at the end, so a
training step maps fresh pages for all its temporaries on every call and the kernel zeroes them on
first touch (page faults). Its default scheduler orders ops for concurrency, which keeps more
temporaries alive at once. On the MiniLM fine-tuning step (bs 16, seq 64, 2 cores) the
memory-optimised scheduler cuts that buffer from 473 to 344 MiB, the page faults per step from
122k to 89k, and the step time by about 4.5% (benchmarks/RESULTS.md, "CPU step profile"). The
scheduling changes neither the ops nor their numerics: results are bit-identical.

The options go to ``jax.jit(..., compiler_options=...)`` of the steps jaxtune builds
(:func:`jaxtune.make_train_step`, :func:`jaxtune.make_eval_step`, member steps), only when the
step compiles for CPU, and only when the installed jaxlib knows the option. Pass
``compiler_options=None`` to those builders for XLA's defaults, or a dict of your own.

Example::

    >>> step_compiler_options("gpu") is None
    True
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

CPU_STEP_OPTIONS: dict[str, Any] = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
AUTO = "auto"


@functools.cache
def _cpu_options_accepted() -> bool:
    """Whether this jaxlib compiles a CPU program with :data:`CPU_STEP_OPTIONS` (an unknown option
    name or value is a compile error)."""
    try:
        jax.jit(lambda x: x + 1).lower(jnp.zeros((), jnp.float32)).compile(dict(CPU_STEP_OPTIONS))
    except Exception:   # an older/newer XLA without this option: steps compile with its defaults
        return False
    return True


def step_compiler_options(platform: str | None = None) -> dict[str, Any] | None:
    """The compiler options jaxtune gives its steps on ``platform`` (default: JAX's default
    backend): :data:`CPU_STEP_OPTIONS` on CPU where jaxlib accepts them, else None.

    Example::

        step = jax.jit(step_fn, compiler_options=jt.step_compiler_options())
    """
    platform = platform or jax.default_backend()
    if platform != "cpu" or not _cpu_options_accepted():
        return None
    return dict(CPU_STEP_OPTIONS)


def resolve_compiler_options(options: Any, mesh: Any = None) -> dict[str, Any] | None:
    """A step builder's ``compiler_options`` argument made concrete: ``"auto"`` gives
    :func:`step_compiler_options` for the mesh's platform (or the default backend), None or a
    dict are used as given.

    Example::

        >>> resolve_compiler_options({"xla_cpu_enable_fast_math": False})
        {'xla_cpu_enable_fast_math': False}
    """
    if isinstance(options, str):
        if options != AUTO:
            raise ValueError(f"compiler_options={options!r}: use 'auto', None (XLA's defaults) or a dict of "
                             "XLA options, e.g. {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}")
        platform = mesh.devices.flat[0].platform if mesh is not None else None
        return step_compiler_options(platform)
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"compiler_options must be 'auto', None or a dict, got {type(options).__name__}")
    return options


THREEFRY_GPU_KERNEL = "jax_threefry_gpu_kernel_lowering"


def use_gpu_threefry_kernel(enabled: bool = True) -> bool:
    """Lowers JAX's threefry random bits (dropout masks, random inits) on GPU to jaxlib's threefry
    kernel (``enabled``) or to XLA ops (JAX's default); returns the previous setting. Elsewhere it
    changes nothing. The kernel computes the same threefry2x32 hash of the same counters, so the
    bits, and with them dropout masks and whole runs, stay the same.

    Why: JAX's default GPU lowering unrolls the hash's 20 rounds into every program that draws random
    bits, and XLA:GPU compiles each draw as its own large fused kernel. On the H100 plan (deviceless,
    2 cores, bf16; benchmarks/RESULTS.md, "Random bits on the GPU plan") the kernel cuts T5-small's
    full step (s256, t64, bs64, dropout 0.1) from 14.3 to 8.1 s scanned and from 41.2 to 21.3 s
    unrolled, and BERT-base's (s128, bs128) from 5.5 to 4.4 s and from 17.1 to 11.3 s, for 0.5-2%
    more planned peak memory (the bits are a kernel's output instead of fused into their use). The
    runner turns it on (``train.gpu_threefry_kernel``, default true). It applies to programs traced
    after the call.

    Example::

        >>> previous = use_gpu_threefry_kernel(True)
        >>> _ = use_gpu_threefry_kernel(previous)     # back as it was
    """
    previous = bool(getattr(jax.config, THREEFRY_GPU_KERNEL))
    jax.config.update(THREEFRY_GPU_KERNEL, bool(enabled))
    return previous
