"""Compile time of BERT's and T5's training step with their layers unrolled vs scanned (``scan_layers``), side by side.

Usage::

    python benchmarks/compile_time.py                     # all-MiniLM-L6-v2 (real weights), BERT-base and T5-small (random), CPU
    python benchmarks/compile_time.py --smoke             # a tiny random BERT and T5, seconds
    python benchmarks/compile_time.py --cases minilm-l6-s64-bs16 --rounds 7 --steps-per-round 3
    python benchmarks/compile_time.py --remat full        # add a scanned + remat layout

For every case, layout (``unrolled``, ``scanned``, and ``scanned-<remat>`` with ``--remat``) and
strategy it builds the model, a structural train step (adamw, lr 2e-5, weight decay 0.01, the family's
default rules, float32 compute on CPU, bfloat16 on a GPU; BERT classifies sequences, T5 is trained text to text with
``target`` label tokens) and reports, in one process:

* ``trace_s``: tracing and lowering to StableHLO; ``compile_s``: XLA's compilation of it (the
  persistent compilation cache is switched off, so each is a real compilation);
* ``step_s``: the median step time over ``--rounds`` timed rounds of ``--steps-per-round`` steps
  after one warm-up round;
* ``flops``: XLA's cost analysis of the compiled step. It counts a loop's body once, so for a
  scanned layout ``flops_all_layers`` also compiles the step with the scan unrolled
  (``scan_unroll`` = the layer count; not timed, skipped with ``--no-all-layers-flops``) to count
  every layer; the table shows that one.

The same comparison for XLA:GPU's plan (compile only, no device): ``python benchmarks/gpu_compile_check.py
--layouts unrolled,scanned`` (``jaxtune/bench/aot.py``).

Strategies: ``full`` (everything trains) and ``frozen-bottom`` (embeddings and the bottom half of
the layers frozen: ``jt.freeze_below``, for T5 the encoder's blocks; the scanned model runs the frozen
layers in a scan of their own, ``jt.with_frozen_layers``, so that they cost no weight gradient). It writes
``<out>/<name>.jsonl`` and ``<out>/<name>.md`` (date, machine and settings in the markdown). Time
on a quiet machine: other processes on the cores make both compile and step times meaningless.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Benchmark the checkout this script lives in, whichever jaxtune is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxtune as jt  # noqa: E402
from jaxtune.bench import write_rows_and_table  # noqa: E402
from jaxtune.models import bert, t5  # noqa: E402
from jaxtune.models.layer_scan import REMAT_POLICIES  # noqa: E402
from jaxtune.tasks import get_task  # noqa: E402

STRATEGIES = ("full", "frozen-bottom")
SMOKE_CASES = ("bert-tiny-s16-bs4", "t5-tiny-s16-t8-bs4")
DEFAULT_CASES = ("minilm-l6-s64-bs16", "bert-base-s128-bs8", "t5-small-s128-t32-bs8")


@dataclasses.dataclass(frozen=True)
class Case:
    """One model at fixed shapes: ``config`` (random weights) or ``pretrained`` (returns a checkpoint
    directory; called only when the case runs, so the other cases run where its package is missing);
    ``target``: a T5 case's label tokens per example."""

    name: str
    batch_size: int
    seq: int
    config: bert.BertConfig | t5.T5Config | None = None
    pretrained: Callable[[], Any] | None = None
    target: int = 0

    @property
    def family(self):
        """The family module (bert or t5) and the task its step trains."""
        return (t5, "text_to_text") if isinstance(self.config, t5.T5Config) else (bert, "sequence_classification")


def cases() -> dict[str, Case]:
    """The cases by name; :data:`SMOKE_CASES` are the smoke cases."""
    tiny = bert.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=64)
    tiny_t5 = t5.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=3, num_decoder_layers=3, num_heads=4,
                          relative_attention_num_buckets=8, relative_attention_max_distance=16)
    return {c.name: c for c in (
        Case("minilm-l6-s64-bs16", 16, 64, pretrained=jt.minilm_path),
        Case("bert-base-s128-bs8", 8, 128, config=bert.BertConfig()),
        Case("bert-base-s128-bs32", 32, 128, config=bert.BertConfig(attention_probs_dropout_prob=0.0)),
        Case("bert-tiny-s16-bs4", 4, 16, config=tiny),
        Case("t5-small-s128-t32-bs8", 8, 128, config=t5.T5Config(), target=32),   # t5-small's config.json
        Case("t5-small-s128-t32-bs32", 32, 128, config=t5.T5Config(), target=32),
        Case("t5-tiny-s16-t8-bs4", 4, 16, config=tiny_t5, target=8),
    )}


