"""Reports of a run: markdown tables, the issue's targets checked on the records, the bar chart,
the JSON lines and markdown written case by case, and the suite's section of RESULTS.md.

Example::

    print(section_body(records, env, "cpu", "cpu"))
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxtune.bench.members import member_targets
from jaxtune.runlog import pyplot, save_figure


def _fmt(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def mib(x: int | None) -> str:
    """Bytes as MiB with one decimal for tables (``n/a`` for None); ``mib(3 * 2**20) == "3.0"``."""
    return "n/a" if x is None else f"{x / 2 ** 20:.1f}"


def _compile_cell(r: dict) -> str:
    concurrency = r["compile_concurrency"]
    return _fmt(r["compile_s"], ".1f") + (f" (×{concurrency})" if concurrency > 1 else "")


def _recompiled(r: dict) -> str:
    return f", {r['recompilations']} recompiled" if r["recompilations"] else ""


def record_line(r: dict) -> str:
    """One log line of a case record: mode, throughput, step time, compile time and compilations."""
    return (f"  {r['framework']:8s} {r['variant']:8s} {r['mode']:17s} {r['examples_per_s']:9.1f} ex/s "
            f"{r['step_time_s'] * 1e3:8.1f} ms  compile {_compile_cell(r)} s  "
            f"compiles {r['compilations']} (+{r['extra_compilations']}{_recompiled(r)})")


def _attention_note(record: dict) -> str:
    return " (cuDNN attention)" if record.get("attention_kernel") == "cudnn" else ""


def markdown_table(records: Sequence[dict]) -> str:
    """Markdown table of case records (one row each).

    Example::

        print(markdown_table([r for r in records if r["kind"] == "case"]))
    """
    head = ("| case | framework | mode | examples/s | step ms (median) | best round ms | TFLOP/s | MFU "
            "| GFLOP/step (source) | compile s (×concurrent) | peak mem MiB | opt-state MiB | compiles (extra) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        gflop = "n/a" if r["flops_per_step"] is None else f"{r['flops_per_step'] / 1e9:.1f} ({r['flops_source']})"
        lines.append(
            f"| {r['case']} | {r['framework']} {r['variant']}{_attention_note(r)} | {r['mode']} | {r['examples_per_s']:.1f} "
            f"| {r['step_time_s'] * 1e3:.1f} | {r['step_time_min_s'] * 1e3:.1f} | {_fmt(r['tflops_per_s'], '.3f')} | {_fmt(r['mfu'], '.1%')} | {gflop} "
            f"| {_compile_cell(r)} | {mib(r['peak_memory_bytes'])} | {mib(r['optimizer_state_bytes'])} "
            f"| {r['compilations']} ({r['extra_compilations']}{_recompiled(r)}) |")
    return "\n".join(lines)


def find_record(records: Sequence[dict], case: str, framework: str = "jaxtune", mode: str = "full",
                variant: str | None = None) -> dict | None:
    """The first record of ``case`` with that framework, mode (and variant), or None.

    Example::

        >>> find_record([{"case": "c", "framework": "jaxtune", "mode": "full", "variant": "jit"}], "c")["variant"]
        'jit'
    """
    for r in records:
        if (r["case"] == case and r["framework"] == framework and r["mode"] == mode
                and (variant is None or r["variant"] == variant)):
            return r
    return None


CPU_EAGER_TARGET = 1.25   # issue #21: clearly ahead of PyTorch eager on 2 CPU threads


def round_ratio_spread(full: dict, peer: dict) -> str | None:
    """min-max over rounds of ``peer / jaxtune`` step time, pairing the i-th rounds (the rounds
    interleave the contestants, so the i-th rounds met the same load); None without round times.

    Example::

        >>> round_ratio_spread({"round_step_times_s": [1.0, 0.8]}, {"round_step_times_s": [1.1, 1.0]})
        '1.100-1.250 over 2 rounds'
    """
    ours, theirs = full.get("round_step_times_s"), peer.get("round_step_times_s")
    if not ours or not theirs or len(ours) != len(theirs):
        return None
    ratios = [b / a for a, b in zip(ours, theirs)]
    return f"{min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} rounds"


def check_targets(records: Sequence[dict], suite: str) -> list[dict]:
    """The issue's targets evaluated on a run's records: ``{"target", "case", "value", "threshold", "ok"}``.

    ``value`` is a ratio (>= threshold passes) except for overheads, memory fractions, compile
    seconds and extra compilations (<= threshold passes). Ratios use median step times; the cpu
    suite also compares the fastest rounds. Targets whose records are missing are left out.

    Example::

        for t in check_targets(records, "cpu"):
            print(t["target"], t["value"], "ok" if t["ok"] else "MISSED")
    """
    out = []

    def add(target, case, value, threshold, higher_is_better=True):
        if value is None:
            return
        ok = value >= threshold if higher_is_better else value <= threshold
        out.append({"target": target, "case": case, "value": value, "threshold": threshold, "ok": bool(ok)})

    cases = sorted({r["case"] for r in records})
    for case in cases:
        full = find_record(records, case)
        frozen = find_record(records, case, mode="frozen_backbone")
        llrd = find_record(records, case, mode="llrd_masks")
        runtime = find_record(records, case, mode="runtime_unfreeze")
        if full and frozen:
            add("frozen-backbone speed-up over full (x)", case, full["step_time_s"] / frozen["step_time_s"], 2.5)
            if suite == "gpu" and full["peak_memory_bytes"] and frozen["peak_memory_bytes"]:
                add("frozen-backbone peak memory / full", case,
                    frozen["peak_memory_bytes"] / full["peak_memory_bytes"], 0.40, False)
        if full and llrd:
            add("LLRD + masks overhead over AdamW", case, llrd["step_time_s"] / full["step_time_s"] - 1.0,
                0.02 if suite == "gpu" else 0.03, False)
        if runtime:
            add("runtime unfreezing extra compilations", case, runtime["extra_compilations"], 0, False)
        eager = find_record(records, case, "pytorch", variant="eager")
        compiled = find_record(records, case, "pytorch", variant="compile")
        if full and suite == "cpu" and eager:
            add("jaxtune / PyTorch eager (x)", case, full["examples_per_s"] / eager["examples_per_s"], CPU_EAGER_TARGET)
            # On a shared machine the fastest round is the closest to an idle one.
            add("jaxtune / PyTorch eager, best rounds (x)", case,
                eager["step_time_min_s"] / full["step_time_min_s"], CPU_EAGER_TARGET)
            spread = round_ratio_spread(full, eager)
            if spread:
                out[-2]["spread"] = spread
        member_targets(records, case, find_record, add)
        if full and suite == "gpu":
            if case == "bert-base-s128-bs128" and compiled:
                add("jaxtune / torch.compile (x)", case, full["examples_per_s"] / compiled["examples_per_s"], 1.25)
            if case.startswith("resnet50") and eager:
                add("jaxtune / PyTorch eager (x)", case, full["examples_per_s"] / eager["examples_per_s"], 1.2)
            if case.startswith("t5-small") and eager:
                add("jaxtune / PyTorch eager (x)", case, full["examples_per_s"] / eager["examples_per_s"], 2.0)
            if case.startswith("bert-base"):
                add("BERT-base step compile (s)", case, full["compile_s"], 20.0, False)
    return out


def targets_table(targets: Sequence[dict]) -> str:
    lines = ["| target | case | value | threshold | met |", "|---|---|---|---|---|"]
    for t in targets:
        spread = f" (per round {t['spread']})" if t.get("spread") else ""
        lines.append(f"| {t['target']} | {t['case']} | {t['value']:.3f}{spread} | {t['threshold']} | "
                     f"{'yes' if t['ok'] else '**no**'} |")
    return "\n".join(lines)


def random_bits_source(env: dict, on_gpu: bool) -> str | None:
    """Where a GPU run drew its random bits from (``env["threefry_gpu_kernel"]``): ``"the threefry
    kernel"`` or ``"XLA ops"``; None off the GPU or where ``env`` did not record it.

    Example::

        >>> random_bits_source({"threefry_gpu_kernel": False}, on_gpu=True)
        'XLA ops'
        >>> random_bits_source({"threefry_gpu_kernel": True}, on_gpu=False) is None
        True
    """
    if not on_gpu or "threefry_gpu_kernel" not in env:
        return None
    return "the threefry kernel" if env["threefry_gpu_kernel"] else "XLA ops"


def environment_markdown(env: dict) -> str:
    bits = random_bits_source(env, on_gpu=env.get("backend") == "gpu")
    v = env["versions"]
    return (f"- date (UTC): {env['date']}\n- device: {env['device']} ({env['backend']}, {env['device_count']} device(s), "
            f"{env['cpu_count']} CPU cores, {env['threads']} used, load average at start {', '.join(f'{x:.2f}' for x in env['load_avg'])})\n"
            f"- measured matmul peak: {env['matmul_peak_tflops']:.3f} TFLOP/s ({env['matmul_peak_dtype']})\n"
            f"- versions: " + ", ".join(f"{k} {v[k]}" for k in v) + "\n"
            f"- XLA_FLAGS: `{env['xla_flags'] or '(none)'}`\n"
            + (f"- random bits on GPU: {bits}\n" if bits else "")
            + (f"- XLA flags dropped (this jaxlib rejects them): `{' '.join(env['xla_flags_dropped'])}`\n"
               if env.get("xla_flags_dropped") else "")
            + (f"- attention (BERT/T5): `{env['attention']}`"
               + (f"; {env['attention_note']}" if env.get("attention_note") else "") + "\n"
               if "attention" in env else "")
            + f"- PyTorch peers: {env['peer_device'] or 'skipped: ' + env['peers_skipped_reason']}\n")


def plot(records: Sequence[dict], path: Path, title: str) -> None:
    """Bar chart of examples/s, one panel per case (each on its own scale)."""
    plt = pyplot()
    cases = list(dict.fromkeys(r["case"] for r in records))
    fig, axes = plt.subplots(len(cases), 1, figsize=(7, 1.0 + 1.6 * len(cases)), squeeze=False)
    for ax, case in zip(axes[:, 0], cases):
        rows = [r for r in records if r["case"] == case]
        labels = [f"{r['framework']} {r['variant']} {r['mode']}" if r["framework"] != "jaxtune" else r["mode"]
                  for r in rows]
        colors = ["tab:blue" if r["framework"] == "jaxtune" else "tab:orange" for r in rows]
        ax.barh(labels, [r["examples_per_s"] for r in rows], color=colors)
        ax.invert_yaxis()
        ax.set_title(case, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("examples / s (blue: jaxtune, orange: PyTorch)")
    save_figure(fig, path, title=title, dpi=80, title_size=10)


def update_results_md(path: Path, suite: str, body: str) -> None:
    """Replaces (or appends) the ``suite`` section of RESULTS.md, between marker comments."""
    begin, end = f"<!-- results:{suite}:begin -->", f"<!-- results:{suite}:end -->"
    text = path.read_text() if path.is_file() else "# Step-throughput results\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def section_body(records: Sequence[dict], env: dict, suite: str, name: str, note: str = "") -> str:
    """Markdown of a run: environment, ``note`` (e.g. cases not run), table and targets.

    Example::

        Path("gpu.md").write_text(section_body(records, env, "gpu", "gpu"))
    """
    targets = check_targets(records, suite)
    smoke = "\nTiny configs: the timings check the harness and mean nothing.\n" if suite == "smoke" else ""
    note = f"\n{note.strip()}\n" if note else ""
    loads = [r["load_average_after"][0] for r in records if r.get("load_average_after")]
    if loads:
        note += f"- load average (1 min) after each contestant's rounds: {min(loads):.2f}-{max(loads):.2f}\n"
    return (f"## Suite `{suite}` (`{name}`)\n\n{environment_markdown(env)}{smoke}{note}\n{markdown_table(records)}\n\n"
            f"### Targets\n\n{targets_table(targets) if targets else '(none applicable)'}\n")


def _write_jsonl(path: Path, rows: Sequence[dict], mode: str = "w") -> None:
    with path.open(mode) as f:
        for r in rows:
            f.write(json.dumps(r, default=float) + "\n")


def write_rows_and_table(out: Path, stem: str, rows: Sequence[dict], table: str,
                         results_md: str | Path | None = None) -> dict[str, Path]:
    """A benchmark script's outputs: ``<out>/<stem>.jsonl`` (one row per line) and ``<out>/<stem>.md``
    (``table``), and the ``stem`` section of ``results_md`` (unless it is None or ``"none"``,
    :func:`update_results_md`); returns the two paths.

    Example::

        write_rows_and_table(Path("benchmarks/results"), "lora-cost-cpu", rows, markdown(rows, header))
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = {"jsonl": out / f"{stem}.jsonl", "markdown": out / f"{stem}.md"}
    _write_jsonl(paths["jsonl"], rows)
    paths["markdown"].write_text(table)
    if results_md is not None and str(results_md) != "none":
        update_results_md(Path(results_md), stem, table)
    return paths


