"""Time of an embedding lookup's forward + backward: ``jnp.take`` on the compute-dtype table (what
``flax.linen.Embed`` runs) against both paths of :func:`jaxtune.embedding_lookup` (one-hot
product, float32 gather), side by side in one process.

Usage::

    python benchmarks/embedding_grad.py                    # the default device, bfloat16 tables
    python benchmarks/embedding_grad.py --dtype float32 --rounds 20 --out /tmp/emb

Cases are the lookups of BERT-base and T5-small at the gpu suite's shapes: word embeddings with
random ids and with every id equal (a fully padded batch), token types (all 0), T5's relative-position
buckets (a 256 x 256 grid of 32 buckets x 8 heads). Each timing is the median over ``--rounds`` of one
jitted ``grad`` call (block_until_ready). Writes ``<out>/<name>.jsonl`` and ``.md``.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

# Benchmark the checkout this script lives in, whichever jaxtune is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxtune.bench import median_call_seconds, write_rows_and_table  # noqa: E402
from jaxtune.models.embed import embedding_lookup  # noqa: E402


def cases(rng: np.random.Generator) -> dict[str, tuple[tuple[int, int], np.ndarray]]:
    """name -> ((rows, features), ids)."""
    grid = np.arange(256)
    return {
        "bert word ids random (30522x768, 128x128)": ((30522, 768), rng.integers(0, 30522, (128, 128))),
        "bert word ids all equal (30522x768, 128x128)": ((30522, 768), np.zeros((128, 128), int)),
        "bert token types all 0 (2x768, 128x128)": ((2, 768), np.zeros((128, 128), int)),
        "t5 position buckets (32x8, 256x256)": ((32, 8), np.clip(np.abs(grid[None] - grid[:, None]), 0, 31)),
    }


def time_grad(fn, table, ids, rounds: int) -> float:
    """Median milliseconds of one jitted gradient of ``sum(fn(table, ids) ** 2)`` w.r.t. the table."""
    grad = jax.jit(jax.grad(lambda t: jnp.sum(fn(t, ids).astype(jnp.float32) ** 2)))
    return median_call_seconds(lambda: grad(table).block_until_ready(), rounds) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="bfloat16", help="the table's (compute) dtype")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default=None, help="output stem (default embedding-grad-<backend>)")
    args = parser.parse_args(argv)
    dtype = jnp.dtype(args.dtype)
    rng = np.random.default_rng(0)
    paths = {"jnp.take": lambda t, ids: jnp.take(t, ids, axis=0),
             "lookup one-hot": lambda t, ids: embedding_lookup(t, ids, dtype, one_hot=True),
             "lookup float32 gather": lambda t, ids: embedding_lookup(t, ids, dtype, one_hot=False)}
    rows = []
    for case, (shape, ids) in cases(rng).items():
        table = jnp.asarray(rng.standard_normal(shape), dtype)
        ids = jnp.asarray(ids, jnp.int32)
        for path, fn in paths.items():
            rows.append({"case": case, "path": path, "dtype": dtype.name,
                         "ms": round(time_grad(fn, table, ids, args.rounds), 4)})
            print(rows[-1], flush=True)
    device = jax.devices()[0]
    header = (f"## Embedding lookup forward + backward: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
              f"{platform.node()} ({device.device_kind}; jax {jax.__version__}; {dtype.name} tables; "
              f"median of {args.rounds} jitted grad calls)")
    base = {r["case"]: r["ms"] for r in rows if r["path"] == "jnp.take"}
    lines = [header, "", "| case | path | ms | vs jnp.take |", "|---|---|---:|---:|"]
    lines += [f"| {r['case']} | {r['path']} | {r['ms']:.3f} | {r['ms'] / base[r['case']]:.3f}x |" for r in rows]
    table_md = "\n".join(lines) + "\n"
    write_rows_and_table(args.out, args.name or f"embedding-grad-{jax.default_backend()}", rows, table_md)
    print(table_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
