"""Where the MiniLM fine-tuning step spends its time on CPU: jaxtune against PyTorch eager, op by op,
and the suspects of issue #21 measured as variants of jaxtune's step in one process.

Three parts (the op profiles in a child process: XLA:CPU traces its ops only with a flag that slows
them), all written to ``results/cpu-profile.md`` (and ``.jsonl``), which ``--results-md``
copies into benchmarks/RESULTS.md between ``<!-- results:cpu-profile:begin/end -->`` markers:

1. **Op profile** of the real step (all-MiniLM-L6-v2, bs 16, seq 64, float32, dropout on, AdamW):
   jaxtune's through :func:`jaxtune.profile_step` (each XLA op mapped to the jaxtune/Flax source
   named by its HLO metadata), PyTorch's through ``torch.profiler``; both grouped into the same
   categories (forward matmuls, gradient matmuls, dropout bits, AdamW, ...).
2. **Matmul kernels**: the step's matmul shapes alone, XLA:CPU vs PyTorch (MKL), GFLOP/s.
3. **Suspects as variants**, compiled side by side and timed in interleaved rounds in one process,
   so load from other jobs hits all alike: the shipped step, XLA's default scheduler, ``rbg`` and
   ``unsafe_rbg`` keys, dropout from 16-bit random bits, and the step without the per-leaf
   non-finite check (its cost).

Usage::

    python benchmarks/cpu_profile.py                 # about 4 min on 2 cores
    python benchmarks/cpu_profile.py --rounds 4 --no-results-md
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jaxtune.bench.xla_flags import apply_environment  # noqa: E402  (before JAX starts its backend)

PROFILE_CHILD = "--profiles-json"
# XLA:CPU traces its ops only with a flag that also slows them: the op profiles run in a child
# process with it; the kernels and variants are timed in the parent, without it.
if PROFILE_CHILD in sys.argv:
    apply_environment("cpu", threads=None, profile=True)

import argparse  # noqa: E402
import collections  # noqa: E402
import datetime  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxtune.train as train_module  # noqa: E402
from jaxtune import bench  # noqa: E402
from jaxtune.bench.cases import LEARNING_RATE, WEIGHT_DECAY, make_batch, suite_cases  # noqa: E402
from jaxtune.bench.contestants import JaxContestant, build_model  # noqa: E402
from jaxtune.bench.measure import xla_cost  # noqa: E402
from jaxtune.bench.op_categories import CATEGORIES, hlo_sources, jax_category  # noqa: E402
from jaxtune.bench.report import update_results_md  # noqa: E402
from jaxtune.profiling import _NOT_OPS, _self_times  # noqa: E402
from jaxtune.xla_options import CPU_STEP_OPTIONS  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
TORCH_CATEGORIES = [
    ("matmul, forward and gradients", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("dropout random bits", ("aten::bernoulli_",)),
    ("softmax", ("aten::_softmax", "aten::_softmax_backward_data")),
    ("layer norm", ("aten::native_layer_norm", "aten::native_layer_norm_backward")),
    ("GELU", ("aten::gelu", "aten::gelu_backward")),
    ("embeddings (lookup and gradient)", ("aten::embedding_dense_backward", "aten::index_add_", "aten::embedding_backward",
                                          "aten::index_select", "aten::embedding")),
    ("copies and transposes", ("aten::copy_", "aten::clone", "aten::contiguous")),
]


def profile_jax(contestant: JaxContestant, steps: int) -> tuple[dict[str, float], float, float]:
    """ms per step by category of jaxtune's step (op busy time, both XLA threads together), the
    wall ms per profiled step and the step's FLOPs (XLA's cost analysis)."""
    compiled = contestant.step.lower(contestant.state, contestant.batch).compile()
    hlo, flops = hlo_sources(compiled.as_text()), xla_cost(compiled)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            state = contestant.state
            for _ in range(steps):
                state, metrics = contestant.step(state, contestant.batch)
            jax.block_until_ready((state, metrics))
        wall = (time.perf_counter() - start) / steps * 1e3
        contestant.state = state
        trace = sorted(Path(folder).glob("**/*.trace.json.gz"))[-1]
        with gzip.open(trace) as f:
            events = json.load(f)["traceEvents"]
    ops = [e for e in events if e.get("ph") == "X" and not _NOT_OPS.match(e.get("name", ""))]
    totals = collections.defaultdict(float)
    for event, self_us in _self_times(ops):
        source = hlo.get(event["name"], ("", ""))[0]
        totals[jax_category(event["name"], source)] += self_us / 1e3 / steps
    return dict(totals), wall, flops


def profile_torch(peer, steps: int) -> tuple[dict[str, float], float]:
    """ms per step by category of PyTorch's step (self CPU time per op) and the wall ms per step."""
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        peer.run(steps)
    wall = (time.perf_counter() - start) / steps * 1e3
    averages = prof.key_averages()
    totals = collections.defaultdict(float)
    others = collections.Counter()
    optimizer = [a for a in averages if a.key.startswith("Optimizer.step")]
    totals["AdamW update"] = sum(a.cpu_time_total for a in optimizer) / 1e3 / steps
    in_optimizer_ops = ("aten::sqrt", "aten::lerp_", "aten::addcdiv_", "aten::addcmul_", "aten::mul_", "aten::div_",
                        "aten::_foreach")
    for a in averages:
        if a.key.startswith("Optimizer.") or a.key.startswith(in_optimizer_ops):
            continue
        category = next((c for c, names in TORCH_CATEGORIES if a.key in names), "other")
        totals[category] += a.self_cpu_time_total / 1e3 / steps
        if category == "other":
            others[a.key] += a.self_cpu_time_total / 1e3 / steps
    totals["_other_ops"] = ", ".join(f"{k} {v:.1f}" for k, v in others.most_common(6))
    return dict(totals), wall


