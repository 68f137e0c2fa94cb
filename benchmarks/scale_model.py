"""Step time vs number of hosts for FSDP fine-tuning of BERT-base and T5-large: modelled, not measured.

What goes in (all from XLA, on this machine's CPU, no accelerator):

* compute: the FLOPs per device of the FSDP train step (``train.parallel: fsdp``, the runner's step)
  compiled for 8 fake CPU devices, from XLA's cost analysis;
* communication: FSDP's own traffic per device in a ring -- an all-gather and a reduce-scatter of
  the sharded parameters ((n-1)/n x their bytes each), an all-reduce of the replicated ones
  (2 (n-1)/n x their bytes) -- checked against the bytes of every all-gather, reduce-scatter,
  all-reduce and all-to-all in the compiled HLO (all-gather (n-1)/n x result, reduce-scatter
  (n-1) x result, all-reduce 2 (n-1)/n x size, all-to-all (n-1)/n x size), reported beside it;
* depth: each model is compiled with 1 and 2 layers per stack (a full-depth CPU compile of T5-large
  takes too long); per-layer figures are the difference, the full model is f(1) + (L - 1) x per-layer.

The 8-device collective bytes are checked against what FSDP should move (an all-gather of the
sharded parameters, a reduce-scatter of their gradients, an all-reduce of the replicated ones).

The model (weak scaling: the batch per device is fixed, ``hosts x devices_per_host`` devices):
``compute = flops_per_device / (peak x mfu)``; ``comm = ring_bytes(n) / bandwidth``, with the
intra-host bandwidth on one host and the per-device inter-host bandwidth on several;
``step = compute + comm`` (no overlap) .. ``max(compute, comm)`` (full overlap).

    python benchmarks/scale_model.py                   # writes results/scale_model.{json,md}, RESULTS.md section
    python benchmarks/scale_model.py --inter-gbs 25    # another interconnect
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
from pathlib import Path

REF_DEVICES = 8
if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={REF_DEVICES}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's jaxtune
DTYPE_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s16": 2,
               "u16": 2, "s8": 1, "u8": 1, "pred": 1}
COLLECTIVE = re.compile(r"=\s*(?P<type>.+?)\s+(?P<op>all-gather|reduce-scatter|all-reduce|all-to-all)(?:-start)?\(")
SHAPE = re.compile(r"\b(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")


def _shape_bytes(text: str) -> int:
    total = 0
    for m in SHAPE.finditer(text):
        if m["dtype"] in DTYPE_BYTES:
            dims = [int(d) for d in m["dims"].split(",") if d]
            total += DTYPE_BYTES[m["dtype"]] * int(np.prod(dims, dtype=np.int64))
    return total


def collective_bytes(hlo: str, n: int) -> dict[str, float]:
    """Bytes one device sends per step in a ring, by collective kind, from compiled HLO text.

    Example::

        >>> collective_bytes("%a = f32[8,4]{1,0} all-gather(f32[1,4]{1,0} %p), dimensions={0}", 8)
        {'all-gather': 112.0, 'reduce-scatter': 0.0, 'all-reduce': 0.0, 'all-to-all': 0.0}
    """
    out = {"all-gather": 0.0, "reduce-scatter": 0.0, "all-reduce": 0.0, "all-to-all": 0.0}
    factor = {"all-gather": (n - 1) / n, "reduce-scatter": n - 1, "all-reduce": 2 * (n - 1) / n,
              "all-to-all": (n - 1) / n}
    for line in hlo.splitlines():
        m = COLLECTIVE.search(line)
        if m and "-done" not in line:
            out[m["op"]] += factor[m["op"]] * _shape_bytes(m["type"])
    return out


def _case(family: str, layers: int, devices: int):
    """(step, abstract state, abstract batch, params) of a model at ``layers`` layers per stack."""
    import optax

    import jaxtune as jt
    from jaxtune.bench import Case, make_batch
    from jaxtune.models import bert, t5
    from jaxtune.sharding import batch_sharding, tree_shardings
    from jaxtune.tasks import get_task

    if family == "bert-base":
        config = bert.BertConfig(num_hidden_layers=layers)
        case = Case("bert-base", "bert", config, 32 * devices, {"seq": 128}, 2)
        task, module = get_task("sequence_classification"), bert.build(config, "sequence_classification", 2)
    else:
        config = t5.T5Config(d_model=1024, d_kv=64, d_ff=4096, num_heads=16, num_layers=layers,
                             num_decoder_layers=layers)
        case = Case("t5-large", "t5", config, 8 * devices, {"src": 512, "tgt": 128})
        task, module = get_task("text_to_text"), t5.build(config, "text_to_text")
    batch = make_batch(case, config.vocab_size)
    family_module = bert if family == "bert-base" else t5
    init_args = family_module.example_inputs(config, "text_to_text" if family == "t5-large" else None)
    params = jax.eval_shape(lambda: module.init(jax.random.key(0), *init_args))["params"]
    mesh = jt.make_mesh(devices)
    tx = optax.adamw(1e-5)
    state = jax.eval_shape(lambda p: jt.TrainState.create(p, tx), params)
    shardings = tree_shardings(state, mesh, fsdp=True)
    abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding(mesh)) for k, v in batch.items()}
    step = jt.make_train_step(task.loss_fn(module), tx, mesh=mesh, fsdp=True, compute_dtype="float32")
    return step, abstract_state, abstract_batch, params, shardings.params


def measure(family: str, layers: int, devices: int = REF_DEVICES) -> dict:
    """FLOPs per device and ring bytes per device of the compiled FSDP step, and FSDP's expected bytes."""
    step, state, batch, params, param_shardings = _case(family, layers, devices)
    compiled = step.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    counted = collective_bytes(compiled.as_text(), devices)
    sharded = replicated = 0
    for leaf, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(param_shardings)):
        size = int(np.prod(leaf.shape)) * leaf.dtype.itemsize
        if any(axis is not None for axis in sharding.spec):
            sharded += size
        else:
            replicated += size
    n = devices
    expected = {"all-gather": (n - 1) / n * sharded, "reduce-scatter": (n - 1) / n * sharded,
                "all-reduce": 2 * (n - 1) / n * replicated}
    return {"family": family, "layers": layers, "devices": devices, "flops_per_device": float(cost["flops"]),
            "ring_bytes": counted, "expected_bytes": expected, "param_bytes": sharded + replicated}


