"""Matrix-product speed of XLA:CPU and PyTorch in float32 and bfloat16 on this CPU, side by side
in one process (issue #21: is bf16 compute on a CPU with AMX units a road for jaxtune's CPU step?).

Usage::

    python benchmarks/cpu_matmul_dtypes.py                   # MiniLM's FFN shape (bs 16 x seq 64 rows)
    python benchmarks/cpu_matmul_dtypes.py --flags "--xla_cpu_use_onednn=true" --name cpu-matmul-onednn

Each figure is GFLOP/s of one ``(m, k) @ (k, n)`` product, the median over ``--rounds`` calls after a
warm-up, on ``--threads`` threads (PyTorch's ``set_num_threads``; XLA:CPU uses the process's cores).
``--flags`` are set as ``XLA_FLAGS`` before JAX starts. Writes ``<out>/<name>.jsonl`` and ``.md``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="1024,384,1536", help="m,k,n")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flags", default="", help="XLA_FLAGS for this run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="cpu-matmul-dtypes")
    args = parser.parse_args(argv)
    os.environ["XLA_FLAGS"] = args.flags
    import jax
    import jax.numpy as jnp
    import torch

    from jaxtune.bench import median_call_seconds, write_rows_and_table

    torch.set_num_threads(args.threads)
    m, k, n = (int(v) for v in args.shape.split(","))
    flops = 2.0 * m * k * n
    rows = []
    for dtype in ("float32", "bfloat16"):
        a, b = jnp.ones((m, k), dtype), jnp.ones((k, n), dtype)
        product = jax.jit(jnp.matmul)
        ta, tb = torch.ones((m, k), dtype=getattr(torch, dtype)), torch.ones((k, n), dtype=getattr(torch, dtype))
        row = {"dtype": dtype, "shape": [m, k, n],
               "jax_gflops": round(flops / median_call_seconds(lambda: product(a, b).block_until_ready(), args.rounds)
                                   / 1e9, 1),
               "torch_gflops": round(flops / median_call_seconds(lambda: ta @ tb, args.rounds) / 1e9, 1)}
        rows.append(row)
        print(row, flush=True)
    load = os.getloadavg()[0]
    header = (f"## CPU matrix products by dtype: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
              f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores, load {load:.2f} at the end; "
              f"jax {jax.__version__}, torch {torch.__version__}; ({m}, {k}) @ ({k}, {n}); XLA_FLAGS "
              f"`{args.flags or '(none)'}`; median of {args.rounds})")
    lines = [header, "", "| dtype | XLA:CPU GFLOP/s | PyTorch GFLOP/s | XLA / PyTorch |", "|---|---:|---:|---:|"]
    lines += [f"| {r['dtype']} | {r['jax_gflops']:.1f} | {r['torch_gflops']:.1f} | "
              f"{r['jax_gflops'] / r['torch_gflops']:.3f}x |" for r in rows]
    table = "\n".join(lines) + "\n"
    write_rows_and_table(args.out, args.name, rows, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