def num_layers(config) -> int:
    """The transformer layers of a BERT or T5 config (T5: encoder and decoder blocks)."""
    return config.num_hidden_layers if isinstance(config, bert.BertConfig) else config.num_layers + config.num_decoder_layers


def all_layers_unrolled(config):
    """``config`` with every scan unrolled (``scan_unroll`` = the longest stack)."""
    longest = config.num_hidden_layers if isinstance(config, bert.BertConfig) else max(config.num_layers,
                                                                                        config.num_decoder_layers)
    return dataclasses.replace(config, scan_unroll=longest)


def build(case: Case, layout: dict) -> tuple:
    """(model, params) of ``case`` with ``layout``'s config fields (``scan_layers``, ``remat``)."""
    family, task = case.family
    if case.pretrained is not None:
        model, variables = jt.from_pretrained(str(case.pretrained()), task=task, num_labels=2, **layout)
        return model, variables["params"]
    model = family.build(dataclasses.replace(case.config, **layout), task, **({"num_labels": 2} if family is bert else {}))
    shapes = jax.eval_shape(model.init, jax.random.key(0), *family.example_inputs(model.config))["params"]
    rng = np.random.default_rng(0)   # numpy draws: no init to compile, and the same numbers for every layout's shapes
    return model, jax.tree.map(lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape), s.dtype), shapes)


def make_batch(case: Case, vocab_size: int) -> dict:
    rng = np.random.default_rng(0)
    b, s = case.batch_size, case.seq
    if case.family[0] is t5:
        return {"input_ids": jnp.asarray(rng.integers(2, vocab_size, (b, s)), jnp.int32),
                "attention_mask": jnp.ones((b, s), jnp.int32),
                "labels": jnp.asarray(rng.integers(2, vocab_size, (b, case.target)), jnp.int32)}
    return {"input_ids": jnp.asarray(rng.integers(1, vocab_size, (b, s)), jnp.int32),
            "attention_mask": jnp.ones((b, s), jnp.int32), "token_type_ids": jnp.zeros((b, s), jnp.int32),
            "labels": jnp.asarray(rng.integers(0, 2, b), jnp.int32)}


def strategy_step(model, params, strategy: str):
    """(the model the loss runs, the structural trainable mask) of ``strategy``."""
    if strategy == "full":
        return model, None
    mask = jt.freeze_below(params, model.layer_ids, num_layers(model.config) // 2 + 1)
    return jt.with_frozen_layers(model, mask), mask


def train_step(model, params, strategy: str, compute_dtype):
    """(train state, jitted structural step, the model its loss runs) of ``strategy``."""
    run_model, mask = strategy_step(model, params, strategy)
    tx = jt.make_optimizer(params, model.default_rules(), optax.adamw, 2e-5, weight_decay=0.01,
                           layer_ids=model.layer_ids)   # a stacked leaf's layers may freeze one by one
    task = "text_to_text" if isinstance(model.config, t5.T5Config) else "sequence_classification"
    step = jt.make_train_step(get_task(task).loss_fn(run_model), tx, trainable=mask, compute_dtype=compute_dtype)
    return jt.TrainState.create(params, tx), step, run_model


def xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost).get("flops", float("nan")))


def measure(case: Case, layout_name: str, layout: dict, strategy: str, args) -> dict:
    """Trace, compile and (on this machine's CPU) step times of one case, layout and strategy."""
    model, params = build(case, layout)
    state, step, run_model = train_step(model, params, strategy, args.compute_dtype)
    batch = make_batch(case, model.config.vocab_size)
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    traced = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    record = {"case": case.name, "layout": layout_name, "strategy": strategy, "layers": num_layers(model.config),
              "frozen_layers": getattr(run_model, "frozen_layers", 0), "trace_s": traced - start,
              "compile_s": done - traced, "flops": xla_flops(compiled), "flops_all_layers": None, "step_s": None}
    if not model.config.scan_layers:
        record["flops_all_layers"] = record["flops"]
    elif args.all_layers_flops:
        unrolled = model.clone(config=all_layers_unrolled(model.config))
        state_u, step_u, _ = train_step(unrolled, params, strategy, args.compute_dtype)
        record["flops_all_layers"] = xla_flops(step_u.lower(state_u, batch).compile())
    state, _ = compiled(state, batch)                          # warm-up round
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(args.steps_per_round):
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    record["step_s"] = statistics.median(times) / args.steps_per_round
    return record