def full_depth(one: dict, two: dict, layers: int) -> dict:
    """Linear extrapolation in depth: f(L) = f(1) + (L - 1) (f(2) - f(1))."""
    grow = lambda a, b: a + (layers - 1) * (b - a)
    return {"flops_per_device": grow(one["flops_per_device"], two["flops_per_device"]),
            **{key: {k: grow(one[key][k], two[key][k]) for k in one[key]} for key in ("ring_bytes", "expected_bytes")},
            "param_bytes": grow(one["param_bytes"], two["param_bytes"])}


def step_times(model: dict, hosts: int, args: argparse.Namespace) -> dict:
    """Modelled seconds of one step on ``hosts`` hosts: compute, communication, and the two bounds."""
    n = hosts * args.devices_per_host
    bandwidth = (args.intra_gbs if hosts == 1 else args.inter_gbs) * 1e9
    at_n = lambda ring_8: ring_8 * ((n - 1) / n) / ((REF_DEVICES - 1) / REF_DEVICES)  # ring bytes scale as (n-1)/n
    compute = model["flops_per_device"] / (args.peak_tflops * 1e12 * args.mfu)
    comm = at_n(sum(model["expected_bytes"].values())) / bandwidth
    comm_hlo = at_n(sum(model["ring_bytes"].values())) / bandwidth
    return {"hosts": hosts, "devices": n, "compute_s": compute, "comm_s": comm, "comm_cpu_hlo_s": comm_hlo,
            "no_overlap_s": compute + comm, "full_overlap_s": max(compute, comm)}


