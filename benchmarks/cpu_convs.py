"""How much faster are the mobile CNNs on CPU with their depthwise and 1x1 convolutions rewritten?

``jaxtune.models.fast_conv`` writes MobileNetV2's and EfficientNet-Lite's depthwise convolutions as
sums of shifted slices and their 1x1 convolutions as matrix products on CPU (``"cpu"``), where
``lax.conv_general_dilated`` (``"conv"``) was slow. This script times, in one process and run, both
forms of a train step (AdamW, random-init weights, train-mode batch norm, float32) of each model: one
run, and three runs as members of one vmapped step (as the experiments train them), plus an
evaluation forward::

    python benchmarks/cpu_convs.py                          # 48x48 MNIST-sized images, batch 32
    python benchmarks/cpu_convs.py --image-size 96 --rounds 5

Each figure is the median seconds over ``--rounds`` calls after a warm-up (compilation). Writes
``<out>/<name>.jsonl``, ``.md`` and the ``<name>`` section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ("mobilenet_v2", "efficientnet_lite0")
FORMS = ("conv", "cpu")
MEMBERS = 3


def _model(name: str):
    from jaxtune.models import efficientnet, mobilenet

    if name == "mobilenet_v2":
        return mobilenet.mobilenet_v2(num_labels=10)
    return efficientnet.efficientnet_lite(num_labels=10)


def time_model(name: str, image_size: int, batch: int, rounds: int) -> list[dict]:
    """Seconds per call of each form: a train step (1 run, and ``MEMBERS`` vmapped members) and an
    evaluation forward, for model ``name``."""
    import jax
    import numpy as np
    import optax

    import jaxtune as jt
    from jaxtune.bench import median_call_seconds
    from jaxtune.models.fast_conv import conv_implementation
    from jaxtune.tasks import get_task

    model, task = _model(name), get_task("image_classification")
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, image_size, image_size, 3)).astype(np.float32)
    batch_1 = {"images": images, "labels": rng.integers(0, 10, batch)}
    batch_m = {k: np.stack([v] * MEMBERS) for k, v in batch_1.items()}
    variables = model.init(jax.random.key(0), images[:1])
    tx = optax.adamw(1e-3)
    state = jt.TrainState.create(variables["params"], tx, model_state={"batch_stats": variables["batch_stats"]},
                                 rng=jax.random.key(1))
    members = jt.stack_members([state] * MEMBERS)
    rows = []
    for form in FORMS:
        with conv_implementation(form):
            loss_fn = task.loss_fn(model)
            step = jt.make_train_step(loss_fn, tx, donate=False)
            member_step = jt.make_member_step(loss_fn, tx, members=MEMBERS, per_member_batch=True, donate=False)
            forward = jax.jit(lambda v, x: model.apply(v, x))
            calls = {"train step, 1 run": lambda: jax.block_until_ready(step(state, batch_1)),
                     f"train step, {MEMBERS} vmapped members": lambda: jax.block_until_ready(
                         member_step(members, batch_m)),
                     "evaluation forward": lambda: jax.block_until_ready(forward(variables, images))}
            for what, call in calls.items():
                seconds = median_call_seconds(call, rounds)
                rows.append({"model": name, "form": form, "what": what, "seconds": round(seconds, 4)})
                print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict], header: str) -> str:
    """One line per (model, call): seconds with XLA's convolutions, with the CPU forms, and the speed-up."""
    by_key = {(r["model"], r["what"], r["form"]): r["seconds"] for r in rows}
    lines = [header, "", "| model | call | XLA convolutions (s) | CPU forms (s) | speed-up |", "|---|---|---:|---:|---:|"]
    for model, what in dict.fromkeys((r["model"], r["what"]) for r in rows):
        conv, cpu = by_key[(model, what, "conv")], by_key[(model, what, "cpu")]
        lines.append(f"| {model} | {what} | {conv:.3f} | {cpu:.3f} | {conv / cpu:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="cpu-convs")
    parser.add_argument("--results-md", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    rows = [r for name in args.models.split(",") for r in time_model(name, args.image_size, args.batch, args.rounds)]
    import jax

    from jaxtune.bench import write_rows_and_table

    header = (f"## Mobile CNNs on CPU, XLA convolutions vs the CPU forms: "
              f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()} "
              f"({platform.machine()}, {os.cpu_count()} cores; load average {load_before[0]:.2f} before, "
              f"{os.getloadavg()[0]:.2f} after; jax {jax.__version__}; {args.image_size}x{args.image_size} images, "
              f"batch {args.batch} per run, float32, random init; median of {args.rounds}; "
              f"`python benchmarks/cpu_convs.py{' ' + ' '.join(argv) if argv else ''}`)")
    table = markdown(rows, header)
    write_rows_and_table(args.out, args.name, rows, table, results_md=args.results_md)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