def matmul_kernels(repeats: int = 20) -> list[dict]:
    """GFLOP/s of the step's matmul shapes, XLA:CPU (jit of one dot) vs torch.mm, medians."""
    import torch

    rows = []
    for m, k, n, what in [(1024, 384, 1536, "intermediate dense"), (1024, 1536, 384, "output dense"),
                          (1024, 384, 384, "attention projection")]:
        a, b = np.random.default_rng(0).standard_normal((2, max(m, k), max(k, n)), dtype=np.float32)
        a, b = a[:m, :k].copy(), b[:k, :n].copy()
        f = jax.jit(jnp.matmul)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        jax.block_until_ready(f(ja, jb))
        torch.mm(ta, tb)
        # Each framework's repeats in one block: PyTorch's OpenMP threads spin for a while after an
        # op, and would take the cores from an XLA call made right after it.
        times = {"jax": [], "torch": []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(ja, jb))
            times["jax"].append(time.perf_counter() - t0)
        time.sleep(0.5)
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(ta, tb)
            times["torch"].append(time.perf_counter() - t0)
        time.sleep(0.5)
        flop = 2 * m * k * n
        rows.append({"shape": f"{m}x{k} @ {k}x{n}", "what": what,
                     "xla_gflops": flop / statistics.median(times["jax"]) / 1e9,
                     "torch_gflops": flop / statistics.median(times["torch"]) / 1e9})
    return rows


def _bernoulli_16bit(key, p=0.5, shape=None):
    threshold = min(int(round(float(p) * 65536)), 65535)
    return jax.random.bits(key, shape, jnp.uint16) < jnp.uint16(threshold)


def _no_leaf_check(original):
    return lambda loss, grad_norm, grads, new_values, indices: original(loss, grad_norm, [], [], [])


VARIANTS = {
    "shipped (memory-optimised scheduler)": {},
    "XLA's default scheduler": {"compiler_options": None},
    "rbg keys": {"impl": "rbg"},
    "unsafe_rbg keys": {"impl": "unsafe_rbg"},
    "dropout from 16-bit random bits": {"bernoulli": _bernoulli_16bit},
    "without the per-leaf non-finite check": {"no_leaf_check": True},
}