def _markdown(check: list[dict], table: list[dict], args: argparse.Namespace) -> str:
    lines = [f"### Step time vs hosts, FSDP (modelled, not measured)", "",
             f"Written by `python benchmarks/scale_model.py` on {datetime.date.today()} ({platform.node()}, "
             f"jax {jax.__version__}). FLOPs from XLA's cost analysis and collective bytes from the compiled HLO of "
             f"the FSDP train step on {REF_DEVICES} fake CPU devices (float32; depth extrapolated from 1- and "
             f"2-layer compiles); hardware assumed: {args.devices_per_host} devices per host, "
             f"{args.peak_tflops:g} TFLOP/s peak at {args.mfu:g} MFU, {args.intra_gbs:g} GB/s per device within "
             f"a host, {args.inter_gbs:g} GB/s per device between hosts. Weak scaling: per-device batch fixed "
             "(BERT-base 32 x 128 tokens, T5-large 8 x 512->128). No measurement on several hosts backs these "
             "numbers. The step-time columns use FSDP's own traffic (all-gather and reduce-scatter of the sharded "
             "parameters, all-reduce of the replicated ones); `comm (CPU HLO)` uses the bytes the CPU compile "
             "actually moves. The step gathers each sharded parameter once (`jt.fsdp_gather`). XLA:CPU has no "
             "reduce-scatter (GPU compiles turn an all-reduce followed by a slice into one, XLA:CPU does not): the "
             "CPU compile all-reduces the gradients of the sharded parameters and keeps each device's slice, so "
             "its all-reduce column stands where a reduce-scatter would be. The word embeddings' gradient is the "
             "exception: each device computes its own slice of it from the batch's activations, sent to it by an "
             "all-to-all (BERT, split along the hidden axis) or an all-gather (T5, split along the vocabulary: the "
             "all-gather bytes above the parameters').", "",
             "Check on 8 devices (1 layer): HLO ring bytes per device vs FSDP's expectation "
             "(all-gather + reduce-scatter of the sharded parameters, all-reduce of the replicated ones):", "",
             "| model | HLO all-gather MB | expected | HLO reduce-scatter MB | expected | HLO all-reduce MB | expected "
             "| HLO all-to-all MB |",
             "|---|---|---|---|---|---|---|---|"]
    for c in check:
        mb = lambda d, k: f"{d[k] / 1e6:.1f}"
        lines.append(f"| {c['family']} | {mb(c['ring_bytes'], 'all-gather')} | {mb(c['expected_bytes'], 'all-gather')} "
                     f"| {mb(c['ring_bytes'], 'reduce-scatter')} | {mb(c['expected_bytes'], 'reduce-scatter')} "
                     f"| {mb(c['ring_bytes'], 'all-reduce')} | {mb(c['expected_bytes'], 'all-reduce')} "
                     f"| {mb(c['ring_bytes'], 'all-to-all')} |")
    lines += ["", "| model | hosts | devices | compute ms | comm ms | step ms (full overlap .. none) | comm (CPU HLO) ms |",
              "|---|---|---|---|---|---|---|"]
    for row in table:
        lines.append(f"| {row['family']} | {row['hosts']} | {row['devices']} | {row['compute_s'] * 1e3:.1f} | "
                     f"{row['comm_s'] * 1e3:.1f} | {row['full_overlap_s'] * 1e3:.1f} .. {row['no_overlap_s'] * 1e3:.1f} "
                     f"| {row['comm_cpu_hlo_s'] * 1e3:.1f} |")
    return "\n".join(lines) + "\n"



def _shown(path: Path) -> str:
    """``path`` as recorded in the results: relative to the repository when inside it (no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(path)

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="1,2,4,8,16,32", help="comma-separated host counts")
    parser.add_argument("--devices-per-host", type=int, default=8)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="per device (H100 SXM bf16 dense)")
    parser.add_argument("--mfu", type=float, default=0.4, help="fraction of peak the step reaches")
    parser.add_argument("--intra-gbs", type=float, default=450.0, help="GB/s per device within a host (NVLink)")
    parser.add_argument("--inter-gbs", type=float, default=50.0, help="GB/s per device between hosts (400 Gb/s NIC)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--results-md", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    depth = {"bert-base": 12, "t5-large": 24}
    check, table, models = [], [], {}
    for family, layers in depth.items():
        one, two = measure(family, 1), measure(family, 2)
        print(json.dumps(one), flush=True)
        check.append(one)
        models[family] = full_depth(one, two, layers)
        for hosts in (int(h) for h in args.hosts.split(",")):
            table.append({"family": family, **step_times(models[family], hosts, args)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale_model.json").write_text(json.dumps({"check": check, "models": models, "table": table,
                                                           "assumptions": vars(args) | {"out": _shown(args.out),
                                                           "results_md": _shown(args.results_md)}}, indent=2))
    body = _markdown(check, table, args)
    (args.out / "scale_model.md").write_text(body)
    from jaxtune.bench import update_results_md
    update_results_md(args.results_md, "scale-model", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