def markdown(rows: list[dict], header: str) -> str:
    """The records as a table, each scanned layout relative to the unrolled one of its case and strategy."""
    base = {(r["case"], r["strategy"]): r for r in rows if r["layout"] == "unrolled"}
    ratio = lambda a, b: "n/a" if not a or not b else f"{a / b:.2f}x"
    flops = lambda r: "n/a" if r["flops_all_layers"] is None else f"{r['flops_all_layers'] / 1e9:.3f}"
    lines = [header, "", "| case | strategy | layout | trace s | compile s | vs unrolled | step ms | vs unrolled "
             "| GFLOP/step | vs unrolled |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        u = base.get((r["case"], r["strategy"]), {})
        step = "n/a" if r["step_s"] is None else f"{1e3 * r['step_s']:.1f}"
        lines.append(f"| {r['case']} | {r['strategy']} | {r['layout']} | {r['trace_s']:.2f} | {r['compile_s']:.2f} | "
                     f"{ratio(r['compile_s'], u.get('compile_s'))} | {step} | {ratio(r['step_s'], u.get('step_s'))} | "
                     f"{flops(r)} | {ratio(r['flops_all_layers'], u.get('flops_all_layers'))} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the tiny random BERT and T5 only (seconds)")
    parser.add_argument("--cases", default=None, help=f"comma-separated case names of {sorted(cases())} "
                                                      f"(default: {','.join(DEFAULT_CASES)})")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma-separated, of {STRATEGIES}")
    parser.add_argument("--remat", default=None, choices=[r for r in REMAT_POLICIES if r != "none"],
                        help="also a scanned layout with this remat option")
    parser.add_argument("--no-all-layers-flops", dest="all_layers_flops", action="store_false",
                        help="skip the extra (untimed) compilation that counts every scanned layer's FLOPs")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median; default 5)")
    parser.add_argument("--steps-per-round", type=int, default=2, help="steps per timed round (default 2)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output directory")
    parser.add_argument("--name", default=None, help="output file stem (default compile-time-cpu / -smoke)")
    args = parser.parse_args(argv)
    names = list(SMOKE_CASES) if args.smoke else (args.cases or ",".join(DEFAULT_CASES)).split(",")
    unknown = sorted(set(names) - set(cases())) + sorted(set(args.strategies.split(",")) - set(STRATEGIES))
    if unknown:
        parser.error(f"unknown case(s) or strateg(ies) {unknown}; cases: {sorted(cases())}, strategies: {STRATEGIES}")
    args.case_names, args.strategy_names = names, args.strategies.split(",")
    args.compute_dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16   # bf16 on accelerators
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    jax.config.update("jax_enable_compilation_cache", False)     # every compilation is measured, none read back
    layouts = {"unrolled": {"scan_layers": False}, "scanned": {"scan_layers": True}}
    if args.remat:
        layouts[f"scanned-{args.remat}"] = {"scan_layers": True, "remat": args.remat}
    measure(cases()["bert-tiny-s16-bs4"], "warm-up", {}, "full", args)   # JAX's own first-compile costs
    rows = []
    for name in args.case_names:
        for strategy in args.strategy_names:
            for layout_name, layout in layouts.items():
                row = measure(cases()[name], layout_name, layout, strategy, args)
                print(json.dumps(row), flush=True)
                rows.append(row)
    stem = args.name or f"compile-time-{'smoke' if args.smoke else 'cpu'}"
    header = (f"## Compile time, unrolled vs scanned layers: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
              f"UTC, {platform.node()} ({jax.devices()[0].device_kind}; jax {jax.__version__}, {jax.device_count()} device(s), "
              f"{jnp.dtype(args.compute_dtype).name} compute; {args.rounds} rounds x {args.steps_per_round} steps, "
              "median; adamw, the family's default rules; seed 0)")
    table = markdown(rows, header)
    write_rows_and_table(args.out, stem, rows, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
