"""XLA flags and environment variables of a suite, each with its reason, and the check that the
installed jaxlib accepts them (XLA aborts the process on a flag it does not know).

Example::

    dropped = apply_environment("gpu", threads=None)    # before JAX initialises its backend
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence

from jaxtune.xla_options import use_gpu_threefry_kernel

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
# CPU compile time of its tiny steps about 3x, and XLA:CPU's older fusion emitter compiles them in about
# a third less CPU time again (tiny BERT runtime-unfreezing step: 5.6 -> 3.6 CPU s, model init 2.3 -> 1.8).
SMOKE_XLA_FLAGS: dict[str, tuple[str, str]] = {
    "xla_backend_optimization_level": ("0", "no LLVM optimisation passes: 3x faster CPU compiles"),
    "xla_cpu_use_fusion_emitters": ("false", "the older fusion emitter: a third less CPU compile time"),
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
# The gpu suite draws random bits as the runner does (train.gpu_threefry_kernel): from jaxlib's threefry
# kernel. JAX reads this variable when it is imported, so setting it here would come too late; where it
# is set (e.g. =false, to compare with JAX's default lowering) it wins.
THREEFRY_KERNEL_ENV = "JAX_THREEFRY_GPU_KERNEL_LOWERING"


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
    suite, flags the installed jaxlib rejects are dropped (and returned), and random bits come from
    the GPU threefry kernel unless :data:`THREEFRY_KERNEL_ENV` is set. ``profile`` on the CPU suites
    adds the flag without which XLA:CPU traces no ops."""
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
        if THREEFRY_KERNEL_ENV not in os.environ:
            use_gpu_threefry_kernel(True)
    os.environ["XLA_FLAGS"] = _join_flags(present, *extra)
    if threads is not None:
        # XLA sizes its CPU thread pool from the affinity mask and the PyTorch peers take one thread
        # per core of the same mask (torch_peers.configure): both use exactly `threads` cores.
        cores = sorted(os.sched_getaffinity(0))
        if not 1 <= threads <= len(cores):
            raise SystemExit(f"--threads {threads}: this process may use {len(cores)} core(s)")
        os.sched_setaffinity(0, cores[:threads])
    return dropped