def build_variant(case, model, batch, spec: dict) -> JaxContestant:
    """A full-mode contestant whose step is traced with the variant's changes in place."""
    original_check, original_bernoulli = train_module.nonfinite_leaf, jax.random.bernoulli
    try:
        if spec.get("no_leaf_check"):
            train_module.nonfinite_leaf = _no_leaf_check(original_check)
        jax.random.bernoulli = spec.get("bernoulli", original_bernoulli)
        c = JaxContestant(case, model, "full", batch, jnp.float32)
        c.prepare()
        if "compiler_options" in spec:
            tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)     # the full mode's optimizer
            c.step = train_module.make_train_step(model.loss_fn, tx, compiler_options=spec["compiler_options"])
        if "impl" in spec:
            c.state = c.state.replace(rng=jax.random.key(0, impl=spec["impl"]))
        c.run(2)    # traces and compiles with the patches in place
    finally:
        train_module.nonfinite_leaf, jax.random.bernoulli = original_check, original_bernoulli
    return c


def time_variants(case, model, batch, rounds: int, steps: int) -> list[dict]:
    contestants = {name: build_variant(case, model, batch, spec) for name, spec in VARIANTS.items()}
    times = {name: [] for name in contestants}
    for _ in range(rounds):
        for name, c in contestants.items():
            times[name].append(c.run(steps) / steps)
    base = statistics.median(times[next(iter(times))])
    rows = [{"variant": name, "step_ms": statistics.median(t) * 1e3, "vs_shipped": statistics.median(t) / base,
             "rounds_ms": [round(x * 1e3, 1) for x in t]} for name, t in times.items()]
    for c in contestants.values():
        c.close()
    return rows


def render(env: dict, jax_ops: dict, jax_wall: float, torch_ops: dict, torch_wall: float, kernels: list[dict],
           variants: list[dict], command: str, flops: float | None) -> str:
    lines = [f"## CPU step profile: all-MiniLM-L6-v2, bs 16, seq 64, float32, dropout on, AdamW",
             "", f"Written by `{command}` on {env['date']} ({env['machine']}, {env['cores']} cores; load average "
             f"{env['load_before']} before, {env['load_after']} after; jax {jax.__version__}, torch {env['torch']}).",
             "", "### Where the time goes (ms per step, op time)", "",
             "jaxtune: XLA ops from `jt.profile_step`, each mapped to its source through the HLO metadata; "
             "the time of both XLA threads is added up. PyTorch: `torch.profiler` self CPU time per op (its "
             "ops run their own threads inside), the optimizer as `Optimizer.step`'s total.", "",
             "| category | jaxtune ms | share | PyTorch ms | share |", "|---|---:|---:|---:|---:|"]
    torch_ops = dict(torch_ops)
    torch_other_ops = torch_ops.pop("_other_ops", "")
    jax_total, torch_total = sum(jax_ops.values()), sum(torch_ops.values())
    torch_rows = dict(torch_ops)
    torch_rows.setdefault("matmul, forward and gradients", 0.0)
    merged = [c for c in CATEGORIES]
    for category in merged:
        j = jax_ops.get(category, 0.0)
        t = torch_rows.pop(category, None)
        if category == "matmul, forward":
            t = torch_rows.pop("matmul, forward and gradients")
            label = "matmul, forward (PyTorch: forward and gradients)"
        elif category == "matmul, gradients":
            label, t = category, None
        else:
            label = category
        t_cells = f"{t:.1f} | {t / torch_total:.1%}" if t is not None else "(above) | "
        lines.append(f"| {label} | {j:.1f} | {j / jax_total:.1%} | {t_cells} |")
    for category, t in torch_rows.items():
        lines.append(f"| {category} | - | - | {t:.1f} | {t / torch_total:.1%} |")
    lines += [f"| **total op time** | {jax_total:.1f} | | {torch_total:.1f} | |",
              f"| **wall per step under the profiler** | {jax_wall:.1f} | | {torch_wall:.1f} | |", "",
              f"PyTorch's largest 'other' ops (ms per step): {torch_other_ops}.", "",
              "### Matmul kernels alone (median of 20, float32, 2 threads)", "",
              "| shape | in the step | XLA:CPU GFLOP/s | PyTorch GFLOP/s | XLA / PyTorch |", "|---|---|---:|---:|---:|"]
    for k in kernels:
        lines.append(f"| {k['shape']} | {k['what']} | {k['xla_gflops']:.0f} | {k['torch_gflops']:.0f} | "
                     f"{k['xla_gflops'] / k['torch_gflops']:.2f} |")
    if flops:
        kernel_speed = statistics.mean(k["xla_gflops"] for k in kernels) * 1e9
        in_step = jax_ops.get("matmul, forward", 0.0) + jax_ops.get("matmul, gradients", 0.0)
        lines += ["", f"The step's {flops / 1e9:.1f} GFLOP (XLA's cost analysis; almost all of it in matmuls) "
                  f"would take {flops / kernel_speed * 1e3:.0f} ms at the kernels-alone speed of XLA:CPU "
                  f"({kernel_speed / 1e9:.0f} GFLOP/s, the mean of the three shapes); its matmul ops take "
                  f"{in_step:.0f} ms of op time in the step."]
    lines += ["", "### The suspects, as variants of jaxtune's step (one process, interleaved rounds)", "",
              "| variant | step ms (median) | vs shipped | rounds ms |", "|---|---:|---:|---|"]
    for v in variants:
        lines.append(f"| {v['variant']} | {v['step_ms']:.1f} | {v['vs_shipped']:.3f} | "
                     f"{', '.join(f'{x:.0f}' for x in v['rounds_ms'])} |")
    return "\n".join(lines) + "\n"


