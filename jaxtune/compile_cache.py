"""The runner's compile settings (persistent compilation cache, GPU threefry lowering), and what its
first training step cost to compile.

The runner (:func:`jaxtune.finetune`, :func:`jaxtune.finetune_members`, sweeps, ``jaxtune finetune``)
turns on JAX's persistent compilation cache before it builds anything, from ``train.compilation_cache``:

    true (default)   $JAX_COMPILATION_CACHE_DIR if set, else the directory JAX was given, else
                     ~/.cache/jaxtune/jit (:data:`DEFAULT_DIR`)
    "<dir>"          that directory
    false            JAX is left as it is (no persistent cache unless JAX was configured for one)

Importing jaxtune changes nothing: library users keep JAX's defaults. Programs that compile in under
:data:`MIN_COMPILE_SECONDS` are not written (JAX's own default is 1 s;
``$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` or ``jax.config`` set beforehand win). The cache
never changes what a step computes, so the key is not part of the run's fingerprint. In a
multi-process run every process reads the cache and only process 0 writes it (JAX's rule).

The runner also lowers random bits on GPU to jaxlib's threefry kernel, from
``train.gpu_threefry_kernel`` (default true; the same bits, faster compiles:
:func:`jaxtune.use_gpu_threefry_kernel`). :func:`use_run_compile_settings` applies both.

The runner reports its first training step's compile in ``result.json`` (``compile``) and prints it:
a second identical run shows ``from_cache: true`` and the (shorter) time. Example::

    use_compilation_cache(True)              # "~/.cache/jaxtune/jit" (expanded)
    step = FirstCallWatch(train_step)
    state, metrics = step(state, batch, 0)
    step.report                              # {"seconds": 0.4, "programs": 1, "cache_hits": 1, ...}
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

import jax
from jax.experimental.compilation_cache import compilation_cache as _jax_cache

from jaxtune.errors import UserError
from jaxtune.xla_options import use_gpu_threefry_kernel

DEFAULT_DIR = os.path.join("~", ".cache", "jaxtune", "jit")
ENV_DIR = "JAX_COMPILATION_CACHE_DIR"
ENV_MIN_SECONDS = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
MIN_COMPILE_SECONDS = 0.5
"""Programs compiling faster than this are not written to the cache: reading a small entry back saves
less than the write and the directory entry cost (JAX's own default threshold is 1 s)."""
_JAX_DEFAULT_MIN_SECONDS = 1.0

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # every compile, served from the cache or not
_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def cache_dir(setting: bool | str) -> str | None:
    """The directory ``train.compilation_cache`` names (user-expanded), or None for ``false``.

    Example::

        >>> cache_dir(False) is None, cache_dir("/tmp/jit")
        (True, '/tmp/jit')
    """
    if setting is False:
        return None
    if setting is True:
        configured = os.environ.get(ENV_DIR) or jax.config.jax_compilation_cache_dir
        return os.path.expanduser(configured or DEFAULT_DIR)
    if isinstance(setting, str) and setting.strip():
        return os.path.expanduser(setting)
    raise UserError(f"train.compilation_cache must be true, false or a directory, got {setting!r} (e.g. "
                    f"train.compilation_cache={DEFAULT_DIR}, or false for no persistent cache)")


def use_compilation_cache(setting: bool | str) -> str | None:
    """Points JAX's persistent compilation cache at :func:`cache_dir` of ``setting`` (creating it) and
    lowers the write threshold to :data:`MIN_COMPILE_SECONDS` unless it was set; returns the directory,
    or None (``false``: JAX untouched). Call it before the first compile you want cached.

    Example::

        use_compilation_cache("~/.cache/jaxtune/jit")   # later compiles read and write there
    """
    directory = cache_dir(setting)
    if directory is None:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise UserError(f"train.compilation_cache: cannot create {directory} ({e.strerror}); set another "
                        "directory, or train.compilation_cache=false") from e
    current = jax.config.jax_compilation_cache_dir
    if current != directory:
        _jax_cache.set_cache_dir(directory)
        if current is not None:  # a cache opened at the old directory would keep serving
            _jax_cache.reset_cache()
    if ENV_MIN_SECONDS not in os.environ and \
            jax.config.jax_persistent_cache_min_compile_time_secs == _JAX_DEFAULT_MIN_SECONDS:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return directory


def use_run_compile_settings(train: Any) -> str | None:
    """A run's compile settings from its ``train`` section: the persistent cache
    (``compilation_cache``, :func:`use_compilation_cache`) and the GPU threefry lowering
    (``gpu_threefry_kernel``, :func:`jaxtune.use_gpu_threefry_kernel`); returns the cache directory.

    Example::

        use_run_compile_settings(jt.TrainConfig(compilation_cache=False))   # kernel lowering on, no cache
    """
    use_gpu_threefry_kernel(train.gpu_threefry_kernel)
    return use_compilation_cache(train.compilation_cache)


class _Counts:
    """Compiles, persistent-cache hits and compile seconds seen while it is active."""

    def __init__(self):
        self.programs, self.cache_hits, self.seconds = 0, 0, 0.0


_active: list[_Counts] = []
_listening = threading.Lock()
_listeners_registered = False


def _on_event(event: str, **_: Any) -> None:
    if event == _HIT_EVENT:
        for counts in _active:
            counts.cache_hits += 1


def _on_duration(event: str, duration: float, **_: Any) -> None:
    if event == _COMPILE_EVENT:
        for counts in _active:
            counts.programs += 1
            counts.seconds += duration


def _listen() -> None:
    global _listeners_registered
    with _listening:
        if not _listeners_registered:
            jax.monitoring.register_event_listener(_on_event)
            jax.monitoring.register_event_duration_secs_listener(_on_duration)
            _listeners_registered = True


class FirstCallWatch:
    """Wraps a jitted step: its first call records what compiling cost in :attr:`report`, later calls
    pass straight through.

    ``report`` (None before the first call): ``seconds`` (XLA compile time, a cache read included),
    ``programs`` compiled, ``cache_hits`` among them, ``from_cache`` (every program came from the
    persistent cache), ``cache_dir`` (JAX's persistent cache directory, or None), and
    ``first_call_seconds`` (tracing, compiling and dispatching the first call).

    Example::

        step = FirstCallWatch(jax.jit(lambda x: x + 1))
        step(1.0); step.report["programs"]      # 1
    """

    def __init__(self, fn: Callable):
        self.fn, self.report = fn, None

    def __call__(self, *args, **kwargs):
        if self.report is not None:
            return self.fn(*args, **kwargs)
        _listen()
        counts, start = _Counts(), time.perf_counter()
        _active.append(counts)
        try:
            out = self.fn(*args, **kwargs)
        finally:
            _active.remove(counts)
        self.report = {"seconds": round(counts.seconds, 4), "programs": counts.programs,
                       "cache_hits": counts.cache_hits,
                       "from_cache": counts.programs > 0 and counts.cache_hits == counts.programs,
                       "cache_dir": jax.config.jax_compilation_cache_dir,
                       "first_call_seconds": round(time.perf_counter() - start, 4)}
        return out


def describe(report: dict | None) -> str:
    """One line for a :class:`FirstCallWatch` report.

    Example::

        >>> describe({"seconds": 0.25, "programs": 1, "cache_hits": 1, "from_cache": True, "cache_dir": "/c"})
        'first step compiled in 0.25 s (1 program, from the persistent cache /c)'
    """
    if report is None:
        return "no step compiled"
    programs = f"{report['programs']} program{'s' if report['programs'] != 1 else ''}"
    if report["cache_dir"] is None:
        where = "no persistent cache"
    elif report["from_cache"]:
        where = f"from the persistent cache {report['cache_dir']}"
    else:
        where = f"{report['cache_hits']} from the persistent cache {report['cache_dir']}"
    return f"first step compiled in {report['seconds']:.2f} s ({programs}, {where})"