def _write_partial_markdown(records: Sequence[dict], env: dict, out: Path, suite: str, name: str,
                            pending: Sequence[str]) -> None:
    note = f"**Partial run**: not run yet: {', '.join(pending)}." if pending else ""
    (out / f"{name}.md").write_text(section_body(records, env, suite, name, note))


def start_outputs(env: dict, out: Path, suite: str, name: str, pending: Sequence[str]) -> Path:
    """Starts the outputs of a run: ``<name>.jsonl`` with the environment record (each case is
    appended by :func:`append_case_outputs`) and ``<name>.md`` listing the ``pending`` cases.
    Returns the JSON lines' path.

    Example::

        jsonl = start_outputs(env, Path("/tmp/bench"), "gpu", "gpu", [c.name for c in cases])
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.jsonl"
    _write_jsonl(path, [env])
    _write_partial_markdown([], env, out, suite, name, pending)
    return path


def append_case_outputs(case_records: Sequence[dict], records: Sequence[dict], env: dict, out: Path, suite: str,
                        name: str, pending: Sequence[str]) -> None:
    """Appends a finished case's records to ``<name>.jsonl`` and rewrites ``<name>.md`` with every
    record so far, listing the ``pending`` cases: a run killed later still leaves these on disk.

    Example::

        append_case_outputs(case_records, records, env, out, "gpu", "gpu", pending=["resnet50-i224-bs256"])
    """
    _write_jsonl(out / f"{name}.jsonl", case_records, mode="a")
    _write_partial_markdown(records, env, out, suite, name, pending)


def write_outputs(records: list[dict], env: dict, out: Path, suite: str, results_md: Path | None,
                  make_plot: bool = True, name: str | None = None, note: str = "") -> dict[str, Path]:
    """JSON lines, markdown, PNG (and the RESULTS.md section) of a run, named ``name`` (default: the
    suite); ``note``: markdown added below the environment (e.g. cases skipped). Returns the paths
    written; no PNG without records."""
    name = name or suite
    out.mkdir(parents=True, exist_ok=True)
    paths = {"jsonl": out / f"{name}.jsonl", "markdown": out / f"{name}.md"}
    _write_jsonl(paths["jsonl"], [env, *records])
    body = section_body(records, env, suite, name, note)
    paths["markdown"].write_text(body)
    make_plot = make_plot and bool(records)
    if make_plot:
        paths["png"] = out / f"{name}.png"
        plot(records, paths["png"], f"jaxtune step throughput: {name} on {env['device']}")
    if results_md is not None:
        update_results_md(results_md, name, body + (f"\n![{name}](results/{name}.png)\n" if make_plot else ""))
        paths["results_md"] = results_md
    return paths


