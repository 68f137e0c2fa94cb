"""Compile every benchmark step for a GPU that is not there: XLA:GPU's own memory plan, no device.

JAX can compile ahead of time for a *described* device (``jax.experimental.topologies``): XLA runs
its whole GPU pipeline (fusion, scheduling, buffer assignment, cuDNN graph building) and only skips
the autotuning that needs the card. On a machine without a GPU this checks, before a GPU session:

* that each case and mode of the ``gpu`` suite compiles for the GPU, cuDNN attention included;
* XLA:GPU's peak memory per step (arguments + temporaries + non-aliased outputs), and so the
  "frozen backbone ≤ 40% of the full step's memory" target, which the GPU run reads the same way;
* which attention kernel the compiled step calls.

Compile times are this machine's, without autotuning: a rough guide, not the GPU figure.

Needs the CUDA PJRT plugin of the installed jax (not needed by jaxtune itself), best in a venv::

    python -m venv --system-site-packages /tmp/gpuenv
    /tmp/gpuenv/bin/pip install "jax-cuda13-plugin[with-cuda]==$(python -c 'import jax; print(jax.__version__)')"
    /tmp/gpuenv/bin/python benchmarks/gpu_compile_check.py            # all gpu cases, all modes

``--target cpu`` compiles for this machine's CPU instead (what the tests use).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from jaxtune.bench.cases import ALL_MODES, make_batch, suite_cases, with_attention
from jaxtune.bench.contestants import build_model
from jaxtune.bench.harness import jax_contestant
from jaxtune.bench.measure import attention_kernel, tree_bytes, xla_peak_bytes
from jaxtune.bench.peers import REPO
from jaxtune.bench.report import mib, random_bits_source, update_results_md
from jaxtune.bench.xla_flags import apply_environment
from jaxtune.xla_options import step_compiler_options

# Target descriptions of the GPU kinds we benchmark on: an H100 SXM (132 SMs, 228 KiB shared memory
# per SM, 50 MiB L2, 3.35 TB/s HBM3, 80 GB) and an H200 (the same chip with 141 GB of HBM3e at 4.8 TB/s).
_HOPPER = """gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth}
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: {memory}
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 minor: 0 }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 12 }}
runtime_version {{ major: 13 minor: 0 }}
device_description_str: "{name}"
"""
GPU_TARGETS = {
    "h100": _HOPPER.format(bandwidth=3352320000000, memory=84929347584, name="NVIDIA H100 80GB HBM3"),
    "h200": _HOPPER.format(bandwidth=4800000000000, memory=150754820096, name="NVIDIA H200"),
}
TARGETS = (*GPU_TARGETS, "cpu")
LAYOUTS = ("unrolled", "scanned")
COMPILE_TARGET_S = 10.0   # issue #20: BERT-base's and T5-small's full step compile on the H100 plan


def target_sharding(target: str):
    """A single-device ``NamedSharding`` on a compile-only device of ``target`` (``h100``,
    ``h200``: described GPUs, no device needed; ``cpu``: this machine's CPU)."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    if target == "cpu":
        return NamedSharding(Mesh(jax.devices("cpu")[:1], ("x",)), PartitionSpec())
    if target not in GPU_TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(platform="cuda", target_config=GPU_TARGETS[target],
                                                topology="1x1x1")
    except (NotImplementedError, RuntimeError) as e:
        raise RuntimeError(f"cannot describe a CUDA device ({type(e).__name__}: {e}). Install the CUDA plugin of "
                           "this jax: pip install \"jax-cuda13-plugin[with-cuda]==<jax version>\" (see "
                           "jaxtune/bench/aot.py)") from None
    return NamedSharding(topologies.make_mesh(topology, (1,), ("x",)), PartitionSpec())


def abstract_like(tree: Any, sharding: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves with the shapes and dtypes of ``tree``, placed on ``sharding``."""
    import jax

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def with_layout(case: Any, layout: str) -> Any:
    """``case`` with its transformer layers ``unrolled`` (as built) or ``scanned`` (``scan_layers=True``:
    one loop over stacked layer parameters); a case without layers (ResNet) stays as it is.

    Example::

        >>> from jaxtune.bench.cases import suite_cases
        >>> with_layout(suite_cases("smoke")[0], "scanned").config.scan_layers
        True
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    if layout == "unrolled" or case.config is None or not hasattr(case.config, "scan_layers"):
        return case
    return dataclasses.replace(case, config=dataclasses.replace(case.config, scan_layers=True))


def compile_case(case: Any, modes: Sequence[str], sharding: Any, compute_dtype: Any,
                 log: Callable[[str], None] = print, layout: str = "unrolled") -> list[dict]:
    """Compiles each of ``modes`` of ``case`` (its layers ``layout``, see :func:`with_layout`) for
    ``sharding``'s device; one record per mode (``error`` set, other fields None, where the
    compilation fails)."""
    case = with_layout(case, layout)
    model = build_model(case, compute_dtype)
    batch = make_batch(case, getattr(model.config, "vocab_size", 1000))
    records = []
    for mode in modes:
        contestant = jax_contestant(case, model, mode, batch, compute_dtype)
        # the step compiles for the described device, not for this host's CPU
        contestant.compiler_options = step_compiler_options(next(iter(sharding.device_set)).platform)
        record = {"case": case.name, "mode": mode, "layout": layout, "error": None}
        try:
            contestant.prepare()
            start = time.perf_counter()
            compiled = contestant.step.lower(abstract_like(contestant.state, sharding),
                                             abstract_like(contestant.batch, sharding)).compile()
            memory = compiled.memory_analysis()
            record.update(compile_s=time.perf_counter() - start, peak_memory_bytes=xla_peak_bytes(compiled),
                          argument_bytes=int(memory.argument_size_in_bytes), temp_bytes=int(memory.temp_size_in_bytes),
                          attention_kernel=attention_kernel(compiled, case.family),
                          optimizer_state_bytes=tree_bytes(contestant.state.opt_state))
        except Exception as e:  # a failing compile is the finding: record it, go on
            record.update(compile_s=None, peak_memory_bytes=None, argument_bytes=None, temp_bytes=None,
                          attention_kernel=None, optimizer_state_bytes=None, error=f"{type(e).__name__}: {e}"[:500])
        finally:
            contestant.close()
        log(f"{case.name} {mode} {layout}: " + (f"peak {mib(record['peak_memory_bytes'])} MiB, compiled in "
                                       f"{record['compile_s']:.1f} s" if record["error"] is None else record["error"]))
        records.append(record)
    return records


def _key(record: dict) -> str:
    """A record's case, with `` scanned`` appended for the scanned layout."""
    return record["case"] + (" scanned" if record.get("layout", "unrolled") == "scanned" else "")


def frozen_memory_ratios(records: Sequence[dict]) -> dict[str, float]:
    """Per case (and layout): the frozen-backbone step's peak memory over the full step's (target ≤ 0.40)."""
    peaks = {(_key(r), r["mode"]): r["peak_memory_bytes"] for r in records}
    return {case: peaks[(case, "frozen_backbone")] / peaks[(case, "full")]
            for case, mode in peaks if mode == "full" and peaks[(case, mode)]
            and peaks.get((case, "frozen_backbone"))}


def layout_rows(records: Sequence[dict]) -> list[dict]:
    """Per case and mode compiled in both layouts: unrolled and scanned compile seconds and peak memory."""
    ok = {(r["case"], r["mode"], r.get("layout", "unrolled")): r for r in records if r["error"] is None}
    return [{"case": case, "mode": mode, "unrolled": ok[(case, mode, "unrolled")], "scanned": r}
            for (case, mode, layout), r in ok.items() if layout == "scanned" and (case, mode, "unrolled") in ok]


def markdown(records: Sequence[dict], env: dict) -> str:
    """The RESULTS.md section of a compile check: environment, one row per case, mode and layout, the
    frozen-backbone memory ratios against the 40% target and, where both layouts compiled, scanned
    against unrolled (full-step compile target ≤ :data:`COMPILE_TARGET_S` s)."""
    bits = random_bits_source(env, on_gpu=env["target"] != "cpu")
    lines = [f"## Compile check `{env['target']}` (deviceless: XLA:GPU plan, nothing run)", "",
             f"{env['date']}; jax {env['jax']}; compiled on {env['host']} for {env['device']}; "
             f"compute {env['compute_dtype']}; attention `{env['attention']}`; XLA_FLAGS "
             f"`{env['xla_flags'] or '(none)'}`"
             + (f"; random bits from {bits}" if bits else "")
             + ". Memory is XLA's buffer "
             "assignment of one step (arguments + temporaries + outputs not aliased to donated "
             "arguments), as `peak_memory_bytes` of the gpu suite. Compile seconds are this host's, "
             "without autotuning.", "",
             "| case | mode | layout | peak MiB | arguments MiB | temporaries MiB | optimizer state MiB | attention "
             "| compile s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        head = f"| {r['case']} | {r['mode']} | {r.get('layout', 'unrolled')} |"
        if r["error"] is not None:
            lines.append(f"{head} **failed**: {r['error'].splitlines()[0]} | | | | | |")
            continue
        lines.append(f"{head} {mib(r['peak_memory_bytes'])} | {mib(r['argument_bytes'])} | {mib(r['temp_bytes'])} | "
                     f"{mib(r['optimizer_state_bytes'])} | {r['attention_kernel'] or '-'} | {r['compile_s']:.1f} |")
    ratios = frozen_memory_ratios(records)
    if ratios:
        lines += ["", "| case | frozen-backbone / full peak memory | target ≤ 0.40 |", "|---|---|---|"]
        lines += [f"| {case} | {ratio:.3f} | {'met' if ratio <= 0.40 else 'missed'} |" for case, ratio in ratios.items()]
    pairs = layout_rows(records)
    if pairs:
        lines += ["", f"| case | mode | compile s unrolled | scanned | scanned / unrolled | peak MiB unrolled | scanned "
                      f"| full step ≤ {COMPILE_TARGET_S:g} s (scanned) |", "|---|---|---|---|---|---|---|---|"]
        for p in pairs:
            u, s = p["unrolled"], p["scanned"]
            target = ("met" if s["compile_s"] <= COMPILE_TARGET_S else "missed") if p["mode"] == "full" else "-"
            lines.append(f"| {p['case']} | {p['mode']} | {u['compile_s']:.1f} | {s['compile_s']:.1f} | "
                         f"{s['compile_s'] / u['compile_s']:.2f}x | {mib(u['peak_memory_bytes'])} | "
                         f"{mib(s['peak_memory_bytes'])} | {target} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_compile_check", description=__doc__.split("\n")[0])
    p.add_argument("--target", choices=TARGETS, default="h100")
    p.add_argument("--suite", choices=("gpu", "smoke"), default="gpu")
    p.add_argument("--cases", default=None, help="comma-separated case names (default: the suite's)")
    p.add_argument("--modes", default=",".join(ALL_MODES), help="comma-separated modes")
    p.add_argument("--layouts", default="unrolled",
                   help=f"comma-separated, of {LAYOUTS}: the BERT/T5 layers unrolled or as one scan")
    p.add_argument("--attention", choices=("auto", "xla", "cudnn"), default="auto",
                   help="the BERT/T5 cases' attention_implementation; auto on a GPU target is the one "
                        "the models pick on that GPU")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default=None, help="output stem and RESULTS.md section (default: compile-<target>)")
    p.add_argument("--results-md", default=str(REPO / "benchmarks" / "RESULTS.md"),
                   help="RESULTS.md to update, or 'none'")
    return p.parse_args(argv)


def _auto_attention(case: Any) -> str:
    """What ``attention_implementation="auto"`` picks for a training step on a Hopper GPU (the
    compile runs on a host whose platform is CPU, so the models' own check cannot see the GPU)."""
    import jax.numpy as jnp

    from jaxtune.models.attention import choose_implementation

    config = case.config
    dropout = getattr(config, "attention_probs_dropout_prob", None)
    dropout = getattr(config, "dropout_rate", 0.0) if dropout is None else dropout
    heads = getattr(config, "num_attention_heads", None) or config.num_heads
    head_dim = getattr(config, "d_kv", None) or config.hidden_size // heads
    return choose_implementation(platform="cuda", dtype=jnp.bfloat16, head_dim=head_dim, dropout=dropout > 0,
                                 max_head_dim=256)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dropped = []
    if args.target != "cpu":
        os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no driver here: nothing to check against
        dropped = apply_environment("gpu", None)  # the gpu suite's XLA flags: the same compilation
    import jax
    import jax.numpy as jnp

    layouts = [x for x in args.layouts.split(",") if x]
    if sorted(set(layouts) - set(LAYOUTS)):
        raise SystemExit(f"--layouts {args.layouts}: choose from {', '.join(LAYOUTS)}")
    sharding = target_sharding(args.target)
    cases = suite_cases(args.suite)
    if args.cases:
        wanted = args.cases.split(",")
        unknown = sorted(set(wanted) - {c.name for c in cases})
        if unknown:
            raise SystemExit(f"unknown case(s) {unknown}; the {args.suite} suite has {[c.name for c in cases]}")
        cases = [c for c in cases if c.name in wanted]
    modes = [m for m in args.modes.split(",") if m]
    compute_dtype = jnp.float32 if args.target == "cpu" else jnp.bfloat16
    records = []
    for case in cases:
        attention = args.attention
        if attention == "auto" and args.target != "cpu" and hasattr(case.config, "attention_implementation"):
            attention = _auto_attention(case)
        for layout in layouts:
            records += compile_case(with_attention(case, attention), [m for m in modes if m in case.modes],
                                    sharding, compute_dtype, layout=layout)
    device = sharding.mesh.devices.flat[0]
    env = {"target": args.target, "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__,
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "dropped_xla_flags": dropped,
           "threefry_gpu_kernel": bool(jax.config.jax_threefry_gpu_kernel_lowering),
           "host": f"{os.cpu_count()} CPU cores", "device": getattr(device, "device_kind", str(device)),
           "compute_dtype": jnp.dtype(compute_dtype).name, "attention": args.attention}
    name = args.name or f"compile-{args.target}"
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / f"{name}.jsonl").open("w") as f:
        for row in (env, *records):
            f.write(json.dumps(row) + "\n")
    body = markdown(records, env)
    (args.out / f"{name}.md").write_text(body)
    if args.results_md != "none":
        update_results_md(Path(args.results_md), name, body)
    print(body)
    return 1 if any(r["error"] for r in records) else 0
