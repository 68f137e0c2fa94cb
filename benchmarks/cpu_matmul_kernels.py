"""Which matmul library could make XLA:CPU's fp32 products as fast as PyTorch's on this CPU (issue #21)?

XLA:CPU can hand a dot to several libraries: YNNPACK (its default in jax 0.10), XNNPACK, oneDNN, or
its own Eigen kernels. This script times the MiniLM step's three matmul shapes (bs 16 x seq 64 rows,
fp32) under each, against NumPy's BLAS (OpenBLAS in the NumPy wheel) and PyTorch's (MKL), all on
``--threads`` threads::

    python benchmarks/cpu_matmul_kernels.py

Each XLA variant runs in its own process (``XLA_FLAGS`` are read when JAX starts). The table shows
what the compiled HLO holds: a ``ynn_fusion`` for YNNPACK, a plain ``dot`` otherwise (XNNPACK, oneDNN
and Eigen are chosen when XLA:CPU emits the dot's thunk, so only their times tell them apart). Each figure is GFLOP/s of the median over ``--rounds`` calls after a warm-up.
Writes ``<out>/<name>.jsonl``, ``.md`` and the ``<name>`` section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {"1024,384,1536": "intermediate dense", "1024,1536,384": "output dense", "1024,384,384": "attention projection"}
NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="
XLA_VARIANTS = {
    "XLA:CPU, YNNPACK (default)": "",
    "XLA:CPU, XNNPACK": f"{NO_YNN} --xla_cpu_experimental_xnn_fusion_type=dot",
    "XLA:CPU, oneDNN": f"{NO_YNN} --xla_cpu_use_onednn=true",
    "XLA:CPU, Eigen": NO_YNN,
}


def _shape(text: str) -> tuple[int, int, int]:
    m, k, n = (int(v) for v in text.split(","))
    return m, k, n


def xla_worker(shapes: list[str], rounds: int) -> list[dict]:
    """In a process started with the variant's XLA_FLAGS: GFLOP/s and what the compiled HLO holds, per shape."""
    import jax
    import jax.numpy as jnp

    from jaxtune.bench import median_call_seconds

    rows = []
    for text in shapes:
        m, k, n = _shape(text)
        a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
        product = jax.jit(jnp.matmul)
        hlo = product.lower(a, b).compile().as_text().lower()
        kernel = "ynn_fusion" if "ynn_fusion" in hlo else "dot"
        seconds = median_call_seconds(lambda: product(a, b).block_until_ready(), rounds)
        rows.append({"shape": text, "gflops": round(2.0 * m * k * n / seconds / 1e9, 1), "kernel": kernel})
    return rows


def library_rows(shapes: list[str], rounds: int, threads: int) -> dict[str, list[dict]]:
    """NumPy's BLAS and PyTorch's, in this process."""
    import numpy as np
    import torch

    from jaxtune.bench import median_call_seconds

    torch.set_num_threads(threads)
    out = {"NumPy (OpenBLAS)": [], "PyTorch (MKL)": []}
    for text in shapes:
        m, k, n = _shape(text)
        na, nb = np.ones((m, k), np.float32), np.ones((k, n), np.float32)
        ta, tb = torch.ones((m, k)), torch.ones((k, n))
        for name, call in (("NumPy (OpenBLAS)", lambda: na @ nb), ("PyTorch (MKL)", lambda: ta @ tb)):
            out[name].append({"shape": text, "gflops": round(2.0 * m * k * n / median_call_seconds(call, rounds) / 1e9, 1),
                              "kernel": "-"})
    return out


def markdown(results: dict[str, list[dict]], shapes: list[str], header: str) -> str:
    torch_row = {r["shape"]: r["gflops"] for r in results["PyTorch (MKL)"]}
    lines = [header, "", "GFLOP/s per shape (and the ratio to PyTorch's).", "",
             "| library | compiled HLO | " + " | ".join(f"{m}x{k} @ {k}x{n} ({SHAPES.get(s, 'shape')})"
                                                        for s in shapes for m, k, n in [_shape(s)]) + " |",
             "|---|---|" + "---:|" * len(shapes)]
    for name, rows in results.items():
        cells = [f"{r['gflops']:.0f} ({r['gflops'] / torch_row[r['shape']]:.2f}x)" for r in rows]
        lines.append(f"| {name} | {rows[0]['kernel']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=";".join(SHAPES), help="m,k,n;m,k,n;...")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="cpu-matmul-kernels")
    parser.add_argument("--results-md", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(";") if s]
    if args.worker:
        print(json.dumps(xla_worker(shapes, args.rounds)))
        return 0
    load_before = os.getloadavg()
    results = {}
    for name, flags in XLA_VARIANTS.items():
        proc = subprocess.run([sys.executable, __file__, "--worker", "--shapes", args.shapes, "--rounds", str(args.rounds)],
                              env={**os.environ, "XLA_FLAGS": flags}, capture_output=True, text=True, check=True)
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    results.update(library_rows(shapes, args.rounds, args.threads))
    import jax
    import numpy
    import torch

    from jaxtune.bench import write_rows_and_table

    header = (f"## CPU matmul libraries, fp32: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
              f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores, {args.threads} threads; load average "
              f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; jax {jax.__version__}, numpy "
              f"{numpy.__version__}, torch {torch.__version__}; median of {args.rounds}; "
              f"`python benchmarks/cpu_matmul_kernels.py`)\n\nXLA_FLAGS per XLA:CPU row: "
              + "; ".join(f"{name.split(', ')[1]}: `{flags or '(none)'}`" for name, flags in XLA_VARIANTS.items()))
    table = markdown(results, shapes, header)
    write_rows_and_table(args.out, args.name, [{"library": k, "rows": v} for k, v in results.items()], table, results_md=args.results_md)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
