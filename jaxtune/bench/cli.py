"""Step-throughput benchmarks: jaxtune fine-tuning steps against their PyTorch peers.

``jaxtune bench`` (and ``python -m jaxtune.bench``, ``benchmarks/step_throughput.py``): parses the
options, sets the suite's XLA flags before JAX starts its backend, runs the cases that fit the time
budget and writes the results.

Example::

    python -m jaxtune.bench --smoke --out /tmp/bench --results-md none
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from jaxtune.bench.cases import ALL_MODES, SUITES, suite_cases, with_attention, with_members
from jaxtune.bench.harness import (
    SUITE_OPTIONS,
    Options,
    TimeBudget,
    choose_attention,
    environment,
    estimate_case_s,
    run_cases,
)
from jaxtune.bench.measure import matmul_peak_flops
from jaxtune.bench.peers import REPO, load_torch_peers
from jaxtune.bench.report import check_targets, start_outputs, targets_table, write_outputs
from jaxtune.bench.xla_flags import apply_environment


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
    p.add_argument("--members-n", type=_positive(int), default=None,
                   help="N of the member cases: N members in one step against N sequential runs (default: each "
                        "case's own: 8 on the gpu suite, 4 on cpu, 2 on smoke)")
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
    cases = [with_members(with_attention(c, attention), args.members_n) for c in cases]

    peers, reason, peer_device = None, "disabled with --no-peers", None
    if options.peers:
        peers, reason = load_torch_peers()
        if peers is not None:
            peer_device, reason = peers.peer_device(jax.default_backend())
    peak, peak_dtype = matmul_peak_flops()
    if peers is not None and peer_device is not None:
        peers.configure(peer_device)
    env = {**environment(peak, peak_dtype, args.suite, peer_device, reason, dropped),
           "attention": attention or "auto", "attention_note": attention_note}
    name = args.name or args.suite
    out = args.out or REPO / "benchmarks" / "results"
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
    records, note, failed = run_cases(cases, options, budget, estimates, env=env, out=out, name=name, peak=peak,
                                       peers=peers, peer_device=peer_device)
    if args.results_md is not None:
        results_md = None if str(args.results_md) == "none" else args.results_md
    else:
        results_md = None if args.suite == "smoke" else REPO / "benchmarks" / "RESULTS.md"
    paths = write_outputs(records, env, out, args.suite, results_md, make_plot=not args.no_plot, name=name,
                          note=note)
    print(targets_table(check_targets(records, args.suite)))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if failed:
        print(f"{len(failed)} case(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
