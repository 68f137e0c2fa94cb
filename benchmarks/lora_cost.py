"""What LoRA costs per step: LoRA (r=8 on query, value + head) vs full fine-tuning vs a frozen backbone.

Usage::

    python benchmarks/lora_cost.py            # all-MiniLM-L6-v2, batch 16, sequence 64, on this machine
    python benchmarks/lora_cost.py --smoke    # a tiny random BERT, seconds
    python benchmarks/lora_cost.py --rounds 7 --steps-per-round 5 --out benchmarks/results

Per strategy it reports the median step time over timed rounds (after one warm-up round), the
compile time, the optimizer-state bytes, the trainable parameter count, XLA's peak memory
estimate and XLA's FLOP count of the compiled step, and writes ``<out>/<name>.jsonl`` and ``<out>/<name>.md`` (date, machine and settings in
the markdown). All three strategies use adamw (lr 2e-5, weight decay 0.01) through
``jt.make_optimizer`` and a structural step (``trainable=`` the rules' mask), so they differ only in
what trains: everything; the classifier; LoRA factors on every query/value kernel plus the classifier.
Time steps on a quiet machine: other processes on the cores make the step times meaningless.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

# Benchmark the checkout this script lives in, whichever jaxtune is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import jaxtune as jt  # noqa: E402
from jaxtune import bench  # noqa: E402

RANK, ALPHA = 8, 16
QV = r".*attention/self/(query|value)/kernel"


def strategies(head: str) -> dict[str, list]:
    """Rule tables of the three strategies compared, by name."""
    return {
        "full": [(r".*", jt.settings(name="all"))],
        "frozen_backbone": [(head, jt.settings(name="head")), (r".*", jt.freeze("backbone"))],
        f"lora_r{RANK}_qv": [(QV, jt.lora(rank=RANK, alpha=ALPHA, name="lora")), (head, jt.settings(name="head")),
                             (r".*", jt.freeze("backbone"))],
    }


def measure(model: bench.Model, rules: list, batch: dict, rounds: int, steps_per_round: int) -> dict:
    """Compile time, median step time, optimizer-state bytes and counts of one strategy."""
    params = jax.tree_util.tree_map(jnp.array, model.params)   # own copy: the state is donated
    if any(s.lora is not None for _, s in rules):
        params = jt.LoraParams(params, jt.init_lora(params, rules, jax.random.key(0)))
    tx = jt.make_optimizer(params, rules, optax.adamw, bench.LEARNING_RATE, weight_decay=bench.WEIGHT_DECAY)
    mask = jt.trainable_mask(params, rules)
    state = jt.TrainState.create(params, tx, model_state=model.model_state)
    step = jt.make_train_step(model.loss_fn, tx, trainable=mask, compute_dtype=jnp.float32)
    batch = jax.device_put(batch)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    state, _ = bench.run_steps(step, state, batch, steps_per_round)   # warm-up round
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        state, _ = bench.run_steps(step, state, batch, steps_per_round)
        times.append(time.perf_counter() - start)
    leaves, flags = jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask)
    return {"step_s": bench.median_step_time(times, steps_per_round), "compile_s": compile_s,
            "optimizer_state_bytes": bench.tree_bytes(state.opt_state),
            "trainable_params": int(sum(x.size for x, t in zip(leaves, flags) if t)),
            "params": int(sum(x.size for x in leaves)), "peak_memory_bytes": bench.xla_peak_bytes(compiled),
            "step_flops": bench.xla_cost(compiled)}


def markdown(rows: list[dict], header: str) -> str:
    """The results as a markdown table, step time and state relative to full fine-tuning."""
    full = next(r for r in rows if r["strategy"] == "full")
    lines = [header, "", "| strategy | step ms | vs full | compile s | optimizer state MiB | vs full | trainable params "
             "| peak MiB | GFLOP/step (XLA) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        peak = "n/a" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.1f}"
        flops = "n/a" if r.get("step_flops") is None else f"{r['step_flops'] / 1e9:.2f}"
        lines.append(f"| {r['strategy']} | {1e3 * r['step_s']:.1f} | {r['step_s'] / full['step_s']:.2f}x | "
                     f"{r['compile_s']:.1f} | {r['optimizer_state_bytes'] / 2**20:.2f} | "
                     f"{r['optimizer_state_bytes'] / full['optimizer_state_bytes']:.4f}x | "
                     f"{r['trainable_params']:,} of {r['params']:,} | {peak} | {flops} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny random BERT instead of all-MiniLM-L6-v2")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median; default 5)")
    parser.add_argument("--steps-per-round", type=int, default=5, help="steps per timed round (default 5)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output directory")
    parser.add_argument("--name", default=None, help="output file stem (default lora-cost-cpu / lora-cost-smoke)")
    args = parser.parse_args(argv)
    case = bench.suite_cases("smoke" if args.smoke else "cpu")[0]
    model = bench.build_model(case, jnp.float32)
    batch = bench.make_batch(case, model.config.vocab_size)
    rows = []
    for name, rules in strategies(model.head_regex).items():
        row = {"strategy": name, "case": case.name, **measure(model, rules, batch, args.rounds, args.steps_per_round)}
        print(json.dumps(row))
        rows.append(row)
    name = args.name or f"lora-cost-{'smoke' if args.smoke else 'cpu'}"
    header = (f"## LoRA cost: {case.name}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
              f"{platform.node()} ({jax.default_backend()}, {jax.device_count()} device(s), "
              f"{args.rounds} rounds x {args.steps_per_round} steps, median; LoRA r={RANK} alpha={ALPHA} on query, "
              "value + classifier; seed 0)")
    table = markdown(rows, header)
    bench.write_rows_and_table(args.out, name, rows, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