def op_profiles(case, profile_steps: int) -> dict:
    """The child process's work: both op profiles (and the step's FLOPs) as a dict."""
    import torch_peers

    torch_peers.configure("cpu")
    model = build_model(case, jnp.float32)
    batch = make_batch(case, model.config.vocab_size)
    shipped = build_variant(case, model, batch, {})
    jax_ops, jax_wall, flops = profile_jax(shipped, profile_steps)
    shipped.close()
    peer = torch_peers.TorchPeer(case, model.config, batch, "eager", "cpu")
    peer.setup()
    peer.run(2)
    torch_ops, torch_wall = profile_torch(peer, profile_steps)
    peer.close()
    return {"jax_ops_ms": jax_ops, "jax_wall_ms": jax_wall, "flops_per_step": flops, "torch_ops_ms": torch_ops,
            "torch_wall_ms": torch_wall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds of the variants")
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-results-md", action="store_true", help="do not copy the section into RESULTS.md")
    parser.add_argument(PROFILE_CHILD, type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    case = suite_cases("cpu")[0]
    if args.profiles_json:
        args.profiles_json.write_text(json.dumps(op_profiles(case, args.profile_steps)))
        return 0
    import torch
    import torch_peers

    torch_peers.configure("cpu")
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    model = build_model(case, jnp.float32)
    batch = make_batch(case, model.config.vocab_size)
    kernels = matmul_kernels()
    variants = time_variants(case, model, batch, args.rounds, args.steps_per_round)
    del model
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "profiles.json"
        subprocess.run([sys.executable, __file__, PROFILE_CHILD, str(path), "--profile-steps", str(args.profile_steps)],
                       check=True)
        profiles = json.loads(path.read_text())
    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
           "load_before": load_before, "load_after": ", ".join(f"{x:.2f}" for x in os.getloadavg())}
    command = "python benchmarks/cpu_profile.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    text = render(env, profiles["jax_ops_ms"], profiles["jax_wall_ms"], profiles["torch_ops_ms"],
                  profiles["torch_wall_ms"], kernels, variants, command, profiles["flops_per_step"])
    row = {"env": env, **profiles, "kernels": kernels, "variants": variants, "cpu_step_options": CPU_STEP_OPTIONS}
    paths = bench.write_rows_and_table(args.out, "cpu-profile", [row], text)
    if not args.no_results_md:
        update_results_md(Path(__file__).resolve().parent / "RESULTS.md", "cpu-profile", text)
    print(text)
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
