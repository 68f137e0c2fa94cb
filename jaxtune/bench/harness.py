"""The run of a suite: its timing protocol (:class:`Options`), the time budget that decides which
cases still fit, and :func:`run_case`, which builds every contestant of a case, compiles them and
times them in interleaved rounds.

Example::

    records = run_case(suite_cases("smoke")[0], SUITE_OPTIONS["smoke"], peak_flops=1e11)
"""
from __future__ import annotations

import dataclasses
import datetime
import gc
import math
import os
import platform
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.bench.cases import MEMBER_MODES, MODES, Case, make_batch, suite_cases, with_attention
from jaxtune.bench.contestants import JaxContestant, Model, build_model, compile_contestants
from jaxtune.bench.measure import attention_kernel, median_step_time, xla_compile_count
from jaxtune.bench.members import MemberContestant
from jaxtune.bench.report import append_case_outputs, record_line
from jaxtune.profiling import profile_step
from jaxtune.train import default_compute_dtype

PROFILE_TOP_OPS = 20
FAILURE_TRACEBACK_FRAMES = 12     # innermost frames of a failed case's traceback in the log


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
# that mean nothing) compiles two at a time, one per core of a 2-core machine.
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
    :class:`jaxtune.bench.members.MemberContestant`."""
    if mode in MEMBER_MODES:
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
            "round_step_times_s": [x / options.steps_per_round for x in t],
            "load_average_after": list(os.getloadavg()),
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
        "threefry_gpu_kernel": bool(jax.config.jax_threefry_gpu_kernel_lowering),
        "peer_device": peer_device, "peers_skipped_reason": peer_reason,
    }


def run_cases(cases: Sequence[Case], options: Options, budget: TimeBudget, estimates: dict[str, float], *,
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
            print(record_line(r), flush=True)
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


